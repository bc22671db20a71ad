"""What a method record is made of (torch-free): options with their allowed values, the
option dataclasses every method shares, and the :class:`Record` that names one objective.

An option is a dataclass field whose metadata says what it may hold::

    strength: float = option(0.5, within=Range(0, 1))

and, where it matters to the runner, what kind of option it is:

- ``role="compute"``: changes how a quantity is computed, not what is trained (the head's
  chunking); a relaunch may change it.
- ``label={value: part}``: the value makes another baseline, named ``<method>-<part>``
  (``source="uniform"`` → ``dfm-uniform``).
- ``added=True``: added after checkpoints were first written; a checkpoint without it
  trained at the default. ``inert_unless=(option, value)``: it changes nothing unless that
  option has that value.

The same metadata serves the start-up checks (``experiments/runner/checks.py``, which never
imports torch), the method's constructor (which refuses the same values with the same
words), the Hydra schema and the resume rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

# shared by every method: the training-time sampler, the categorical heads, the latent scale
TIME_SAMPLINGS = ("uniform", "logit_normal")
HEADS = ("chunked", "full")  # the categorical loss chunk by chunk, or from the full logit map
LATENT_SCALES = ("none", "unit")
# fixed-grid ODE solvers of the latent methods, and the adaptive one (analysis only)
LATENT_SOLVERS = ("euler", "heun", "midpoint")
ADAPTIVE_SOLVERS = ("dopri5",)
MIN_TEMPERATURE = 1e-30  # logits/τ stay finite in float32 for logits up to 1e8
DEFAULT_CHUNK = 1 << 24  # logits alive at once in a categorical head: 64 MiB of float32


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = False
    why: str = ""  # the reason for the bound, said after it

    def holds(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        ok_low = self.low is None or (v >= self.low if self.low_closed else v > self.low)
        ok_high = self.high is None or (v <= self.high if self.high_closed else v < self.high)
        return ok_low and ok_high

    def __str__(self) -> str:
        if self.high is None:
            text = f"a number {'≥' if self.low_closed else '>'} {_num(self.low)}"
        elif self.low is None:
            text = f"a number {'≤' if self.high_closed else '<'} {_num(self.high)}"
        else:
            left, right = "[" if self.low_closed else "(", "]" if self.high_closed else ")"
            text = f"a number in {left}{_num(self.low)}, {_num(self.high)}{right}"
        return f"{text}: {self.why}" if self.why else text


def option(
    default,
    *,
    choices: tuple | None = None,
    within: Range | None = None,
    role: str = "training",
    label: dict | None = None,
    added: bool = False,
    inert_unless: tuple[str, object] | None = None,
):
    """A method option: a dataclass field carrying what it may hold and what it is."""
    if role not in ("training", "compute"):
        raise ValueError(f"role must be training or compute, got {role!r}")
    meta = {
        "choices": choices,
        "within": within,
        "role": role,
        "label": label or {},
        "added": added,
        "inert_unless": inert_unless,
    }
    return field(default=default, metadata=meta)


def options_of(config) -> list[dataclasses.Field]:
    """The option fields of an options dataclass (or instance), the name left out."""
    return [f for f in dataclasses.fields(config) if f.name != "name"]


def meta(f: dataclasses.Field, key: str):
    return f.metadata.get(key) if f.metadata else None


def problems(prefix: str, errors: list, values: dict) -> ValueError:
    """One ValueError naming every (option, what it must be), in the checks' words."""
    return ValueError(
        f"{prefix}: "
        + "; ".join(f"{k}={values.get(k)!r} is not allowed; expected {why}" for k, why in errors)
    )


def value_errors(config, values: dict) -> list[tuple[str, str]]:
    """(option, what it must be) for each value of ``values`` outside its field's choices or
    range in the options dataclass ``config`` (missing values: the field's default)."""
    out = []
    for f in options_of(config):
        v = values.get(f.name, f.default)
        choices, within = meta(f, "choices"), meta(f, "within")
        if choices is not None and v not in choices:
            out.append((f.name, "one of " + ", ".join(map(str, choices))))
        elif within is not None and not within.holds(v):
            out.append((f.name, str(within)))
    return out


# ----------------------------------------------------------------------- shared options
@dataclass
class MethodOptions:
    name: str = "???"  # Hydra's MISSING: every method's options name it
    time_sampling: str = option("uniform", choices=TIME_SAMPLINGS)  # uniform on [t_min, 1)
    t_min: float = option(1e-3, within=Range(0, 1))
    t_mean: float = 0.0  # logit_normal: the mean and std of the normal before the sigmoid
    t_std: float = option(1.0, within=Range(0, None, low_closed=False))


@dataclass
class LatentOptions(MethodOptions):
    # none | unit: the flow on the standardised codebook (methods/latent_flow.py)
    latent_scale: str = option("none", choices=LATENT_SCALES, label={"unit": "unit"}, added=True)


@dataclass
class CategoricalOptions(MethodOptions):
    # chunked: loss and posterior from the head's hidden states, never the (B,K,H,W) logits;
    # full: the reference path that materialises them (methods/head.py). Same loss, other
    # rounding: a relaunch may switch.
    head: str = option("chunked", choices=HEADS, role="compute")
    head_chunk: int = option(DEFAULT_CHUNK, within=Range(1, None), role="compute")
    z_loss_weight: float = option(1e-5, within=Range(0, None))  # λ of PaLM's z-loss


# ----------------------------------------------------------------------------- records
def _no_rules(values: dict) -> list[tuple[str, str]]:
    return []


def _no_solver_rules(solver: str, values: dict) -> str | None:
    return None


@dataclass(frozen=True)
class Record:
    """One objective, everything the code outside its module needs to know of it.

    ``rules(values)`` returns the cross-option problems as (option, what it must be), given
    the options as a dict (defaults filled in); ``solver_rules(solver, values)`` why that
    sampler cannot run these options, or None. ``variants``: option overrides that make the
    other baselines of this objective, each named by its label (``{"source": "uniform"}`` is
    ``dfm-uniform``). ``implementation``: ``"module:Class"`` under ``methods``, imported only
    when a method is built.
    """

    name: str
    options: type
    implementation: str
    solvers: tuple[str, ...]
    categorical: bool
    summary: str
    variants: tuple[dict, ...] = ()
    # eval.solver value → the dataclass of that sampler's own options, set as
    # eval.<solver>.<option> (MaskGIT's schedule); never read in training
    solver_options: dict = field(default_factory=dict)
    adaptive_solvers: tuple[str, ...] = ()  # swept by analysis/nfe_sweep.py, not eval.solver
    solver_labels: dict = field(default_factory=dict)  # eval.solver value → label part
    rules: Callable[[dict], list] = _no_rules
    solver_rules: Callable[[str, dict], str | None] = _no_solver_rules
    in_demo: bool = False  # one of the objectives `make demo` trains

    def defaults(self) -> dict:
        return {f.name: f.default for f in options_of(self.options)}

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in options_of(self.options))

    def with_role(self, role: str) -> tuple[str, ...]:
        return tuple(f.name for f in options_of(self.options) if meta(f, "role") == role)

    def label(self, values: dict, solver: str | None = None) -> str:
        """The name results are grouped under: the method plus the parts of the options and
        the sampler that make it another baseline, in the options' order."""
        parts = [self.name]
        for f in options_of(self.options):
            part = (meta(f, "label") or {}).get(values.get(f.name, f.default))
            if part:
                parts.append(part)
        if solver in self.solver_labels:
            parts.append(self.solver_labels[solver])
        return "-".join(parts)

    def variant_names(self) -> dict[str, dict]:
        """{label: option overrides}: the objective itself, then its variants."""
        out = {self.name: {}}
        for overrides in self.variants:
            out[self.label({**self.defaults(), **overrides})] = dict(overrides)
        return out

    def errors(self, values: dict) -> list[tuple[str, str]]:
        """Every problem with these options, as (option, what it must be): the choices and
        ranges of each option, then the record's cross-option rules. Values of the wrong
        type are reported as out of range; unknown options are the caller's to refuse."""
        full = {**self.defaults(), **values}
        out = value_errors(self.options, full)
        bad = {name for name, _ in out}
        out += [(k, why) for k, why in self.rules(full) if k not in bad]
        return out

    def check(self, values: dict) -> None:
        """Raise one ValueError naming every problem ``errors`` finds."""
        errors = self.errors(values)
        if errors:
            raise problems(self.name, errors, {**self.defaults(), **values})


def number(v):
    """v if it is a real number (not a bool), else None: rules skip what the ranges refuse."""
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None
