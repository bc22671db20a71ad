"""What the start-up checks need to know of the methods, without torch: their names, the
samplers each accepts, and the float32 limits of their options. The method classes take
these values from here (one source), so ``experiments/runner/checks.py`` can refuse a bad
config in a process that never imports torch: ``experiments/pack.py`` checking a whole sweep,
or ``experiments/run.py`` failing fast.
"""

from __future__ import annotations

import math

# fixed-grid ODE solvers of the latent methods (cfm, cfm-endpoint, purr), and the adaptive one
LATENT_SOLVERS = ("euler", "heun", "midpoint")
ADAPTIVE_SOLVERS = ("dopri5",)
SOLVERS = {
    "cfm": LATENT_SOLVERS,
    "cfm-endpoint": LATENT_SOLVERS,
    "dfm": ("euler", "euler-redraw", "maskgit"),
    "dfm-metric": ("euler",),
    "purr": LATENT_SOLVERS,
}

# the methods whose network outputs a categorical posterior over the codebook (τ tempers it),
# in the order the analyses list them
CATEGORICAL = ("purr", "dfm", "dfm-metric")

TIME_SAMPLINGS = ("uniform", "logit_normal")
HEADS = ("chunked", "full")  # the categorical loss chunk by chunk, or from the full logit map
DISTANCES = ("l2", "sqeuclidean")  # dfm-metric's d(·, x1) between codes
LATENT_SCALES = ("none", "unit")
# dfm: the source of the mixture path (the mask token, or a uniform draw over the codebook),
# and the weight of its cross-entropy (none, or MDLM's ELBO weight κ̇/(1 − κ))
SOURCES = ("mask", "uniform")
WEIGHTINGS = ("none", "mdlm")
# MaskGIT's γ(r): the fraction of positions still masked after a fraction r of the steps
MASKGIT_SCHEDULES = {
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
    "sqrt": lambda r: 1.0 - math.sqrt(r),
}

MIN_TEMPERATURE = 1e-30  # logits/τ stay finite in float32 for logits up to 1e8
MAX_KAPPA_POWER = 1e30  # κ(t) = t^a, κ̇ = a·t^(a−1): a itself must stay finite in float32

# β_t·d must stay finite in float32 (3.4e38) at every training time, up to the largest float32
# t below 1, where t/(1 − t) = MAX_RATIO; distances have mean 1, and MAX_BETA leaves room for
# distances up to 3000× their mean. (Beyond it −β·d is −inf, 0·inf is NaN at the data code, and
# corrupted tokens silently become code K − 1.)
MAX_BETA = 1e35
MAX_RATIO = 2.0**24 - 1


def _number(v):
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def dfm_option_errors(
    source="mask",
    weighting="none",
    kappa_power=1.0,
    time_sampling="uniform",
    t_min=0.0,
    mdlm_eps=1e-3,
    maskgit_schedule="cosine",
    maskgit_choice_temperature=4.5,
    maskgit_confidence_temperature=1.0,
) -> list[tuple[str, str]]:
    """Every problem with a dfm's options, as (option, what it must be): the one list that
    both ``DFM.__init__`` and the start-up checks report from. Options of the wrong type are
    left to the checks' ranges."""
    errors = []
    if source not in SOURCES:
        errors.append(("source", "one of " + ", ".join(SOURCES)))
    if weighting not in WEIGHTINGS:
        errors.append(("weighting", "one of " + ", ".join(WEIGHTINGS)))
    if maskgit_schedule not in MASKGIT_SCHEDULES:
        errors.append(("maskgit_schedule", "one of " + ", ".join(MASKGIT_SCHEDULES)))
    a = _number(kappa_power)
    if a is not None and not 0 < a <= MAX_KAPPA_POWER:
        errors.append(
            (
                "kappa_power",
                f"a number in (0, {MAX_KAPPA_POWER:g}]: κ(t) = t^a and "
                "its derivative a·t^(a−1) are not finite in float32 beyond it",
            )
        )
    choice = _number(maskgit_choice_temperature)
    if choice is not None and choice < 0:
        errors.append(("maskgit_choice_temperature", "a number ≥ 0"))
    confidence = _number(maskgit_confidence_temperature)
    if confidence is not None and confidence < MIN_TEMPERATURE:
        errors.append(
            (
                "maskgit_confidence_temperature",
                f"a number ≥ {MIN_TEMPERATURE:g}: "
                "logits/τ overflow float32 below it, and the draws become arbitrary "
                "instead of the argmax",
            )
        )
    if weighting != "mdlm":
        return errors
    # MDLM's weight is the masked-diffusion ELBO under uniform t, on [t_min, 1 − mdlm_eps]
    if source != "mask":
        errors.append(
            (
                "weighting",
                "none: the MDLM weight is for the masked source only (it needs source='mask')",
            )
        )
    if time_sampling != "uniform":
        errors.append(
            (
                "time_sampling",
                "uniform with weighting=mdlm: the MDLM weight is the "
                "ELBO under uniform t (another sampler needs its density divided out; "
                "use time_sampling='uniform')",
            )
        )
    t0, eps = _number(t_min) or 0.0, _number(mdlm_eps)
    if eps is not None and not 0 < eps < 1 - t0:
        errors.append(("mdlm_eps", "a number in (0, 1 − t_min): t is drawn on [t_min, 1 − ε]"))
    if a is not None and a < 1 and t0 == 0:
        errors.append(
            (
                "t_min",
                "t_min > 0 with kappa_power < 1 and weighting=mdlm (the weight "
                "κ̇/(1−κ) is infinite at t = 0; e.g. 1e-3)",
            )
        )
    return errors


def check_dfm_options(**options) -> None:
    """Raise one ValueError listing every problem ``dfm_option_errors`` finds."""
    errors = dfm_option_errors(**options)
    if errors:
        problems = "; ".join(
            f"{option}={options[option]!r} is not allowed; expected {expected}"
            for option, expected in errors
        )
        raise ValueError("dfm: " + problems)


def beta_overflow(beta_scale: float, beta_power: float) -> str | None:
    """Why β_t overflows float32 on the training times, naming the limit, or None."""
    log_beta = math.log10(beta_scale) + beta_power * math.log10(MAX_RATIO)
    if log_beta <= math.log10(MAX_BETA):
        return None
    power = (math.log10(MAX_BETA) - math.log10(beta_scale)) / math.log10(MAX_RATIO)
    fix = (
        f"beta_power ≤ {power:.3g} at beta_scale={beta_scale:g}"
        if power >= 1
        else f"beta_scale ≤ {MAX_BETA / MAX_RATIO:.3g} at beta_power=1"
    )
    return (
        f"β_t = beta_scale·(t/(1−t))^beta_power reaches 1e{log_beta:.0f} at the largest "
        f"float32 t below 1 (t/(1−t) = {MAX_RATIO:.3g}); β_t·d must stay finite in float32 "
        f"(β_t ≤ {MAX_BETA:g}): {fix}"
    )
