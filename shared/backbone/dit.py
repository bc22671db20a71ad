"""Diffusion Transformer with adaLN-Zero (Peebles & Xie 2023), for latents or token ids.

One backbone serves every method; only the input adapter and the head width differ:

- ``input_kind="latent"``: x float (B, d, H, W) → conv patch embed (p×p, d → D);
- ``input_kind="tokens"``: x long (B, H, W), ids in [0, vocab) → embedding table (vocab → e)
  then the same p×p patch embed (e → D);
- head: ``Linear(D, p²·out_channels)`` per token, zero-initialised, unpatchified to
  (B, out_channels, H, W).

Time ``t ∈ [0, 1]`` (0 = noise, 1 = data) is embedded in float32 as sinusoids of
``time_scale·t`` (×1000 by default, so the frequencies span the DiT range). Labels: an
embedding table of ``num_classes + 1`` rows, the last being the null class; a label < 0
(``NULL_LABEL``) or ``y=None`` selects it. Class dropout (each training label replaced by it
with probability ``class_dropout``, so that the unconditional branch CFG uses is trained) is
``drop_labels(y, generator)``, called by the training step with the run's own generator: the
forward pass itself draws no random numbers, so training randomness never depends on the
global RNG or on what else a process built first.

Attention, MLP and patch embedding are timm's modules in timm's layout, written out in
``layers.py`` (the same numbers, without timm's import cost). ``flops(batch)`` is the analytic
forward count (2 FLOPs per multiply-add, matmuls and convolutions only — the same terms
``torch.utils.flop_counter`` counts).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from shared.choices import POS_EMBEDS

from .layers import Attention, Mlp, PatchEmbed
from .presets import SIZES

NULL_LABEL = -1


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                          Embedding layers for t and y                          #
#################################################################################


class TimestepEmbedder(nn.Module):
    """t (B,) float → (B, D): sinusoids of time_scale·t (computed in float32), then an MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, time_scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def frequencies(self, t: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        half = self.freq_dim // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * k / half)
        args = (self.time_scale * t.float())[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=t.device.type, enabled=False):
            f = self.frequencies(t)
        return self.mlp(f.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y (B,) long → (B, D); row ``num_classes`` is the null class (dropped / unconditional)."""

    def __init__(self, num_classes: int, hidden_size: int, class_dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.class_dropout = class_dropout
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        null = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if y is None:
            return self.table(null)
        if y.shape != (batch,):
            raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
        if (y >= self.num_classes).any():
            raise ValueError(f"label {int(y.max())} is out of range [0, {self.num_classes})")
        return self.table(torch.where(y < 0, null, y))

    def drop_labels(self, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Each label → NULL_LABEL with probability ``class_dropout`` (training only)."""
        if self.class_dropout <= 0:
            return y
        u = torch.rand(y.shape, device=y.device, generator=generator)
        return torch.where(u < self.class_dropout, torch.full_like(y, NULL_LABEL), y)


#################################################################################
#                                 Core DiT model                                 #
#################################################################################


class DiTBlock(nn.Module):
    """Attention + MLP, each gated and modulated by the conditioning (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        gelu = lambda: nn.GELU(approximate="tanh")  # noqa: E731
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden, act_layer=gelu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, 1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x  # (B, T, D)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The head's input: adaLN-modulated, normalised hidden states (B, T, D)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return modulate(self.norm(x), shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x, c))  # (B, T, p²·out)


class DiT(nn.Module):
    # the output is an affine map of the final hidden states (``forward(..., features=True)``)
    # through ``final_layer.linear``: methods/head.py computes categorical losses and
    # posteriors from them without the (B, out, H, W) logit map
    has_linear_head = True

    def __init__(
        self,
        input_size: int | tuple[int, int] = 8,
        patch_size: int = 1,
        input_kind: str = "latent",
        in_channels: int = 4,
        vocab_size: int | None = None,
        out_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 10,
        class_dropout: float = 0.1,
        pos_embed: str = "sincos",
        token_embed_dim: int | None = None,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"grid {h}×{w} is not divisible by patch size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {num_heads} heads")
        if input_kind not in ("latent", "tokens"):
            raise ValueError(f"input_kind must be 'latent' or 'tokens', got {input_kind!r}")
        if input_kind == "tokens" and not vocab_size:
            raise ValueError("input_kind='tokens' needs vocab_size (K, or K+1 with a mask id)")
        self.grid = (h, w)
        self.patch_size = patch_size
        self.input_kind = input_kind
        self.in_channels = in_channels
        self.vocab_size = vocab_size
        self.out_channels = out_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        if input_kind == "tokens":
            self.token_embed_dim = token_embed_dim or max(hidden_size // patch_size**2, 16)
            self.token_embedder = nn.Embedding(vocab_size, self.token_embed_dim)
            embed_in = self.token_embed_dim
        else:
            self.token_embed_dim = None
            embed_in = in_channels
        self.x_embedder = PatchEmbed((h, w), patch_size, embed_in, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)
        self.y_embedder = (
            LabelEmbedder(num_classes, hidden_size, class_dropout) if num_classes > 0 else None
        )
        self.num_tokens = (h // patch_size) * (w // patch_size)
        if pos_embed == "sincos":
            pe = sincos_2d(hidden_size, h // patch_size, w // patch_size)
            self.register_buffer("pos_embed", torch.from_numpy(pe).float()[None], persistent=False)
        elif pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, hidden_size))
            nn.init.normal_(self.pos_embed, std=0.02)
        else:
            raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {pos_embed!r}")
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight  # conv initialised like a linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.input_kind == "tokens":
            nn.init.normal_(self.token_embedder.weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts as identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p²·C) → (B, C, H, W)."""
        p, c = self.patch_size, self.out_channels
        gh, gw = self.grid[0] // p, self.grid[1] // p
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "tokens":
            if x.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"token input must be integer ids (B,H,W), got {x.dtype}")
            x = self.token_embedder(x.long()).permute(0, 3, 1, 2)  # (B, e, H, W)
        elif not x.is_floating_point():
            raise TypeError(f"latent input must be float (B,d,H,W), got {x.dtype}")
        return self.x_embedder(x) + self.pos_embed  # (B, T, D), T = H·W/p²

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        features: bool = False,
    ):
        """x: (B,d,H,W) float or (B,H,W) long; t: (B,) in [0,1]; y: (B,) long or None.

        ``features=True`` returns the final layer's input (B, T, D) instead of its output."""
        b = x.shape[0]
        if t.ndim == 0:
            t = t.expand(b)
        h = self.embed_input(x)  # (B, T, D)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, b, x.device)
        for block in self.blocks:
            h = block(h, c)  # (B, T, D)
        if features:
            return self.final_layer.features(h, c)
        h = self.final_layer(h, c)  # (B, T, p²·out)
        return self.unpatchify(h)  # (B, out, H, W)

    # -------------------------------------------------------------- compute accounting
    def flops(self, batch_size: int = 1) -> int:
        """Analytic forward FLOPs (2 per multiply-add; matmuls and convs only)."""
        D, T, p, L = self.hidden_size, self.num_tokens, self.patch_size, self.depth
        F = int(self.mlp_ratio * D)
        e = self.token_embed_dim if self.input_kind == "tokens" else self.in_channels
        per_sample = 2 * T * (e * p * p) * D  # patch embed conv
        per_sample += 2 * (self.t_embedder.freq_dim * D + D * D)  # timestep MLP
        block = 2 * T * D * 3 * D + 2 * T * D * D  # qkv and output projections
        block += 2 * 2 * T * T * D  # q·kᵀ and attn·v over all heads
        block += 2 * 2 * T * D * F  # MLP
        block += 2 * D * 6 * D  # adaLN modulation (per sample)
        per_sample += L * block
        per_sample += 2 * D * 2 * D + 2 * T * D * p * p * self.out_channels  # final layer
        return batch_size * per_sample

    def drop_labels(self, y: torch.Tensor | None, generator: torch.Generator | None = None):
        """Class dropout for a training batch, drawn from ``generator`` (see module docs)."""
        if y is None or self.y_embedder is None:
            return y
        return self.y_embedder.drop_labels(y, generator)

    def train_flops(self, batch_size: int = 1) -> int:
        """Forward + backward ≈ 3× forward (backward costs two matmuls per forward matmul)."""
        return 3 * self.flops(batch_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


#################################################################################
#                          Sine/cosine positional embedding                      #
#################################################################################


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_2d(dim: int, gh: int, gw: int) -> np.ndarray:
    """(gh·gw, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sin-cos 2D positional embedding needs dim % 4 == 0, got {dim}")
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64))
    rows, cols = rows.T, cols.T  # (gh, gw), row-major like the token order
    return np.concatenate([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], axis=1)


#################################################################################
#                                   DiT presets                                  #
#################################################################################
# (sizes and names: presets.py, which needs no torch)


def _dit(size: str, patch: int, **kw) -> DiT:
    hidden, depth, heads = SIZES[size]
    return DiT(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads, **kw)


def DiT_Nano_1(**kw):
    return _dit("Nano", 1, **kw)


def DiT_Nano_2(**kw):
    return _dit("Nano", 2, **kw)


def DiT_Micro_1(**kw):
    return _dit("Micro", 1, **kw)


def DiT_Micro_2(**kw):
    return _dit("Micro", 2, **kw)


def DiT_Mini_1(**kw):
    return _dit("Mini", 1, **kw)


def DiT_Mini_2(**kw):
    return _dit("Mini", 2, **kw)


def DiT_Ti_1(**kw):
    return _dit("Ti", 1, **kw)


def DiT_Ti_2(**kw):
    return _dit("Ti", 2, **kw)


def DiT_Ti_4(**kw):
    return _dit("Ti", 4, **kw)


def DiT_S_1(**kw):
    return _dit("S", 1, **kw)


def DiT_S_2(**kw):
    return _dit("S", 2, **kw)


def DiT_S_4(**kw):
    return _dit("S", 4, **kw)


def DiT_B_1(**kw):
    return _dit("B", 1, **kw)


def DiT_B_2(**kw):
    return _dit("B", 2, **kw)


def DiT_B_4(**kw):
    return _dit("B", 4, **kw)


def DiT_L_1(**kw):
    return _dit("L", 1, **kw)


def DiT_L_2(**kw):
    return _dit("L", 2, **kw)


def DiT_L_4(**kw):
    return _dit("L", 4, **kw)


def DiT_XL_1(**kw):
    return _dit("XL", 1, **kw)


def DiT_XL_2(**kw):
    return _dit("XL", 2, **kw)


def DiT_XL_4(**kw):
    return _dit("XL", 4, **kw)


DiT_models = {
    "DiT-Nano/1": DiT_Nano_1,
    "DiT-Nano/2": DiT_Nano_2,
    "DiT-Micro/1": DiT_Micro_1,
    "DiT-Micro/2": DiT_Micro_2,
    "DiT-Mini/1": DiT_Mini_1,
    "DiT-Mini/2": DiT_Mini_2,
    "DiT-Ti/1": DiT_Ti_1,
    "DiT-Ti/2": DiT_Ti_2,
    "DiT-Ti/4": DiT_Ti_4,
    "DiT-S/1": DiT_S_1,
    "DiT-S/2": DiT_S_2,
    "DiT-S/4": DiT_S_4,
    "DiT-B/1": DiT_B_1,
    "DiT-B/2": DiT_B_2,
    "DiT-B/4": DiT_B_4,
    "DiT-L/1": DiT_L_1,
    "DiT-L/2": DiT_L_2,
    "DiT-L/4": DiT_L_4,
    "DiT-XL/1": DiT_XL_1,
    "DiT-XL/2": DiT_XL_2,
    "DiT-XL/4": DiT_XL_4,
}


def build_dit(name: str, **kw) -> DiT:
    if name not in DiT_models:
        raise ValueError(f"unknown DiT preset {name!r}; choose one of {', '.join(DiT_models)}")
    return DiT_models[name](**kw)
