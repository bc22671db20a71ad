"""The shared DiT backbone."""

from .dit import NULL_LABEL, DiT, DiT_models, build_dit

__all__ = ["NULL_LABEL", "DiT", "DiT_models", "build_dit"]
