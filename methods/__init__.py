"""The objectives behind one interface: ``methods.build(name, codebook=E, **cfg)``.

cfm           continuous flow matching, velocity MSE
cfm-endpoint  continuous flow matching, endpoint MSE
dfm           discrete flow matching, mixture path (source: mask | uniform; MDLM weighting,
              MaskGIT sampler)
dfm-metric    discrete flow matching, metric-induced path over codebook distances
purr          Purrception: categorical posterior over the codebook, CE loss
"""

from __future__ import annotations

from .base import LossOutput, Method, SampleOutput, TimeSampler, guided_forward, nearest_code
from .cfm import CFM, CFMEndpoint
from .dfm import DFM
from .dfm_metric import MetricDFM
from .purrception import Purrception, velocity_from_posterior

METHODS = {
    "cfm": CFM, "cfm-endpoint": CFMEndpoint, "dfm": DFM, "dfm-metric": MetricDFM,
    "purr": Purrception,
}  # fmt: skip


def build(name: str, codebook, **cfg) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    try:
        return METHODS[name](codebook, **cfg)
    except TypeError as e:
        raise TypeError(f"bad option for method {name!r}: {e}") from e


__all__ = [
    "METHODS", "build", "Method", "LossOutput", "SampleOutput", "TimeSampler", "guided_forward",
    "nearest_code", "velocity_from_posterior", "CFM", "CFMEndpoint", "DFM", "MetricDFM",
    "Purrception",
]  # fmt: skip
