"""The shared DiT backbone. Its names load on first use, so that importing
``shared.backbone.presets`` (preset names, no torch) does not import torch."""

__all__ = ["NULL_LABEL", "DiT", "DiT_models", "build_dit"]


def __getattr__(name: str):
    if name in __all__:
        from . import dit

        return getattr(dit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
