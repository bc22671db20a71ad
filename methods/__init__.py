"""The objectives behind one interface: ``methods.build(name, codebook=E, **options)``.

Every objective has a record (``methods/records/``): its name, options, samplers and label
rule, the one place they are written. ``methods.records.records()`` lists them;
``python -c "import methods; print(methods.summary())"`` prints one line each.
"""

from __future__ import annotations

# the classes load on first use (PEP 562), so that the records (names, options, samplers,
# limits: what the start-up checks read) never import torch
_EXPORTS = {
    "LossOutput": "base",
    "Method": "base",
    "SampleOutput": "base",
    "TimeSampler": "base",
    "guided_forward": "base",
    "nearest_code": "base",
    "velocity_from_posterior": "purrception",
}


def implementation(name: str):
    """The class of the objective ``name`` (imports its module, and torch)."""
    import importlib

    from .records import record

    module, cls = record(name).implementation.split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def __getattr__(name: str):
    import importlib

    if name == "METHODS":
        from .records import records

        return {key: implementation(key) for key in records()}
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(name: str, codebook, **options):
    """A method by name: ``build("purr", codebook=E, z_loss_weight=0)``; the options are its
    record's options dataclass's fields (an unknown one is a TypeError naming it)."""
    import dataclasses

    from .records import record

    rec = record(name)
    known = set(rec.option_names())
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"bad option for method {name!r}: {', '.join(unknown)} (its options: "
            f"{', '.join(sorted(known))})"
        )
    values = dataclasses.replace(rec.options(), **options)
    return implementation(name)(codebook, values)


def summary() -> str:
    from .records import records

    return "\n".join(f"{name:14s}{r.summary}" for name, r in records().items())


__all__ = ["METHODS", "build", "implementation", "summary", *_EXPORTS]
