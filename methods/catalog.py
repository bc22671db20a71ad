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

# the methods whose network outputs a categorical posterior over the codebook (τ tempers it)
CATEGORICAL = ("dfm", "dfm-metric", "purr")

MIN_TEMPERATURE = 1e-30  # logits/τ stay finite in float32 for logits up to 1e8
MAX_KAPPA_POWER = 1e30  # κ(t) = t^a, κ̇ = a·t^(a−1): a itself must stay finite in float32

# β_t·d must stay finite in float32 (3.4e38) at every training time, up to the largest float32
# t below 1, where t/(1 − t) = MAX_RATIO; distances have mean 1, and MAX_BETA leaves room for
# distances up to 3000× their mean. (Beyond it −β·d is −inf, 0·inf is NaN at the data code, and
# corrupted tokens silently become code K − 1.)
MAX_BETA = 1e35
MAX_RATIO = 2.0**24 - 1


def beta_overflow(beta_scale: float, beta_power: float) -> str | None:
    """Why β_t overflows float32 on the training times, naming the limit, or None."""
    log_beta = math.log10(beta_scale) + beta_power * math.log10(MAX_RATIO)
    if log_beta <= math.log10(MAX_BETA):
        return None
    power = (math.log10(MAX_BETA) - math.log10(beta_scale)) / math.log10(MAX_RATIO)
    fix = (f"beta_power ≤ {power:.3g} at beta_scale={beta_scale:g}" if power >= 1
           else f"beta_scale ≤ {MAX_BETA / MAX_RATIO:.3g} at beta_power=1")  # fmt: skip
    return (f"β_t = beta_scale·(t/(1−t))^beta_power reaches 1e{log_beta:.0f} at the largest "
            f"float32 t below 1 (t/(1−t) = {MAX_RATIO:.3g}); β_t·d must stay finite in float32 "
            f"(β_t ≤ {MAX_BETA:g}): {fix}")  # fmt: skip
