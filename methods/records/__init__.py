"""The registry of objectives: every module in this folder defines ``RECORDS``, a tuple of
:class:`methods.options.Record`, and is found here by listing the folder. Adding an
objective adds a module here (and its implementation); nothing else lists it.

Torch-free: the start-up checks, the Hydra schema, the resume rules, the run labels and the
analysis scripts read the records without importing a method.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ..options import Record, meta, options_of


@cache
def _registry() -> dict[str, Record]:
    found: dict[str, Record] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for record in getattr(module, "RECORDS", ()):
            if record.name in found:
                raise RuntimeError(
                    f"method {record.name!r} is registered twice ({info.name} and another "
                    "module under methods/records)"
                )
            found[record.name] = record
    _check_shared_options(found)
    return found


def _check_shared_options(found: dict[str, Record]) -> None:
    """Options of the same name in several records must mean the same thing (default,
    role, resume rules): the runner's key lists are unions over the records by name."""
    seen: dict[str, tuple] = {}
    for rec in found.values():
        for f in options_of(rec.options):
            facts = (f.default, meta(f, "role"), meta(f, "added"), meta(f, "inert_unless"))
            if seen.setdefault(f.name, (rec.name, facts))[1] != facts:
                raise RuntimeError(
                    f"option {f.name!r} means one thing in {seen[f.name][0]} and another in "
                    f"{rec.name} (default, role or resume rule); give one of them another name"
                )


def records() -> dict[str, Record]:
    """{name: record} for every registered objective, in a fixed order (the modules' names,
    then each module's order)."""
    return dict(_registry())


def record(name: str) -> Record:
    """The record of ``name``; ValueError listing the registered ones if there is none."""
    found = _registry()
    if name not in found:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(found)}")
    return found[name]


def variants() -> dict[str, tuple[str, dict]]:
    """{label: (method name, option overrides)}: every objective and every variant the
    records name (``dfm``, ``dfm-uniform``, ``dfm-mdlm``, …), each once."""
    return {
        label: (r.name, overrides)
        for r in _registry().values()
        for label, overrides in r.variant_names().items()
    }


def solvers() -> dict[str, tuple[str, ...]]:
    return {name: r.solvers for name, r in _registry().items()}


def categorical() -> tuple[str, ...]:
    """The objectives whose network outputs a categorical posterior (τ tempers it)."""
    return tuple(name for name, r in _registry().items() if r.categorical)
