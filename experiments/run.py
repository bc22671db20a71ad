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
explicitly); ``resume=false`` into a folder that holds a run is refused unless
``overwrite=true`` says to discard it. SIGTERM/SIGINT checkpoint and exit with 128+signal;
exit code 2 is a refused or failed start, or an OS error such as a full disk (the message
says why, naming the file). Results: metrics.csv, samples/, summary.json in each run
directory; ``python analysis/convergence_plot.py`` reads the latest sweep.
"""

from __future__ import annotations

import importlib
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from experiments.runner import config as runner_config

runner_config.register()


def evaluation_hooks(cfg) -> list:
    """What runs after each evaluation, on rank 0: with ``live_figure=true``, the callable
    that ``live_figure_hook`` names (by default the analysis layer's convergence figure,
    which the runner does not import)."""
    if not cfg.live_figure:
        return []
    module, _, name = cfg.live_figure_hook.partition(":")
    try:
        return [getattr(importlib.import_module(module), name)]
    except (ImportError, AttributeError) as e:
        raise SystemExit(
            f"error: live_figure_hook={cfg.live_figure_hook!r} names no callable ({e}); "
            "give it as module:function"
        ) from None


def launch_files(cfg) -> dict[str, str]:
    """This launch's .hydra files, as Hydra writes them (config, hydra, overrides). The config
    sets ``hydra.output_subdir: null`` so that Hydra writes none before the run directory's
    lock is taken; the runner writes these once the launch owns the directory, so a refused
    launch leaves the owner's files as they were (docs/trust.md). The config is written
    resolved, so that it shows the rate ``${method_lr:}`` gave this run."""
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    return {
        "config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg) -> float | None:
    # main refers to runner_config, so a submitit worker unpickling it imports that module,
    # which registers the resolvers the run folder's name needs
    runner_config.register_resolvers()
    from experiments.runner.checks import check_inputs, validate
    from experiments.runner.errors import RunError, RunInterrupted
    from shared.io import os_error_line
    from shared.safe_load import FileLoadError

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        validate(cfg)  # a bad value or a missing input fails here, before torch is imported
        check_inputs(cfg)
        from experiments.runner.trainer import run

        summary = run(
            cfg,
            run_dir,
            on_evaluation=evaluation_hooks(cfg),
            checked=True,
            launch_files=launch_files(cfg),
        )
    except RunInterrupted as e:  # SIGTERM/SIGINT: checkpointed; exit as the signal would
        print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except (RunError, FileLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # no space, read-only folder, permission: the run's files are intact
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    final = summary.get("final") or {}
    return final.get("fd_fashion") or final.get("fid_inception")


def output_folder_problem(argv: list[str]) -> str | None:
    """Why the run (or sweep) folder a launch names cannot be written, or None. Hydra creates
    that folder before any code here runs and reports a failure as a traceback, so the launch
    checks it first: the nearest existing folder on its path must be a writable folder."""
    import errno
    import os

    from shared.io import os_error_line

    named = [
        a.partition("=")[2] for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
    ]
    for path in [p for p in named if p] or ["outputs"]:
        probe = os.path.abspath(path)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        code = None
        if not os.path.isdir(probe):
            code = errno.ENOTDIR
        elif os.statvfs(probe).f_flag & os.ST_RDONLY:
            code = errno.EROFS
        elif not os.access(probe, os.W_OK | os.X_OK):
            code = errno.EACCES
        if code is not None:
            return os_error_line(OSError(code, os.strerror(code), probe))
    return None


if __name__ == "__main__":
    problem = output_folder_problem(sys.argv[1:])
    if problem:
        print(f"error: cannot create the run folder: {problem}", file=sys.stderr)
        raise SystemExit(2)
    main()
