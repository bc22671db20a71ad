"""Categorical heads without the (B, K, H, W) logit map.

The DiT's head is affine: for token n (of T = H·W/p² per image), patch sub-position
s = pi·p + qi and code k, the logit is

    ℓ[n, s, k] = h_n · W[s·K + k] + b[s·K + k],      h_n = modulate(LayerNorm(x_n), shift, scale)

(``shared/backbone/dit.py``: ``FinalLayer``; channel index (pi·p+qi)·K + k, as ``unpatchify``
reads it). So everything the categorical methods need can be computed from the final hidden
states h (B, T, D) and the head's (W, b), a chunk of tokens at a time, channel-last, with at
most ``chunk`` logits alive at once:

- training: ``loss`` = mean CE(ℓ, c) + λ·mean(logsumexp_k ℓ)², a custom autograd function.
  Its forward computes the loss and, when gradients are needed, the gradients of h, W and b
  in the same pass (d loss/dℓ = (1 + 2λ·lse)·softmax(ℓ) − onehot(c), over the number of
  positions); backward only scales them by the incoming gradient. Three matmuls per chunk,
  as the full-logit path's forward and backward.
- sampling: ``posterior_mean`` = softmax(ℓ/τ)·E, attention with queries h, keys W_s, values
  E and additive bias b_s, scale 1/τ; ``draw`` draws c ~ softmax(ℓ/τ) by the inverse CDF
  of the same uniforms as the full path's ``draw_from_logits`` (so both paths draw the
  same codes from the same generator).
- classifier-free guidance acts on logits, ℓ_u + s(ℓ_c − ℓ_u); because ℓ is affine in h with
  the same (W, b) for both branches, that equals the head applied to h_u + s(h_c − h_u) (the
  bias enters with weight 1 − s + s = 1). Mixing hidden states before the head is exact.

Under autocast the matmuls run in the autocast dtype with float32 logits and softmax; the
sums of the loss are accumulated in float32 (float64 inputs stay float64: the exactness
tests compare against the full-logit path in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import noise
from .base import (
    LossOutput,
    accumulation_dtype,
    categorical,
    categorical_loss,
    guided_forward,
    inverse_cdf,
)
from .options import DEFAULT_CHUNK


def linear_head(model):
    """The module behind ``model`` (DDP ``.module``, compiled ``._orig_mod``, a timing or
    test wrapper's ``.model``) that exposes a linear categorical head, or None."""
    m = model
    for _ in range(5):
        if m is None:
            return None
        if getattr(m, "has_linear_head", False):
            return m
        m = next(
            (v for a in ("module", "_orig_mod", "model") if (v := getattr(m, a, None)) is not None),
            None,
        )
    return None


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H, W, *rest) → (B·T, p², *rest) in the head's (token, sub-position) order."""
    b, h, w = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(b, h // p, p, w // p, p, *rest).transpose(2, 3)
    return x.reshape(b * (h // p) * (w // p), p * p, *rest)


def unpatchify(x: torch.Tensor, batch: int, grid: tuple[int, int], p: int) -> torch.Tensor:
    """Inverse of ``patchify``: (B·T, p², *rest) → (B, H, W, *rest)."""
    h, w = grid
    rest = x.shape[2:]
    x = x.reshape(batch, h // p, w // p, p, p, *rest).transpose(2, 3)
    return x.reshape(batch, h, w, *rest)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev) and h.dtype in (torch.float32, torch.bfloat16):
        return torch.get_autocast_dtype(dev)
    return h.dtype


def _chunk_rows(n: int, width: int, chunk: int) -> int:
    return max(1, min(n, chunk // max(width, 1)))


class _ChunkedCategoricalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, target, weight, z_weight, chunk, compute_dtype, grads):
        # h (N, D), w (P·K, D), b (P·K,), target (N, P) long, weight (N, P) or None
        n, p = target.shape
        k = w.shape[0] // p
        acc = accumulation_dtype(compute_dtype)
        total = n * p
        ce_sum, wce_sum, z_sum = (torch.zeros((), dtype=acc, device=h.device) for _ in range(3))
        hc, wc, bc = h.to(compute_dtype), w.to(compute_dtype), b.to(acc)
        if grads:
            gh = torch.empty(h.shape, dtype=acc, device=h.device)
            gw = torch.zeros(w.shape, dtype=acc, device=h.device)
            gb = torch.zeros(b.shape, dtype=acc, device=h.device)
        rows = _chunk_rows(n, p * k, chunk)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, n, rows):
                hs = hc[s : s + rows]
                logits = (hs @ wc.t()).to(acc).add_(bc).view(-1, p, k)  # (r, P, K)
                tgt = target[s : s + rows].unsqueeze(-1)
                wt = None if weight is None else weight[s : s + rows].to(acc)  # (r, P)
                lse = torch.logsumexp(logits, dim=-1)  # (r, P)
                ce = lse - logits.gather(-1, tgt).squeeze(-1)
                ce_sum += ce.sum()
                wce_sum += ce.sum() if wt is None else (wt * ce).sum()
                z_sum += lse.square().sum()
                if not grads:
                    continue
                # d/dℓ [(w·CE + λ·lse²)/total] = ((w + 2λ·lse)·softmax − w·onehot)/total
                wt = torch.ones_like(lse) if wt is None else wt
                g = logits.sub_(lse.unsqueeze(-1)).exp_()
                g.mul_(((wt + 2 * z_weight * lse) / total).unsqueeze(-1))
                g.scatter_add_(-1, tgt, (-wt / total).unsqueeze(-1))
                g = g.view(hs.shape[0], p * k)
                gc = g.to(compute_dtype)
                gh[s : s + rows] = gc @ wc
                gw += gc.t() @ hs
                gb += g.sum(0)
        ce, zl = ce_sum / total, z_sum / total
        loss = wce_sum / total + z_weight * zl
        if grads:
            ctx.save_for_backward(gh.to(h.dtype), gw.to(w.dtype), gb.to(b.dtype))
        ctx.mark_non_differentiable(ce, zl)
        return loss, ce, zl

    @staticmethod
    def backward(ctx, g_loss, _g_ce, _g_z):
        gh, gw, gb = ctx.saved_tensors
        return gh * g_loss, gw * g_loss, gb * g_loss, None, None, None, None, None, None


def draw_rows(logits, u, temperature: float, score_temperature: float | None = None):
    """Rows of logits (N, K) → (codes (N,), scores (N,) or None): c ~ softmax(ℓ/τ) by the
    inverse CDF of the uniforms u (N, 1) (τ = 0: the argmax), and, if asked, the code's
    log-probability under softmax(ℓ/τ_score) (MaskGIT's confidence). The full and the chunked
    path both draw through here."""
    acc = accumulation_dtype(logits.dtype)
    if temperature == 0:
        codes = logits.argmax(-1)
    else:
        scaled = logits.to(acc) / temperature if temperature != 1 else logits.to(acc)
        codes = inverse_cdf(torch.softmax(scaled, dim=-1), u)
    if score_temperature is None:
        return codes, None
    scaled = logits.to(acc) / score_temperature if score_temperature != 1 else logits.to(acc)
    score = scaled.gather(-1, codes[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
    return codes, score


def draw_from_logits(logits, temperature, generator, score_temperature=None):
    """The full path: logits (B, K, H, W) → codes (B, H, W) (and scores), drawing one uniform
    per position in (B, H, W) order."""
    b, k, h, w = logits.shape
    u = noise.rand((b, h * w, 1), logits.device, generator).view(b * h * w, 1)
    codes, score = draw_rows(
        logits.permute(0, 2, 3, 1).reshape(-1, k), u, temperature, score_temperature
    )
    return codes.view(b, h, w), None if score is None else score.view(b, h, w)


@dataclass
class LinearHead:
    """(W, b) of a DiT head for K codes at patch size p, over a latent grid (H, W)."""

    weight: torch.Tensor  # (p²·K, D)
    bias: torch.Tensor  # (p²·K,)
    patch: int
    grid: tuple[int, int]
    chunk: int = DEFAULT_CHUNK

    @classmethod
    def of(cls, model, chunk: int = DEFAULT_CHUNK) -> LinearHead | None:
        m = linear_head(model)
        if m is None:
            return None
        lin = m.final_layer.linear
        return cls(lin.weight, lin.bias, m.patch_size, tuple(m.grid), chunk)

    @property
    def num_codes(self) -> int:
        return self.weight.shape[0] // self.patch**2

    def loss(self, hidden, indices, z_loss_weight: float, weight=None):
        """(loss, ce, z_loss) for hidden (B, T, D) and target codes (B, H, W); ``weight``
        (B, H, W) scales each position's CE (the z-loss is unweighted); ce is unweighted."""
        h = hidden.reshape(-1, hidden.shape[-1])
        target = patchify(indices.long(), self.patch)  # (B·T, p²)
        if weight is not None:
            weight = patchify(weight, self.patch)
        grads = torch.is_grad_enabled() and (
            h.requires_grad or self.weight.requires_grad or self.bias.requires_grad
        )
        fn = _ChunkedCategoricalLoss.apply
        return fn(
            h,
            self.weight,
            self.bias,
            target,
            weight,
            float(z_loss_weight),
            self.chunk,
            _compute_dtype(h),
            grads,
        )

    def logit_chunks(self, hidden):
        """Yield (first position, logits (r·p², K)) per chunk of tokens, positions in head
        order, in float32 (float64 for float64 inputs)."""
        h = hidden.reshape(-1, hidden.shape[-1])
        dt = _compute_dtype(h)
        acc = accumulation_dtype(dt)
        wc, bc = self.weight.to(dt), self.bias.to(acc)
        k, p2 = self.num_codes, self.patch**2
        rows = _chunk_rows(h.shape[0], p2 * k, self.chunk)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], rows):
                yield s * p2, (h[s : s + rows].to(dt) @ wc.t()).to(acc).add_(bc).view(-1, k)

    def posterior_mean(self, hidden, codebook, temperature: float = 1.0) -> torch.Tensor:
        """μ = softmax(ℓ/τ)·E as (B, d, H, W); τ = 0 takes the argmax code's vector."""
        b, p2 = hidden.shape[0], self.patch**2
        rows = hidden.shape[0] * hidden.shape[1]
        e = codebook.to(accumulation_dtype(_compute_dtype(hidden)))
        mu = torch.empty(rows * p2, e.shape[1], device=hidden.device, dtype=e.dtype)
        for start, logits in self.logit_chunks(hidden):
            part = slice(start, start + logits.shape[0])
            if temperature == 0:
                mu[part] = e[logits.argmax(-1)]
            else:
                mu[part] = torch.softmax(logits.div_(temperature), dim=-1) @ e
        mu = unpatchify(mu.view(rows, p2, -1), b, self.grid, self.patch)  # (B, H, W, d)
        return mu.permute(0, 3, 1, 2)

    def draw(self, hidden, temperature: float, generator, score_temperature=None):
        """c ~ softmax(ℓ/τ) per position → (codes (B, H, W), scores or None), drawing the same
        uniforms (one per position, in (B, H, W) order) as ``draw_from_logits``."""
        b = hidden.shape[0]
        h, w = self.grid
        u = noise.rand((b, h * w, 1), hidden.device, generator).view(b * h * w, 1)
        u = patchify(u.view(b, h, w, 1), self.patch).reshape(-1, 1)  # head order
        codes = torch.empty(u.shape[0], dtype=torch.long, device=hidden.device)
        scores = None if score_temperature is None else torch.empty(u.shape[0], device=u.device)
        for start, logits in self.logit_chunks(hidden):
            part = slice(start, start + logits.shape[0])
            c, sc = draw_rows(logits, u[part], temperature, score_temperature)
            codes[part] = c
            if scores is not None:
                scores[part] = sc
        p2 = self.patch**2
        codes = unpatchify(codes.view(-1, p2), b, self.grid, self.patch)
        if scores is not None:
            scores = unpatchify(scores.view(-1, p2), b, self.grid, self.patch)
        return codes, scores


class CategoricalHead:
    """Mixin of the methods whose model outputs logits over the codebook (purr, dfm, …).

    ``head="chunked"`` (default) computes loss, posterior mean and samples from the hidden
    states whenever the model exposes a linear head (the DiT); ``"full"`` always materialises
    the (B, K, H, W) logits (the reference path). Models without a linear head (oracles,
    wrappers of other networks) always take the full path. Entropy maps (``posterior``,
    ``trace=True``) need the full posterior and take the full path.
    """

    def init_head(self, options) -> None:
        """The head's options (``methods.options.CategoricalOptions``, checked by the record)."""
        self.head = options.head
        self.head_chunk = options.head_chunk
        self.z_loss_weight = options.z_loss_weight

    def ideal_output(self, posterior, x_t, t):
        """Logits whose softmax is the exact posterior (log π, floored at 1e-30)."""
        return posterior.clamp_min(1e-30).log()

    def head_for(self, model) -> LinearHead | None:
        return None if self.head == "full" else LinearHead.of(model, self.head_chunk)

    def categorical_loss_of(self, model, x, t, y, indices, weight=None) -> LossOutput:
        """CE (× ``weight`` per position, if given) + z-loss of the model's logits at
        (x, t, y) against the codes ``indices``."""
        head = self.head_for(model)
        if head is None:
            return categorical_loss(model(x, t, y), indices, self.z_loss_weight, weight)
        hidden = model(x, t, y, features=True)
        loss, ce, zl = head.loss(hidden, indices, self.z_loss_weight, weight)
        return LossOutput(loss, {"loss": loss.detach(), "ce": ce, "z_loss": zl})

    def draw(
        self,
        model,
        x,
        t,
        y,
        temperature,
        cfg_scale,
        generator,
        need_posterior=False,
        score_temperature=None,
    ):
        """One draw c ~ softmax(ℓ_θ(x, t, y)/τ) per position (ℓ guided at ``cfg_scale``) →
        (codes (B,H,W), scores (B,H,W) or None, posterior (B,K,H,W) or None, multiplier).
        The posterior is returned on the full path only (``need_posterior`` forces it)."""
        head = None if need_posterior else self.head_for(model)
        if head is not None:
            hidden, mult = guided_forward(model, x, t, y, cfg_scale, features=True)
            codes, scores = head.draw(hidden, temperature, generator, score_temperature)
            return codes, scores, None, mult
        logits, mult = guided_forward(model, x, t, y, cfg_scale)
        codes, scores = draw_from_logits(logits, temperature, generator, score_temperature)
        post = categorical(logits, temperature) if need_posterior else None
        return codes, scores, post, mult
