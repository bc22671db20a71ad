"""Continuous flow matching on codebook latents: velocity and endpoint (``methods/cfm.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import ADAPTIVE_SOLVERS, LATENT_SOLVERS, LatentOptions, Record


@dataclass
class CFMOptions(LatentOptions):
    name: str = "cfm"


@dataclass
class CFMEndpointOptions(LatentOptions):
    name: str = "cfm-endpoint"


RECORDS = (
    Record(
        name="cfm",
        options=CFMOptions,
        implementation="cfm:CFM",
        solvers=LATENT_SOLVERS,
        adaptive_solvers=ADAPTIVE_SOLVERS,
        categorical=False,
        summary="continuous flow matching, velocity MSE",
        in_demo=True,
    ),
    Record(
        name="cfm-endpoint",
        options=CFMEndpointOptions,
        implementation="cfm:CFMEndpoint",
        solvers=LATENT_SOLVERS,
        adaptive_solvers=ADAPTIVE_SOLVERS,
        categorical=False,
        summary="continuous flow matching, endpoint MSE",
    ),
)
