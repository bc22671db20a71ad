"""What every method shares: outputs, time sampling, CFG, temperature, nearest code.

Time runs from t=0 (noise) to t=1 (data). A model is any callable ``model(x, t, y)``;
``y`` may hold ``NULL_LABEL`` (-1) for the unconditional branch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.backbone.dit import NULL_LABEL
from shared.codebook import lookup, nearest_code  # noqa: F401  (re-exported)

from .options import MIN_TEMPERATURE, TIME_SAMPLINGS
from .records import categorical as categorical_methods


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    logs: dict = field(default_factory=dict)  # detached scalars (no host sync here)


@dataclass
class SampleOutput:
    indices: torch.Tensor  # (B, H, W) long, every entry a real code in [0, K)
    nfe: int  # number of model calls (a CFG call over both halves counts once)
    nfe_rows: int  # model calls × batch multiplier (2 with CFG): the compute actually spent
    # per step: {"t", "state", "posterior" (B,K,H,W) or None}; empty when trace is a callable
    trace: list | None = None


def record_trace(records: list, trace, record: dict) -> None:
    """One trace record: appended to ``records`` (``trace=True``), or handed to ``trace``
    when it is a callable, which keeps what it needs (analysis/entropy_maps.py keeps
    entropies and argmaxes, not every (B, K, H, W) posterior)."""
    if callable(trace):
        trace(record)
    else:
        records.append(record)


def below(x: float, dtype: torch.dtype = torch.float32) -> float:
    """The largest value of ``dtype`` below x (for x = 1 in float32: 1 − 2⁻²⁴). A clamp to
    ``math.nextafter(1.0, 0.0)`` is no clamp in float32: that float64 rounds back to 1.0."""
    return float(
        torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(-math.inf, dtype=dtype))
    )


class TimeSampler:
    """t for training: ``uniform`` on [t_min, t_max) or ``logit_normal`` (sigmoid of N(m, s²)).

    Logit-normal draws are clipped to [t_min, t_max) as well. Every draw is a float32 strictly
    below t_max ≤ 1, so 1/(1 − t) is finite at every t a sampler returns (the float32 sum
    t_min + (1 − t_min)·u rounds to exactly 1.0 for some t_min and u; the clamp catches it).
    ``stratified`` (uniform only) draws one t per stratum of the batch, u_i = (i + r_i)/n
    (MDLM's "antithetic" sampling): unbiased, with the batch's times spread evenly.
    """

    def __init__(
        self,
        kind: str,
        t_min: float,
        mean: float = 0.0,
        std=1.0,
        t_max: float = 1.0,
        stratified: bool = False,
    ):
        if kind not in TIME_SAMPLINGS:
            raise ValueError(f"time sampling must be one of {TIME_SAMPLINGS}, got {kind!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 ≤ t_min < t_max ≤ 1, got t_min={t_min}, t_max={t_max}")
        if stratified and kind != "uniform":
            raise ValueError("stratified time sampling is for time_sampling='uniform' only")
        self.kind = kind
        self.t_min = t_min
        self.mean = mean
        self.std = std
        self.t_max = t_max
        self.stratified = stratified
        self.top = below(t_max)  # the largest float32 draw

    def quantile(self, q: torch.Tensor) -> torch.Tensor:
        """The t below which a fraction q of draws fall (for expectations by quadrature)."""
        if self.kind == "uniform":
            return self.t_min + (self.t_max - self.t_min) * q
        t = torch.sigmoid(self.mean + self.std * torch.special.ndtri(q))
        return t.clamp(self.t_min, below(self.t_max, q.dtype))

    def expectation(self, f, n: int = 100_000) -> float:
        """E_t[f(t)] under this sampler: the midpoint rule over n quantiles, in float64."""
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        return float(f(self.quantile(q)).mean())

    def from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """Uniforms u in [0, 1) (float32) → times (the uniform sampler's map)."""
        return (self.t_min + (self.t_max - self.t_min) * u).clamp_(max=self.top)

    def from_normal(self, z: torch.Tensor) -> torch.Tensor:
        """Standard normals z (float32) → times (the logit-normal sampler's map)."""
        return torch.sigmoid(self.mean + self.std * z).clamp_(self.t_min, self.top)

    def __call__(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "uniform":
            u = torch.rand(n, device=device, generator=generator, dtype=torch.float32)
            if self.stratified:
                u = (torch.arange(n, device=device, dtype=torch.float32) + u) / n
            return self.from_uniform(u)
        z = torch.randn(n, device=device, generator=generator, dtype=torch.float32)
        return self.from_normal(z)


def guided_forward(model, x, t, y, cfg_scale: float = 1.0, **kw) -> tuple[torch.Tensor, int]:
    """Model output with classifier-free guidance ``out_u + s·(out_c − out_u)``.

    One batched call over the conditional and unconditional halves; returns the output and
    the batch multiplier (1 without guidance, 2 with it). Scale 1 is the conditional model.
    ``kw`` goes to the model (``features=True``: the head's hidden states, which guidance may
    mix because the head is affine — ``methods/head.py``).
    """
    if cfg_scale == 1.0:
        return model(x, t, y, **kw), 1
    if y is None:
        raise ValueError(f"cfg_scale={cfg_scale} needs class labels y (got y=None)")
    out = model(
        torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NULL_LABEL)]), **kw
    )
    out_c, out_u = out.chunk(2)
    return out_u + cfg_scale * (out_c - out_u), 2


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32, float64 for float64 (the exactness tests run in float64)."""
    return torch.promote_types(dtype, torch.float32)


def categorical(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits/τ) over dim 1 (B,K,H,W); τ=0 is the one-hot argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(
            f"temperature={temperature:g}: logits/τ overflow float32 below "
            f"{MIN_TEMPERATURE:g}; use 0 for the argmax"
        )
    if temperature == 0:
        return F.one_hot(logits.argmax(1), logits.shape[1]).permute(0, 3, 1, 2).float()
    acc = accumulation_dtype(logits.dtype)
    if temperature != 1:
        logits = logits.to(acc) / temperature
    # dtype= upcasts inside the kernel: no float32 copy of (bf16) logits on CUDA
    return torch.softmax(logits, dim=1, dtype=acc)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rows of probs (N, K) and uniforms u (N, 1) → (N,): the first index whose cumulative
    mass exceeds u·total. ~25× faster than torch.multinomial on CPU for K=256, and never
    lands on a zero-probability entry."""
    cdf = probs.to(accumulation_dtype(probs.dtype)).cumsum(1)
    return (
        torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[:, -1:], right=True)
        .clamp_max(probs.shape[1] - 1)
        .squeeze(1)
    )


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over positions of logsumexp_k(logits)² (PaLM's z-loss; keeps logits anchored)."""
    return torch.logsumexp(logits.to(accumulation_dtype(logits.dtype)), dim=1).pow(2).mean()


def categorical_loss(
    logits: torch.Tensor,
    indices: torch.Tensor,
    z_loss_weight: float,
    weight: torch.Tensor | None = None,
):
    """mean(w·CE(logits, c)) + λ·z-loss over all positions; logits (B,K,H,W), indices and the
    optional per-position weights w (B,H,W). The logged ``ce`` is the unweighted mean."""
    logits = logits.to(accumulation_dtype(logits.dtype))
    ce_pos = F.cross_entropy(logits, indices.long(), reduction="none")
    ce = ce_pos.mean()
    zl = z_loss(logits)
    loss = ce if weight is None else (weight.to(ce_pos.dtype) * ce_pos).mean()
    loss = loss + z_loss_weight * zl if z_loss_weight else loss
    return LossOutput(loss, {"loss": loss.detach(), "ce": ce.detach(), "z_loss": zl.detach()})


def check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


class Method(nn.Module):
    """Base: holds the codebook E (K, d) as a buffer; subclasses implement the objective.

    A method is built from its options dataclass (its record's ``options``; None: the
    defaults), which its record checks here with the words the start-up checks use. Its
    name, samplers and whether its posterior is categorical are read from the record."""

    name: str = ""
    input_kind: str = ""  # "latent" | "tokens"

    def __init__(self, codebook: torch.Tensor, options=None):
        super().__init__()
        from .records import record

        self.record = record(self.name)
        options = self.record.options() if options is None else options
        if not isinstance(options, self.record.options):
            raise TypeError(
                f"{self.name} takes {self.record.options.__name__}, got {type(options).__name__}"
            )
        self.record.check(dataclasses.asdict(options))
        if codebook.ndim != 2:
            raise ValueError(f"codebook must be (K, d), got shape {tuple(codebook.shape)}")
        self.options = options
        codebook = self.prepare_codebook(codebook)
        self.register_buffer("codebook", codebook.detach().float().clone(), persistent=False)
        self.time_sampler = TimeSampler(
            options.time_sampling, options.t_min, options.t_mean, options.t_std
        )

    def prepare_codebook(self, codebook: torch.Tensor) -> torch.Tensor:
        """The codebook the method works on, from the tokenizer's (the options are set)."""
        return codebook

    @property
    def solvers(self) -> tuple[str, ...]:
        """The ``solver`` values ``sample`` accepts (fixed grid; latent methods add dopri5)."""
        return self.record.solvers

    @property
    def adaptive_solvers(self) -> tuple[str, ...]:
        """Adaptive solvers ``sample`` also runs (analysis only, not an ``eval.solver``)."""
        return self.record.adaptive_solvers

    @property
    def categorical_posterior(self) -> bool:
        return self.record.categorical

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def code_dim(self) -> int:
        return self.codebook.shape[1]

    @property
    def vocab_size(self) -> int | None:
        return None

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return lookup(self.codebook, indices)

    def check_sampling(self, solver: str, steps: int, grid) -> None:
        """Raise ValueError for a sampler setting this method cannot run (before training)."""
        check_steps(steps)
        if solver not in self.solvers:
            raise ValueError(
                f"{self.name} samples with {' or '.join(self.solvers)}; got solver={solver!r}"
            )
        why = self.record.solver_rules(solver, dataclasses.asdict(self.options))
        if why:
            raise ValueError(f"solver={solver!r} is not allowed with these options; expected {why}")

    def path_loglik(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_t(x_t | c = k) at every position for every code k → (B, K, H, W) float64, up
        to a constant per sample: the path's conditional likelihood. With it the exact
        posterior of any known data distribution follows by Bayes, which is how the contract
        tests build every method's oracle (tests/helpers/toy.py)."""
        raise NotImplementedError(f"{self.name} does not give its path's likelihood")

    def ideal_output(self, posterior: torch.Tensor, x_t, t: torch.Tensor) -> torch.Tensor:
        """What a perfectly trained network outputs at (x_t, t), given the exact posterior
        over codes (B, K, H, W) at each position (float64 in, float64 out)."""
        raise NotImplementedError(f"{self.name} does not say what its ideal network outputs")

    def check_temperature(self, temperature: float) -> None:
        if not self.categorical_posterior and temperature != 1.0:
            raise ValueError(
                f"{self.name} has no categorical posterior, so temperature={temperature} would "
                "be ignored; temperature applies to " + ", ".join(categorical_methods()) + " only"
            )

    def model_kwargs(self) -> dict:
        """What the backbone needs to match this method's input and output."""
        kw = {"input_kind": self.input_kind, "out_channels": self.out_channels}
        if self.input_kind == "latent":
            kw["in_channels"] = self.code_dim
        else:
            kw["vocab_size"] = self.vocab_size
        return kw
