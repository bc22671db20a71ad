"""Discrete flow matching on codebook indices with the mixture path
(Gat et al. 2024; Campbell et al. 2024).

    x_t = c with probability κ(t), else a source token x_0
        source "mask":    x_0 = K (a mask id; the model's vocabulary is K+1)
        source "uniform": x_0 ~ U{0..K−1}
    training:  L = CE(ℓ_θ(x_t, t), c) over all positions (+ λ·z-loss)
    sampling (discrete Euler): each position jumps with probability
        (κ(t+h) − κ(t))/(1 − κ(t))   [= h·κ̇/(1−κ) for κ(t)=t, the rate κ̇/(1−κ)·(p_θ − δ_{x_t})]
    to a token drawn from p_θ = softmax(ℓ/τ). The last step has probability 1, so every
    position ends on a real code and no mask id survives.
κ(t) = t^power (power 1 by default). CFG acts on ℓ before τ. With a DiT, the loss and the
draws come from the head's hidden states a chunk at a time (``methods/head.py``), never
materialising (B, K, H, W) logits; the draws use the same uniforms as the full path.
"""

from __future__ import annotations

import torch

from .base import (
    LossOutput,
    Method,
    SampleOutput,
    categorical,
    check_steps,
    guided_forward,
    sample_categorical,
)
from .head import DEFAULT_CHUNK, CategoricalHead


class DFM(CategoricalHead, Method):
    name = "dfm"
    solvers = ("euler",)  # discrete Euler jumps
    input_kind = "tokens"
    categorical_posterior = True

    def __init__(self, codebook, source: str = "mask", z_loss_weight: float = 1e-5,
                 kappa_power: float = 1.0, head: str = "chunked", head_chunk: int = DEFAULT_CHUNK,
                 **kw):  # fmt: skip
        super().__init__(codebook, **kw)
        self.init_head(head, head_chunk)
        if source not in ("mask", "uniform"):
            raise ValueError(f"dfm source must be 'mask' or 'uniform', got {source!r}")
        if kappa_power <= 0:
            raise ValueError(f"kappa_power must be > 0, got {kappa_power}")
        self.source, self.z_loss_weight, self.kappa_power = source, z_loss_weight, kappa_power

    @property
    def mask_id(self) -> int | None:
        return self.num_codes if self.source == "mask" else None

    @property
    def vocab_size(self) -> int:
        return self.num_codes + (1 if self.source == "mask" else 0)

    @property
    def out_channels(self) -> int:
        return self.num_codes

    def kappa(self, t):
        """Scheduler κ(t) = t^power: probability that a position already holds its data token."""
        return t**self.kappa_power

    def source_tokens(self, shape, device, generator=None) -> torch.Tensor:
        if self.source == "mask":
            return torch.full(shape, self.num_codes, dtype=torch.long, device=device)
        return torch.randint(0, self.num_codes, shape, device=device, generator=generator)

    def corrupt(self, indices, t, generator=None) -> torch.Tensor:
        """Draw x_t from the mixture path given data indices (B,H,W) and t (B,)."""
        c = indices.long()
        keep_p = self.kappa(t.float()).view(-1, 1, 1)
        keep = torch.rand(c.shape, device=c.device, generator=generator) < keep_p
        return torch.where(keep, c, self.source_tokens(c.shape, c.device, generator))

    def loss(self, model, indices, y=None, generator=None) -> LossOutput:
        t = self.time_sampler(indices.shape[0], indices.device, generator)
        x_t = self.corrupt(indices, t, generator)
        return self.categorical_loss_of(model, x_t, t, y, indices)

    def posterior(self, model, x_t, t, y=None, temperature: float = 1.0, cfg_scale=1.0):
        logits, _ = guided_forward(model, x_t, t, y, cfg_scale)
        return categorical(logits, temperature)

    def draw(self, model, x, t, y, temperature, cfg_scale, generator, need_posterior=False):
        """One draw c ~ p_θ(·|x_t) per position → (codes (B,H,W), posterior or None, mult)."""
        head = None if need_posterior else self.head_for(model)
        if head is not None:
            hidden, mult = guided_forward(model, x, t, y, cfg_scale, features=True)
            return head.sample(hidden, temperature, generator), None, mult
        logits, mult = guided_forward(model, x, t, y, cfg_scale)
        post = categorical(logits, temperature)
        return sample_categorical(post, generator), post, mult

    @torch.no_grad()
    def sample(self, model, num_samples, grid, steps, y=None, solver="euler", temperature=1.0,
               cfg_scale=1.0, generator=None, trace=False) -> SampleOutput:  # fmt: skip
        check_steps(steps)
        if solver != "euler":
            raise ValueError(f"dfm samples with discrete Euler jumps only; got solver={solver!r}")
        dev = self.codebook.device
        x = self.source_tokens((num_samples, *grid), dev, generator)
        ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        nfe, rows, records = 0, 0, [] if trace else None
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            tt = torch.full((num_samples,), t, device=dev, dtype=torch.float32)
            proposal, post, mult = self.draw(model, x, tt, y, temperature, cfg_scale, generator,
                                             trace)  # fmt: skip
            nfe, rows = nfe + 1, rows + mult
            if trace:
                records.append({"t": t, "state": x.clone(), "posterior": post})
            k_t, k_next = self.kappa(t), self.kappa(t_next)
            jump_p = 1.0 if i == steps - 1 else (k_next - k_t) / (1.0 - k_t)
            if jump_p >= 1.0:
                x = proposal
            else:
                jump = torch.rand(x.shape, device=dev, generator=generator) < jump_p
                x = torch.where(jump, proposal, x)
        if trace:
            records.append({"t": 1.0, "state": x.clone(), "posterior": None})
        return SampleOutput(x, nfe, rows, records)
