"""Experiment trackers researchers already watch: TensorBoard and Weights & Biases.

``logger=tensorboard`` writes event files to ``<run>/tensorboard/``. ``logger=wandb`` writes a
W&B run to ``<run>/wandb/``, offline unless ``WANDB_MODE`` says otherwise (``wandb sync
<run>/wandb/offline-run-…`` uploads it later), so nothing needs a network. Each gets every
log line (``train/loss``, ``train/lr``, ``train/images_per_s``, ``train/flops``) and the
numbers of every evaluation row (``eval/fd_fashion``, ``eval/train_flops``, …) at their
optimiser step, with the run's config and identity. Both packages are optional and imported
only when asked for (``pip install tensorboard`` / ``pip install wandb``).
"""

from __future__ import annotations

import hashlib
import math
import os

from .errors import RunError

LOGGERS = ("none", "tensorboard", "wandb")
# an evaluation row's fields that name the run or the step, not a measurement
ROW_LABELS = ("method", "seed", "step", "total_steps", "lr_schedule", "decay_from")


class Tracker:
    """The no-op tracker (``logger=none``)."""

    def log(self, step: int, values: dict) -> None:
        pass

    def log_row(self, row: dict) -> None:
        """An evaluation row: its finite numbers, as ``eval/<field>`` at the row's step."""
        values = {
            f"eval/{k}": float(v)
            for k, v in row.items()
            if k not in ROW_LABELS
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        self.log(int(row["step"]), values)

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, run_dir: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RunError(
                f"logger=tensorboard needs the tensorboard package ({e}): pip install tensorboard"
            ) from None
        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))
        # the config as a text panel, one key per line (indented: TensorBoard renders Markdown)
        text = "\n".join(f"    {k} = {v!r}" for k, v in sorted(config.items()))
        self.writer.add_text("config", text, 0)
        self.writer.flush()

    def log(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a preempted job keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandB(Tracker):
    def __init__(self, run_dir: str, config: dict, name: str, project: str):
        try:
            import wandb
        except ImportError as e:
            raise RunError(
                f"logger=wandb needs the wandb package ({e}): pip install wandb"
            ) from None
        mode = os.environ.get("WANDB_MODE", "offline")
        # one W&B run per run folder: a relaunch that resumes the folder continues it online
        run_id = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:16]
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            config=config,
            dir=run_dir,
            mode=mode,
            resume="allow" if mode == "online" else None,
        )

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(logger: str, run_dir: str, config: dict, name: str, project: str) -> Tracker:
    """The tracker ``logger`` names, for the main rank of one run."""
    if logger == "tensorboard":
        return TensorBoard(run_dir, config)
    if logger == "wandb":
        return WandB(run_dir, config, name, project)
    return Tracker()
