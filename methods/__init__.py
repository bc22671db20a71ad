"""The objectives behind one interface: ``methods.build(name, codebook=E, **cfg)``.

cfm           continuous flow matching, velocity MSE
cfm-endpoint  continuous flow matching, endpoint MSE
dfm           discrete flow matching, mixture path (source: mask | uniform; MDLM weighting,
              MaskGIT sampler)
dfm-metric    discrete flow matching, metric-induced path over codebook distances
purr          Purrception: categorical posterior over the codebook, CE loss
"""

from __future__ import annotations

from .catalog import SOLVERS

# the classes load on first use (PEP 562), so that ``methods.catalog`` (names, samplers,
# limits: what the start-up checks read) never imports torch
_EXPORTS = {
    "LossOutput": "base",
    "Method": "base",
    "SampleOutput": "base",
    "TimeSampler": "base",
    "guided_forward": "base",
    "nearest_code": "base",
    "CFM": "cfm",
    "CFMEndpoint": "cfm",
    "DFM": "dfm",
    "MetricDFM": "dfm_metric",
    "Purrception": "purrception",
    "velocity_from_posterior": "purrception",
}
_CLASSES = {
    "cfm": "CFM",
    "cfm-endpoint": "CFMEndpoint",
    "dfm": "DFM",
    "dfm-metric": "MetricDFM",
    "purr": "Purrception",
}


def __getattr__(name: str):
    import importlib

    if name == "METHODS":
        return {key: __getattr__(cls) for key, cls in _CLASSES.items()}
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(name: str, codebook, **cfg):
    """A method by name: ``build("purr", codebook=E, **options)``."""
    methods = __getattr__("METHODS")
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(methods)}")
    try:
        return methods[name](codebook, **cfg)
    except TypeError as e:
        raise TypeError(f"bad option for method {name!r}: {e}") from e


__all__ = ["METHODS", "SOLVERS", "build", *_EXPORTS]
