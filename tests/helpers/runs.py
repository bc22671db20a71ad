"""Tiny training runs for the tests: the overrides that make a run take seconds, the config
composer, an in-process run and the env's index shards."""

import os

from shared.paths import REPO_ROOT

TINY = [
    "backbone=dit_nano_1",
    "budget.train_flops=null",
    "budget.images=128",
    "budget.batch_size=16",
    "eval.points=2",
    "eval.num_samples=20",
    "eval.batch_size=20",
    "eval.steps=4",
    "eval.reference_n=32",
    "eval.grid_samples=10",
    "checkpoint_every=3",
    "log_every=2",
    "progress=false",
    "deterministic=true",  # exact comparisons hold on CUDA too
    "optim.precision=auto",  # resolved per machine: the relaunch rules test that path
]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from experiments.runner.config import register

    register()
    with initialize_config_dir(str(REPO_ROOT / "experiments" / "conf"), version_base=None):
        return hydra_compose("config", overrides=overrides)


def run_in_process(env, overrides, run_dir, monkeypatch):
    from experiments.run import evaluation_hooks
    from experiments.runner.trainer import run

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    cfg = compose(env["overrides"] + overrides)
    return run(cfg, str(run_dir), on_evaluation=evaluation_hooks(cfg))


def ensure_latents(env) -> str:
    """The env's index shards (extracted on first use, like a run does); returns the folder."""
    from experiments.runner.build import Dist, load_tokenizer, prepare_latents

    cfg = compose(env["overrides"] + ["method=cfm"])
    old = os.environ.get("VQBENCH_CACHE")
    os.environ["VQBENCH_CACHE"] = env["cache"]
    try:
        return prepare_latents(cfg, load_tokenizer(cfg), Dist()).folder
    finally:
        os.environ.pop("VQBENCH_CACHE") if old is None else os.environ.update(VQBENCH_CACHE=old)
