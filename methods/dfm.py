"""Discrete flow matching on codebook indices with the mixture path
(Gat et al. 2024; Campbell et al. 2024).

    x_t = c with probability κ(t), else a source token x_0,    κ(t) = t^power
        source "mask":    x_0 = K (a mask id; the model's vocabulary is K+1)
        source "uniform": x_0 ~ U{0..K−1}
    L = CE(ℓ_θ(x_t, t), c) over all positions (+ λ·z-loss)
    MDLM weighting (masked source): w(t) = κ̇/(1 − κ) / E_t[κ̇] on masked positions, 0 elsewhere
    p_θ(c | x_t) = softmax(ℓ/τ); CFG acts on ℓ before τ

The path is ``paths.MixturePath``; discrete Euler (carry-over or redraw) is its step under the
shared posterior-draw sampler (``sampling.py``), MaskGIT is in ``dfm_samplers.py``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch

from . import dfm_samplers
from .base import LossOutput, Method, SampleOutput, TimeSampler, categorical, guided_forward
from .head import CategoricalHead
from .options import problems, value_errors
from .paths import MixturePath
from .records.dfm import MaskGITOptions
from .sampling import posterior_draws


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
        self.path = MixturePath(self.num_codes, o.source, o.kappa_power)
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
            self._mdlm_norm = self.time_sampler.expectation(self.path.kappa_dot)

    @property
    def mask_id(self) -> int | None:
        return self.path.mask_id

    @property
    def vocab_size(self) -> int:
        return self.path.vocab_size

    @property
    def out_channels(self) -> int:
        return self.num_codes

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
        return (self.path.kappa_dot(t) / (1 - self.path.kappa(t)) / self._mdlm_norm).float()

    def path_loglik(self, x_t, t):
        return self.path.path_loglik(x_t, t)

    def corrupt(self, indices, t, generator=None) -> torch.Tensor:
        """Draw x_t from the mixture path given data indices (B,H,W) and t (B,)."""
        return self.path.corrupt(indices, t, generator)

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
        return self.path.carry_over(categorical(logits, temperature), x_t)

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
        shape = (num_samples, *grid)
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
        # discrete Euler: carry-over for the masked source; euler-redraw (the official code's
        # masked Euler, and flow_matching's) lets decoded positions jump too
        carry = self.source == "mask" and solver == "euler"
        start = self.path.source_tokens(shape, self.codebook.device, generator)
        return posterior_draws(
            self,
            model,
            shape,
            steps,
            start,
            partial(self.path.step, carry_over=carry),
            (y, temperature, cfg_scale, generator),
            trace,
            traced=self.path.carry_over if carry else None,
        )
