"""Discrete flow matching on the metric-induced path over codebook distances
(``methods/dfm_metric.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..options import CategoricalOptions, Range, Record, option

DISTANCES = ("l2", "sqeuclidean")  # d(·, x1) between codes
# β_t·d must stay finite in float32 (3.4e38) at every training time, up to the largest float32
# t below 1, where t/(1 − t) = MAX_RATIO; distances have mean 1, and MAX_BETA leaves room for
# distances up to 3000× their mean. (Beyond it −β·d is −inf, 0·inf is NaN at the data code, and
# corrupted tokens silently become code K − 1.)
MAX_BETA = 1e35
MAX_RATIO = 2.0**24 - 1


@dataclass
class MetricDFMOptions(CategoricalOptions):
    name: str = "dfm-metric"
    # β_t = beta_scale · (t/(1−t))^beta_power
    beta_scale: float = option(10.0, within=Range(0, None, low_closed=False))
    beta_power: float = option(1.0, within=Range(1, None, why="β̇_0 is infinite below 1"))
    # between codebook vectors, divided by their mean over distinct pairs
    distance: str = option("l2", choices=DISTANCES)


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


def rules(v: dict) -> list[tuple[str, str]]:
    c, a = v["beta_scale"], v["beta_power"]
    fields = MetricDFMOptions.__dataclass_fields__
    if not (
        fields["beta_scale"].metadata["within"].holds(c)
        and fields["beta_power"].metadata["within"].holds(a)
    ):
        return []
    overflow = beta_overflow(c, a)
    return [("beta_power" if a > 1 else "beta_scale", overflow)] if overflow else []


RECORDS = (
    Record(
        name="dfm-metric",
        options=MetricDFMOptions,
        implementation="dfm_metric:MetricDFM",
        solvers=("euler",),
        categorical=True,
        summary="discrete flow matching, metric-induced path over codebook distances",
        rules=rules,
    ),
)
