"""Discrete flow matching on codebook indices with the mixture path
(Gat et al. 2024; Campbell et al. 2024).

    x_t = c with probability κ(t), else a source token x_0
        source "mask":    x_0 = K (a mask id; the model's vocabulary is K+1)
        source "uniform": x_0 ~ U{0..K−1}
    training:  L = CE(ℓ_θ(x_t, t), c) over all positions (+ λ·z-loss)
    sampling (discrete Euler): a position jumps with probability
        (κ(t+h) − κ(t))/(1 − κ(t))   [= h·κ̇/(1−κ) for κ(t)=t, the rate κ̇/(1−κ)·(p_θ − δ_{x_t})]
    to a token drawn from p_θ = softmax(ℓ/τ). The last step has probability 1, so every
    position ends on a real code and no mask id survives.
κ(t) = t^power (power 1 by default). CFG acts on ℓ before τ.

Which positions may jump (``solver``):
- masked source, ``"euler"`` (default): only masked ones; an unmasked position never changes
  again (MDLM's carry-over). On the mixture path with a mask source, x_t = c wherever x_t is
  not the mask, so the exact posterior p(c | x_t) at an unmasked position is a point mass on
  its current token and the exact rate there is zero. The network is not needed there, and
  is not trustworthy there: with ``weighting="mdlm"`` the loss gives unmasked positions zero
  weight, so its outputs there are untrained. ``posterior`` (and the trace) report that point
  mass at unmasked positions.
- masked source, ``"euler-redraw"``: every position, decoded or not, jumps with the same
  probability to a fresh draw from p_θ, and the last step redraws them all. This is what the
  official Purrception code's DFM sampler and flow_matching's mixture Euler solver do; it is
  exact only for a network that is exact at unmasked positions too. Kept to reproduce that
  baseline; its results rows are labelled ``…-redraw``.
- uniform source, ``"euler"``: every position (a position that holds a real code may still be
  noise, so its posterior is not a point mass).

Options for the masked source:
- ``weighting="mdlm"`` (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024): the ELBO weight
  w(t) = κ̇(t)/(1 − κ(t)) on masked positions, 0 on unmasked ones, divided by E_t[κ̇(t)]
  under the time sampler, so that E[w·1_masked] = 1 per position and the loss keeps the
  scale of the unweighted CE (for uniform t on [0, 1) and any κ the divisor is 1).
  w is unbounded at the data end (1.7e7 at t = 1 − 2⁻²⁴), so, as MDLM does (its
  ``sampling_eps`` = 1e-3, in its reversed time), t is drawn uniformly on
  [t_min, 1 − mdlm_eps]: w ≤ κ̇/(1 − κ) at 1 − ε (= 1/ε = 1000 for κ = t). With
  ``mdlm_stratified`` (default; MDLM's ``antithetic_sampling``) the batch's times are
  stratified, one per 1/B of [0, 1). Only uniform t is the ELBO (a logit-normal t would need
  the weight divided by its density), so ``time_sampling="logit_normal"`` is refused.
- ``solver="maskgit"`` (Chang et al. 2022): start all masked; at step i of n, draw a code
  c ~ softmax(ℓ/τ) at every masked position, score it by its log-probability under
  softmax(ℓ/τ_conf) plus Gumbel noise × choice_temperature·(1 − r), r = (i+1)/n, and keep
  the ⌊N·γ(r)⌋ lowest-scoring positions masked (at least one fewer than before; none after
  the last step), γ the unmasking schedule (cosine: cos(πr/2)). The model sees the time
  t = κ⁻¹(fraction unmasked). One model call per step, and every call unmasks at least one
  token: after step i at least n − 1 − i positions stay masked (one for each step still to
  come; the reference's ``max(1, …)`` at the second-to-last step), so ``steps`` may not
  exceed the number of latent positions (refused: the surplus calls would do nothing but
  count as NFE).

With a DiT, the loss and the draws come from the head's hidden states a chunk at a time
(``methods/head.py``), never materialising (B, K, H, W) logits; the draws use the same
uniforms as the full path.
"""

from __future__ import annotations

import math

import torch

from . import noise
from .base import (
    LossOutput,
    Method,
    SampleOutput,
    TimeSampler,
    categorical,
    guided_forward,
)
from .base import keep as keep_record
from .catalog import MASKGIT_SCHEDULES, SOLVERS, dfm_option_errors
from .head import DEFAULT_CHUNK, CategoricalHead


class DFM(CategoricalHead, Method):
    name = "dfm"
    # discrete Euler jumps (carry-over for the masked source); the official code's Euler that
    # redraws decoded tokens (masked source); MaskGIT (masked source)
    solvers = SOLVERS["dfm"]
    input_kind = "tokens"
    categorical_posterior = True

    def __init__(
        self,
        codebook,
        source: str = "mask",
        z_loss_weight: float = 1e-5,
        kappa_power: float = 1.0,
        weighting: str = "none",
        maskgit_schedule="cosine",
        maskgit_choice_temperature: float = 4.5,
        maskgit_confidence_temperature=1.0,
        mdlm_eps: float = 1e-3,
        mdlm_stratified: bool = True,
        head: str = "chunked",
        head_chunk: int = DEFAULT_CHUNK,
        **kw,
    ):
        super().__init__(codebook, **kw)
        self.init_head(head, head_chunk)
        options = dict(
            source=source,
            weighting=weighting,
            kappa_power=kappa_power,
            time_sampling=self.time_sampler.kind,
            t_min=self.time_sampler.t_min,
            mdlm_eps=mdlm_eps,
            maskgit_schedule=maskgit_schedule,
            maskgit_choice_temperature=maskgit_choice_temperature,
            maskgit_confidence_temperature=maskgit_confidence_temperature,
        )
        errors = dfm_option_errors(**options)
        if errors:
            raise ValueError(
                "dfm: "
                + "; ".join(
                    f"{k}={options[k]!r} is not allowed; expected {expected}"
                    for k, expected in errors
                )
            )
        self.source = source
        self.weighting = weighting
        self.kappa_power = kappa_power
        self.z_loss_weight = z_loss_weight
        self.maskgit_schedule = maskgit_schedule
        self.choice_temperature = maskgit_choice_temperature
        self.confidence_temperature = maskgit_confidence_temperature
        self.mdlm_eps = mdlm_eps
        self.mdlm_stratified = mdlm_stratified
        self._mdlm_norm = None
        if weighting == "mdlm":
            # MDLM's time range and stratification: w(t) ≤ w(1 − ε), never infinite
            self.time_sampler = TimeSampler(
                "uniform", self.time_sampler.t_min, t_max=1.0 - mdlm_eps, stratified=mdlm_stratified
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
        """w(t) = κ̇/(1 − κ) / E_t[κ̇]: the weight of a masked position at time t (B,)."""
        t = t.double()
        return (self.kappa_dot(t) / (1 - self.kappa(t)) / self._mdlm_norm).float()

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
        if solver in ("maskgit", "euler-redraw") and self.source != "mask":
            raise ValueError(
                f"solver={solver!r} needs dfm source='mask' (method.source=mask); the uniform "
                "source samples with solver='euler'"
            )
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
    ) -> SampleOutput:
        self.check_sampling(solver, steps, grid)
        if solver == "maskgit":
            return self.sample_maskgit(
                model, num_samples, grid, steps, y, temperature, cfg_scale, generator, trace
            )
        dev = self.codebook.device
        carry = self.source == "mask" and solver == "euler"
        x = self.source_tokens((num_samples, *grid), dev, generator)
        ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        nfe, rows, records = 0, 0, [] if trace else None
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            tt = torch.full((num_samples,), t, device=dev, dtype=torch.float32)
            proposal, _, post, mult = self.draw(
                model, x, tt, y, temperature, cfg_scale, generator, trace
            )
            nfe, rows = nfe + 1, rows + mult
            if trace:
                post = self.carry_over(post, x) if carry else post
                keep_record(records, trace, {"t": t, "state": x.clone(), "posterior": post})
            k_t, k_next = self.kappa(t), self.kappa(t_next)
            jump_p = 1.0 if i == steps - 1 else (k_next - k_t) / (1.0 - k_t)
            if jump_p >= 1.0:
                jump = torch.ones(x.shape, dtype=torch.bool, device=dev)
            else:  # the same uniforms whichever positions may jump
                jump = noise.rand(x.shape, dev, generator) < jump_p
            if carry:  # decoded positions keep their token (their posterior is a point mass)
                jump &= x == self.mask_id
            x = torch.where(jump, proposal, x)
        if trace:
            keep_record(records, trace, {"t": 1.0, "state": x.clone(), "posterior": None})
        return SampleOutput(x, nfe, rows, records)

    def maskgit_masked(self, num_positions: int, step: int, steps: int, masked_now: int) -> int:
        """How many positions stay masked after ``step`` (0-based) of ``steps``."""
        if step == steps - 1:
            return 0
        gamma = MASKGIT_SCHEDULES[self.maskgit_schedule]
        keep = math.floor(num_positions * gamma((step + 1) / steps))
        # ≥ 1 unmasked now, ≥ 1 left for each step to come (steps ≤ positions: both hold)
        return max(steps - 1 - step, min(keep, masked_now - 1))

    @torch.no_grad()
    def sample_maskgit(
        self, model, num_samples, grid, steps, y, temperature, cfg_scale, generator, trace
    ) -> SampleOutput:
        dev = self.codebook.device
        n = grid[0] * grid[1]
        x = self.source_tokens((num_samples, *grid), dev, generator)
        nfe, rows, records = 0, 0, [] if trace else None
        for i in range(steps):
            masked = x == self.mask_id
            masked_now = int(masked[0].sum())  # the same for every sample: one schedule
            t = self.kappa_inverse(torch.full((num_samples,), 1.0 - masked_now / n, device=dev))
            codes, score, post, mult = self.draw(
                model,
                x,
                t,
                y,
                temperature,
                cfg_scale,
                generator,
                trace,
                score_temperature=self.confidence_temperature,
            )
            nfe, rows = nfe + 1, rows + mult
            if trace:
                keep_record(
                    records, trace, {"t": float(t[0]), "state": x.clone(), "posterior": post}
                )
            keep = self.maskgit_masked(n, i, steps, masked_now)
            u = noise.rand(x.shape, dev, generator).clamp_(1e-20, 1.0)
            gumbel = self.choice_temperature * (1.0 - (i + 1) / steps)
            conf = score.float() - gumbel * torch.log(-torch.log(u))  # + scaled Gumbel noise
            conf = torch.where(masked, conf, torch.full_like(conf, math.inf)).view(num_samples, n)
            x = torch.where(masked, codes, x).view(num_samples, n)
            if keep > 0:
                remask = conf.topk(keep, dim=1, largest=False).indices
                x.scatter_(1, remask, self.mask_id)
            x = x.view(num_samples, *grid)
        if trace:
            keep_record(records, trace, {"t": 1.0, "state": x.clone(), "posterior": None})
        return SampleOutput(x, nfe, rows, records)
