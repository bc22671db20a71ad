"""The VQ autoencoder every tokenizer backend runs on, in diffusers' ``VQModel`` layout.

Written here, not imported: ``from diffusers import VQModel`` costs a process ≈ 2.5 s on a
CPU (diffusers' autoencoders package imports every model it has, scipy.stats and
``torch._dynamo``), and every training, sampling and test process loads a tokenizer. The
layout is diffusers 0.42.1's, so the same files serve both:

- a folder holds ``config.json`` (diffusers' ``VQModel`` keys) and
  ``diffusion_pytorch_model.safetensors``; :func:`load_pretrained` reads such a folder
  (weights from safetensors only, never a pickle) and :meth:`VQModel.save_pretrained` writes
  one that ``diffusers.VQModel.from_pretrained`` loads;
- state-dict keys are diffusers' (``encoder.down_blocks.0.resnets.0.conv1.weight``,
  ``…attentions.0.to_q.weight``, ``quantize.embedding.weight``, …); modules are created in
  diffusers' order, so a seeded model initialises to the same numbers;
- the forward pass is the same sequence of operations (diffusers' ``ResnetBlock2D``,
  ``Downsample2D`` with (0, 1, 0, 1) padding, nearest ``Upsample2D``, single-head
  ``Attention`` with ``AttnProcessor2_0``): ``tests/shared/test_tokenizers.py`` checks encode and
  decode against diffusers bit for bit, and against taming-transformers' forward.

Supported: ``norm_type="group"`` (the SD vq-f8, LlamaGen and Fashion tokenizers), the four
block types below and SiLU; anything else (MoVQ's spatial norm, a key this file does not
know) is refused by name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layout import CheckpointLayoutError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
DIFFUSERS_LAYOUT = "0.42.1"  # the diffusers version whose VQModel this reproduces
DOWN_TYPES = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_TYPES = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")
# attention keys of diffusers' deprecated AttnBlock layout → today's (diffusers renames them
# the same way when it loads an old folder)
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class VQConfig:
    """diffusers ``VQModel``'s constructor arguments, with its defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> VQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{source}: unknown VQModel config key(s) {unknown}")
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            setattr(cfg, name, tuple(getattr(cfg, name)))
        problems = []
        if cfg.norm_type != "group":
            problems.append(
                f"norm_type={cfg.norm_type!r} (only 'group'; MoVQ's spatial norm is not supported)"
            )
        if cfg.act_fn not in ("silu", "swish"):
            problems.append(f"act_fn={cfg.act_fn!r} (only 'silu')")
        n = len(cfg.block_out_channels)
        if len(cfg.down_block_types) != n or len(cfg.up_block_types) != n:
            problems.append(
                f"{n} block_out_channels but {len(cfg.down_block_types)} down and "
                f"{len(cfg.up_block_types)} up block types"
            )
        bad = [t for t in cfg.down_block_types if t not in DOWN_TYPES]
        bad += [t for t in cfg.up_block_types if t not in UP_TYPES]
        if bad:
            problems.append(f"block types {bad} (known: {DOWN_TYPES + UP_TYPES})")
        if problems:
            raise ValueError(f"{source}: unsupported VQModel config: " + "; ".join(problems))
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            d[name] = list(d[name])
        return d


class ResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D`` without a time embedding: GN → SiLU → conv, twice, plus a
    1×1 shortcut when the width changes (output scale factor 1, no dropout)."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1, stride=1, padding=0) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AttentionBlock(nn.Module):
    """diffusers ``Attention`` as its VAE blocks build it: one head over all channels, group
    norm in front, a residual connection, SDPA (``AttnProcessor2_0``)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = x.view(b, c, h * w).transpose(1, 2)
        s = self.group_norm(s.transpose(1, 2)).transpose(1, 2)
        q, k, v = (
            proj(s).view(b, -1, 1, c).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v)
        )
        s = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        s = self.to_out[0](s.to(q.dtype))
        return s.transpose(-1, -2).reshape(b, c, h, w) + x


class Downsample(nn.Module):
    """Pad (0, 1, 0, 1), then a 3×3 stride-2 conv (diffusers' ``Downsample2D``, padding 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 convolution (diffusers' ``Upsample2D``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """A down (encoder) or up (decoder) level: resnets, each followed by attention when the
    level has it, then the resampler (``downsamplers.0`` / ``upsamplers.0``)."""

    def __init__(
        self, cin: int, cout: int, layers: int, attention: bool, groups: int, resample: str | None
    ):
        super().__init__()
        resnets, attentions = [], []
        for j in range(layers):  # created in diffusers' order, registered in its order
            resnets.append(ResnetBlock(cin if j == 0 else cout, cout, groups))
            if attention:
                attentions.append(AttentionBlock(cout, groups))
        if attention:
            self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attentions, strict=True):
            x = resnet(x)
            if attn is not None:
                x = attn(x)
        for resample in (getattr(self, "downsamplers", None), getattr(self, "upsamplers", None)):
            if resample is not None:
                x = resample[0](x)
        return x


class MidBlock(nn.Module):
    """resnet → attention → resnet (diffusers' ``UNetMidBlock2D``, one layer)."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        first = ResnetBlock(channels, channels, groups)
        attn = AttentionBlock(channels, groups) if attention else None
        second = ResnetBlock(channels, channels, groups)
        if attn is not None:
            self.attentions = nn.ModuleList([attn])
        self.resnets = nn.ModuleList([first, second])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if hasattr(self, "attentions"):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        cout = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            cin, cout = cout, ch[i]
            last = i == len(ch) - 1
            self.down_blocks.append(
                Block(
                    cin,
                    cout,
                    cfg.layers_per_block,
                    kind == DOWN_TYPES[1],
                    g,
                    None if last else "down",
                )
            )
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before the mid block, filled after it
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        rev = list(reversed(ch))
        cout = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            cin, cout = cout, rev[i]
            last = i == len(ch) - 1
            self.up_blocks.append(
                Block(
                    cin,
                    cout,
                    cfg.layers_per_block + 1,
                    kind == UP_TYPES[1],
                    g,
                    None if last else "up",
                )
            )
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VectorQuantizer(nn.Module):
    """Holds the codebook (``quantize.embedding``); nearest-code search is ``shared.codebook``."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_codes, dim)
        self.embedding.weight.data.uniform_(-1.0 / num_codes, 1.0 / num_codes)


class VQModel(nn.Module):
    """encoder → quant_conv (``encode``: the latents before quantisation);
    post_quant_conv → decoder (``decode``: latents, already quantised, to images in [-1, 1])."""

    def __init__(self, config: VQConfig | dict | None = None, **kwargs):
        super().__init__()
        if isinstance(config, dict):
            config = VQConfig.from_dict({**config, **kwargs})
        elif config is None:
            config = VQConfig.from_dict(kwargs)
        self.config = config
        dim = config.vq_embed_dim or config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, dim, 1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, dim)
        self.post_quant_conv = nn.Conv2d(dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def save_pretrained(self, folder: str) -> None:
        """config.json + diffusion_pytorch_model.safetensors, as diffusers writes them."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        config = {
            "_class_name": "VQModel",
            "_diffusers_version": DIFFUSERS_LAYOUT,
            **self.config.to_dict(),
        }
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})


def _renamed(key: str) -> str:
    parts = key.split(".")
    if len(parts) >= 2 and ".attentions." in key and parts[-2] in _OLD_ATTENTION:
        parts[-2] = _OLD_ATTENTION[parts[-2]]
    return ".".join(parts)


def load_into(model: VQModel, state: dict, source: str) -> VQModel:
    """Load a state dict strictly; missing or unexpected keys are named."""

    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointLayoutError(
            f"{source}: the weights do not fit the architecture; missing "
            f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}"
        )
    return model.eval()


def load_pretrained(folder: str) -> VQModel:
    """A diffusers-format VQModel folder: config.json + diffusion_pytorch_model.safetensors."""
    from safetensors.torch import load_file

    from ..safe_load import FileLoadError

    config_path, weights = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME} (not a diffusers VQModel folder)")
    if not os.path.isfile(weights):
        pickles = [n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".ckpt"))]
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME}"
            + (
                f" (only {pickles}: pickled weights are never loaded; convert them to safetensors)"
                if pickles
                else ""
            )
        )
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FileLoadError(f"cannot read {config_path}: {e}") from None
    if config.get("_class_name", "VQModel") != "VQModel":
        raise ValueError(f"{config_path} describes a {config['_class_name']}, not a VQModel")
    model = VQModel(VQConfig.from_dict(config, config_path))
    try:
        state = load_file(weights)
    except Exception as e:  # truncated or not safetensors
        raise FileLoadError(f"cannot read {weights}: {e}") from None
    return load_into(model, {_renamed(k): v for k, v in state.items()}, weights)
