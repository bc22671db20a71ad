"""Loading files a user points at without ever executing code from them.

Every ``.pt``/``.ckpt`` here is read with ``torch.load(..., weights_only=True)``: tensors,
containers and primitive values only; a pickle that asks for any other global (the way a
``__reduce__`` payload runs code) is refused, and the error names the file and the globals.

Public tokenizer checkpoints carry a few extra pickled objects next to their weights:
Lightning's callback classes (SD vq-f8's ``model.ckpt``), ``argparse.Namespace`` (LlamaGen's
training args), numpy scalars. Those names, and only those, are in :data:`PRETRAINED_ALLOWLIST`;
each is mapped to :class:`Inert`, a class that stores nothing and runs nothing, so the
objects load as placeholders and the state dict loads as tensors. Any other global is refused.
"""

from __future__ import annotations

import os
import pickle

# Globals seen in public first-stage / tokenizer checkpoints beside the weights. They are
# never imported: each name is bound to ``Inert``.
PRETRAINED_ALLOWLIST = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
)


class FileLoadError(ValueError):
    """A file cannot be loaded (unreadable, truncated, not a torch file, or unsafe)."""


class UnsafeFileError(FileLoadError):
    """A file would need code execution to load."""


class Inert:
    """Stands in for an allowlisted global: accepts any arguments and state, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return "<inert placeholder>"


def _stubs(names) -> list[tuple[type, str]]:
    return [(Inert, name) for name in names]


def load_torch_file(
    path: str | os.PathLike, what: str, allow: tuple[str, ...] = (), map_location="cpu"
):
    """``torch.load(path, weights_only=True)`` with the globals in ``allow`` bound to
    :class:`Inert`. Refuses (``UnsafeFileError`` naming ``path``) anything else."""
    import torch  # here, so that the error classes above import without torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(_stubs(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable torch archive
            found = []
        extra = [g for g in found if g not in allow]
        detail = (
            f"it asks to unpickle {', '.join(extra)}, which could run code"
            if extra
            else f"it cannot be read safely ({str(e).splitlines()[0]})"
        )
        raise UnsafeFileError(
            f"refusing to load {what} {path}: {detail}. Only tensors, containers and plain "
            "values are loaded from files; if you produced this file yourself, re-save its "
            "state dict (torch.save(model.state_dict(), ...)) or as safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise FileLoadError(
            f"cannot read {what} {path}: {str(e).splitlines()[0]} (truncated or not a torch file?)"
        ) from None
