"""Purrception: a categorical posterior over the codebook on the latent path, CE loss
(``methods/purrception.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import ADAPTIVE_SOLVERS, LATENT_SOLVERS, CategoricalOptions, LatentOptions, Record


@dataclass
class PurrOptions(CategoricalOptions, LatentOptions):
    name: str = "purr"


RECORDS = (
    Record(
        name="purr",
        options=PurrOptions,
        implementation="purrception:Purrception",
        solvers=LATENT_SOLVERS,
        adaptive_solvers=ADAPTIVE_SOLVERS,
        categorical=True,
        summary="Purrception: categorical posterior over the codebook, CE loss",
        in_demo=True,
    ),
)
