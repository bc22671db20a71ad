"""Train and evaluate one method at a fixed compute budget; sweep with Hydra multirun.

    python experiments/run.py                                   # purr, Fashion-MNIST (CPU default)
    python experiments/run.py -m method=cfm,dfm,dfm-metric,purr   # the default sweep (CPU)
    python experiments/run.py -m method=cfm,dfm,dfm-metric,purr seed=0,1,2     # with seeds
    python experiments/run.py -m method=dfm-mdlm,dfm eval.solver=maskgit   # masked DFM variants
    python experiments/run.py -m method=cfm,dfm,dfm-metric,purr hydra/launcher=slurm \\
        hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1   # the same on SLURM
    torchrun --nproc_per_node=8 experiments/run.py preset=imagenet_sd_xl2 \\
        data.root=/data/imagenet/train tokenizer.path=vq-f8/model.ckpt   # DDP, one node

A run resumes from ``<run dir>/checkpoints/last.pt`` when relaunched in the same directory
(``hydra.run.dir=...`` or, for a sweep, ``hydra.sweep.dir=...``); a relaunch whose training
config differs is refused, naming the keys (``'allow_changes=[optim.lr]'`` accepts a change
explicitly). SIGTERM/SIGINT checkpoint and exit with 128+signal; exit code 2 is a refused or
failed start (the message says why). Results: metrics.csv,
samples/, summary.json in each run directory; ``python analysis/convergence_plot.py`` reads
the latest sweep.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.runner.config import register  # noqa: E402

register()


def evaluation_hooks(cfg) -> list:
    """What runs after each evaluation, on rank 0: with ``live_figure=true``, the sweep's
    convergence figure is redrawn (by the analysis layer, which the runner never imports)."""
    if not cfg.live_figure:
        return []

    def live_figure(run_dir: str, row: dict) -> str | None:
        from analysis.convergence_plot import refresh

        path = refresh(os.path.dirname(os.path.abspath(run_dir)))
        return f"[figure] {path}" if path else None

    return [live_figure]


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg) -> float | None:
    from experiments.runner.checks import check_inputs, validate
    from experiments.runner.errors import RunError, RunInterrupted
    from shared.safe_load import FileLoadError

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        validate(cfg)  # a bad value or a missing input fails here, before torch is imported
        check_inputs(cfg)
        from experiments.runner.trainer import run

        summary = run(cfg, run_dir, on_evaluation=evaluation_hooks(cfg), checked=True)
    except RunInterrupted as e:  # SIGTERM/SIGINT: checkpointed; exit as the signal would
        print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except (RunError, FileLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    final = summary.get("final") or {}
    return final.get("fd_fashion") or final.get("fid_inception")


if __name__ == "__main__":
    main()
