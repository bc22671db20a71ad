"""The name a run's results are grouped under, from its config alone (no torch): the rows,
the figures, the sweep folders (``hydra.sweep.subdir`` through the ``method_label`` resolver,
and ``experiments/pack.py``) and the tracking tools use the same name."""

from __future__ import annotations

from omegaconf import OmegaConf

from methods.records import records


def method_label(cfg, sampler: bool = True) -> str:
    """The name results are grouped under: the method plus the variant options that make it
    a different baseline (``dfm-uniform``, ``dfm-mdlm``, ``dfm-maskgit``, …; each record's
    label rule). With ``sampler=False``, the trained model's name alone (the sampler goes in
    its own column)."""
    name = cfg.method.name
    rec = records().get(name)
    if rec is None:  # an unregistered name: the checks refuse it; the label is the name
        return name
    values = OmegaConf.to_container(cfg.method, resolve=True)
    solver = OmegaConf.select(cfg, "eval.solver", default=None) if sampler else None
    return rec.label(values, solver)
