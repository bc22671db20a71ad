"""GIDD: discrete flow matching on the masked–uniform hybrid path of von Rütte et al. 2025
(``methods/gidd.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import CategoricalOptions, Range, Record, option


@dataclass
class GIDDOptions(CategoricalOptions):
    name: str = "gidd"
    # GIDD's p_u: at t = 1/2 a share p_u·(K − 1)/(K + 1) of all positions hold a uniform
    # code (0 is a masked path, κ(t) = t^γ/(t^γ + (1 − t)^γ))
    p_uniform: float = option(0.1, within=Range(0, 1))
    gamma: float = option(1.0, within=Range(0, None, low_closed=False))  # GIDD's γ


RECORDS = (
    Record(
        name="gidd",
        options=GIDDOptions,
        implementation="gidd:GIDD",
        solvers=("euler",),
        categorical=True,
        summary="discrete flow matching, GIDD's masked–uniform hybrid path",
    ),
)
