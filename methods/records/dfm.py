"""Discrete flow matching on codebook indices with the mixture path: masked or uniform
source, MDLM weighting, Euler and MaskGIT samplers (``methods/dfm.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..options import MIN_TEMPERATURE, CategoricalOptions, Range, Record, number, option

MAX_KAPPA_POWER = 1e30  # κ(t) = t^a, κ̇ = a·t^(a−1): a itself must stay finite in float32
# MaskGIT's γ(r): the fraction of positions still masked after a fraction r of the steps
MASKGIT_SCHEDULES = {
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
    "sqrt": lambda r: 1.0 - math.sqrt(r),
}


@dataclass
class MaskGITOptions:
    """eval.maskgit.*: MaskGIT's unmasking schedule and confidence randomness (sampling
    only; methods/dfm_samplers.py)."""

    schedule: str = option("cosine", choices=tuple(MASKGIT_SCHEDULES))
    # Gumbel noise on the confidence × (1 − r)
    choice_temperature: float = option(4.5, within=Range(0, None))
    # confidence = log softmax(ℓ/this)[drawn code]
    confidence_temperature: float = option(
        1.0,
        within=Range(
            MIN_TEMPERATURE,
            None,
            why="logits/τ overflow float32 below it, and the draws become arbitrary "
            "instead of the argmax",
        ),
    )


@dataclass
class DFMOptions(CategoricalOptions):
    name: str = "dfm"
    # the source of the mixture path: the mask token, or a uniform draw over the codebook
    source: str = option("mask", choices=("mask", "uniform"), label={"uniform": "uniform"})
    kappa_power: float = option(
        1.0,
        within=Range(
            0,
            MAX_KAPPA_POWER,
            low_closed=False,
            high_closed=True,
            why="κ(t) = t^a and its derivative a·t^(a−1) are not finite in float32 beyond it",
        ),
    )
    # the weight of the cross-entropy: none, or MDLM's ELBO weight κ̇/(1 − κ) (masked source)
    weighting: str = option("none", choices=("none", "mdlm"), label={"mdlm": "mdlm"}, added=True)
    # weighting=mdlm: t uniform on [t_min, 1 − mdlm_eps] (w ≤ 1/ε), stratified over the batch
    # (MDLM's sampling_eps and antithetic sampling; methods/dfm.py)
    mdlm_eps: float = option(1e-3, inert_unless=("weighting", "mdlm"))
    mdlm_stratified: bool = option(True, inert_unless=("weighting", "mdlm"))


def rules(v: dict) -> list[tuple[str, str]]:
    """MDLM's weight is the masked-diffusion ELBO under uniform t on [t_min, 1 − mdlm_eps]."""
    if v["weighting"] != "mdlm":
        return []
    errors = []
    if v["source"] != "mask":
        errors.append(
            (
                "weighting",
                "none: the MDLM weight is for the masked source only (it needs source='mask')",
            )
        )
    if v["time_sampling"] != "uniform":
        errors.append(
            (
                "time_sampling",
                "uniform with weighting=mdlm: the MDLM weight is the ELBO under uniform t "
                "(another sampler needs its density divided out; use time_sampling='uniform')",
            )
        )
    t0, eps, a = number(v["t_min"]) or 0.0, number(v["mdlm_eps"]), number(v["kappa_power"])
    if eps is not None and not 0 < eps < 1 - t0:
        errors.append(("mdlm_eps", "a number in (0, 1 − t_min): t is drawn on [t_min, 1 − ε]"))
    if a is not None and a < 1 and t0 == 0:
        errors.append(
            (
                "t_min",
                "t_min > 0 with kappa_power < 1 and weighting=mdlm (the weight κ̇/(1−κ) is "
                "infinite at t = 0; e.g. 1e-3)",
            )
        )
    return errors


def solver_rules(solver: str, v: dict) -> str | None:
    if solver in ("maskgit", "euler-redraw") and v["source"] != "mask":
        return "euler: maskgit and euler-redraw unmask tokens and need method.source=mask"
    return None


RECORDS = (
    Record(
        name="dfm",
        options=DFMOptions,
        implementation="dfm:DFM",
        # discrete Euler (carry-over for the masked source); the official code's Euler that
        # redraws decoded tokens; MaskGIT (both masked source only)
        solvers=("euler", "euler-redraw", "maskgit"),
        solver_labels={"maskgit": "maskgit", "euler-redraw": "redraw"},
        solver_options={"maskgit": MaskGITOptions},
        categorical=True,
        summary="discrete flow matching, mixture path (mask or uniform source; MDLM "
        "weighting; MaskGIT sampler)",
        variants=({"source": "uniform"}, {"weighting": "mdlm"}),
        rules=rules,
        solver_rules=solver_rules,
        in_demo=True,
    ),
)
