"""Discrete flow matching on codebook indices with the mixture path
(Gat et al. 2024; Campbell et al. 2024).

    x_t = c with probability κ(t), else a source token x_0,    κ(t) = t^power
        source "mask":    x_0 = K (a mask id; the model's vocabulary is K+1)
        source "uniform": x_0 ~ U{0..K−1}
    L = CE(ℓ_θ(x_t, t), c) over all positions (+ λ·z-loss)
    MDLM weighting (masked source): w(t) = κ̇/(1 − κ) / E_t[κ̇] on masked positions, 0 elsewhere
    p_θ(c | x_t) = softmax(ℓ/τ); CFG acts on ℓ before τ

The samplers (discrete Euler with carry-over or redraw, MaskGIT) are in ``dfm_samplers.py``.
"""

from __future__ import annotations

import dataclasses

import torch

from . import dfm_samplers, noise
from .base import LossOutput, Method, SampleOutput, TimeSampler, categorical, guided_forward
from .head import CategoricalHead
from .options import problems, value_errors
from .records.dfm import MaskGITOptions


class DFM(CategoricalHead, Method):
    name = "dfm"
    input_kind = "tokens"

    def __init__(self, codebook, options=None):
        super().__init__(codebook, options)
        o = self.options
        self.init_head(o)
        self.source = o.source
        self.weighting = o.weighting
        self.kappa_power = o.kappa_power
        self.mdlm_eps = o.mdlm_eps
        self.mdlm_stratified = o.mdlm_stratified
        self._mdlm_norm = None
        if o.weighting == "mdlm":
            # MDLM's time range (its sampling_eps = 1e-3, in its reversed time) and its
            # antithetic_sampling (one t per 1/B of the range): w(t) ≤ w(1 − ε), never infinite
            self.time_sampler = TimeSampler(
                "uniform", o.t_min, t_max=1.0 - o.mdlm_eps, stratified=o.mdlm_stratified
            )
            # E_t[κ̇] under that sampler: the MDLM weight's divisor, computed once
            self._mdlm_norm = self.time_sampler.expectation(self.kappa_dot)

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

    def kappa_dot(self, t):
        return self.kappa_power * t ** (self.kappa_power - 1)

    def kappa_inverse(self, k):
        return k ** (1.0 / self.kappa_power)

    def mdlm_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = κ̇/(1 − κ) / E_t[κ̇]: the weight of a masked position at time t (B,).

        MDLM (Sahoo et al. 2024) and MD4 (Shi et al. 2024): the masked-diffusion ELBO weight.
        The divisor E_t[κ̇] under the time sampler makes E[w·1_masked] = 1 per position, so the
        loss keeps the scale of the unweighted CE (it is 1 for uniform t on [0, 1) and any κ).
        w is unbounded at the data end (1.7e7 at t = 1 − 2⁻²⁴), hence t ∈ [t_min, 1 − mdlm_eps]
        and w ≤ 1/ε for κ = t. Only uniform t is the ELBO (a logit-normal t would need its
        density divided out), so the checks refuse ``time_sampling="logit_normal"`` with it.
        """
        t = t.double()
        return (self.kappa_dot(t) / (1 - self.kappa(t)) / self._mdlm_norm).float()

    def path_loglik(self, x_t, t):
        """log p_t(x | c) = log(κ·1[x = c] + (1 − κ)·source(x)) per position and code c."""
        k = self.kappa(t.double()).view(-1, 1, 1, 1)
        point = torch.nn.functional.one_hot(x_t.clamp_max(self.num_codes - 1), self.num_codes)
        point = point.permute(0, 3, 1, 2).double()
        if self.source == "mask":
            masked = (x_t == self.mask_id)[:, None].double()
            point, source = point * (1 - masked), masked
        else:
            source = torch.full_like(point, 1.0 / self.num_codes)
        return (k * point + (1 - k) * source).clamp_min(1e-300).log()

    def source_tokens(self, shape, device, generator=None) -> torch.Tensor:
        if self.source == "mask":
            return torch.full(shape, self.num_codes, dtype=torch.long, device=device)
        return noise.randint(self.num_codes, shape, device, generator)

    def corrupt(self, indices, t, generator=None) -> torch.Tensor:
        """Draw x_t from the mixture path given data indices (B,H,W) and t (B,)."""
        c = indices.long()
        keep_p = self.kappa(t.float()).view(-1, 1, 1)
        keep = torch.rand(c.shape, device=c.device, generator=generator) < keep_p
        return torch.where(keep, c, self.source_tokens(c.shape, c.device, generator))

    def loss(self, model, indices, y=None, generator=None) -> LossOutput:
        t = self.time_sampler(indices.shape[0], indices.device, generator)
        x_t = self.corrupt(indices, t, generator)
        weight = None
        if self.weighting == "mdlm":
            w = self.mdlm_weight(t).to(x_t.device).view(-1, 1, 1)
            weight = (x_t == self.mask_id) * w
        return self.categorical_loss_of(model, x_t, t, y, indices, weight)

    def posterior(self, model, x_t, t, y=None, temperature: float = 1.0, cfg_scale=1.0):
        """p(c | x_t): the network's softmax(ℓ/τ); for the masked source, the exact point mass
        on x_t at every unmasked position (where the path leaves no doubt)."""
        logits, _ = guided_forward(model, x_t, t, y, cfg_scale)
        return self.carry_over(categorical(logits, temperature), x_t)

    def carry_over(self, post: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Posterior (B,K,H,W) with the point mass δ_{x} at the unmasked positions of x
        (masked source; the uniform source's posterior is returned as it is)."""
        if self.source != "mask":
            return post
        decoded = x != self.mask_id
        point = torch.nn.functional.one_hot(x.clamp_max(self.num_codes - 1), self.num_codes)
        point = point.permute(0, 3, 1, 2).to(post.dtype)
        return torch.where(decoded[:, None], point, post)

    def check_sampling(self, solver: str, steps: int, grid) -> None:
        """Refuse a sampler setting that cannot work, before any training."""
        super().check_sampling(solver, steps, grid)
        positions = grid[0] * grid[1]
        if solver == "maskgit" and steps > positions:
            raise ValueError(
                f"MaskGIT unmasks at least one token per step: steps={steps} exceeds the "
                f"{positions} latent positions of the {grid[0]}×{grid[1]} grid (the surplus "
                f"calls would only count as NFE); use steps ≤ {positions}"
            )

    @torch.no_grad()
    def sample(
        self,
        model,
        num_samples,
        grid,
        steps,
        y=None,
        solver="euler",
        temperature=1.0,
        cfg_scale=1.0,
        generator=None,
        trace=False,
        solver_options=None,
    ) -> SampleOutput:
        """``solver_options``: MaskGIT's (``MaskGITOptions``; None: its defaults), the
        config's ``eval.maskgit``; no other solver takes any."""
        self.check_sampling(solver, steps, grid)
        args = (self, model, num_samples, grid, steps, y, temperature, cfg_scale, generator, trace)
        if solver == "maskgit":
            options = solver_options or MaskGITOptions()
            errors = value_errors(MaskGITOptions, dataclasses.asdict(options))
            if errors:
                raise problems("maskgit", errors, dataclasses.asdict(options))
            return dfm_samplers.maskgit(*args, options)
        if solver_options is not None:
            raise ValueError(
                f"solver={solver!r} takes no solver_options (MaskGIT's are for maskgit)"
            )
        return dfm_samplers.euler(*args, carry_over=self.source == "mask" and solver == "euler")
