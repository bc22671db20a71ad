"""The name a run's results are grouped under, from its config alone (no torch): the rows,
the figures, the sweep folders (``hydra.sweep.subdir`` through the ``method_label`` resolver,
and ``experiments/pack.py``) and the tracking tools use the same name."""

from __future__ import annotations

from omegaconf import OmegaConf


def method_label(cfg, sampler: bool = True) -> str:
    """The name results are grouped under: the method plus the variant options that make it
    a different baseline (``dfm-uniform``, ``dfm-mdlm``, ``dfm-maskgit``, …). With
    ``sampler=False``, the trained model's name alone (the sampler goes in its own column)."""
    parts = [cfg.method.name]
    if OmegaConf.select(cfg, "method.source", default=None) == "uniform":
        parts.append("uniform")
    if OmegaConf.select(cfg, "method.weighting", default=None) == "mdlm":
        parts.append("mdlm")
    if OmegaConf.select(cfg, "method.latent_scale", default=None) == "unit":
        parts.append("unit")
    solver = OmegaConf.select(cfg, "eval.solver", default=None) if sampler else None
    if solver == "maskgit":
        parts.append("maskgit")
    elif solver == "euler-redraw":  # the official code's masked Euler (redraws decoded tokens)
        parts.append("redraw")
    return "-".join(parts)
