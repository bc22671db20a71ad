"""What ``make demo`` is about to run, with a measured estimate for each stage.

    python3 experiments/demo_plan.py SWEEP_DIR [OVERRIDES ...]    # as the Makefile calls it

Standard library only: it runs before the venv exists. The estimates were measured on the
project's 2-core CPU machine (docs/running.md) and scale with the overrides the demo passes
(``budget.train_flops``, ``eval.points``); stages whose output already exists are marked
"done" and cost nothing.
"""

from __future__ import annotations

import glob
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("VQBENCH_CACHE") or os.path.join(REPO, "cache")
DEFAULT_FLOPS, DEFAULT_POINTS = 8e13, 7  # the default protocol (experiments/runner/config.py)
FASHION = os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist")

# seconds, measured on the 2-core machine from an empty folder (`make demo`, 2026-12-06: fp32
# training and evaluation, DiT-Nano/1); see docs/running.md ("make demo")
MEASURED = {
    "venv": 34,  # venv, uv install of the pinned wheels (warm uv cache), FID wheel download
    "data": 10,  # apt-get install dataset-fashion-mnist
    "verify": 5,  # sha256 of the shipped tokenizer and fd_fashion network, Inception weights
    # encode the 60k training images into index shards (≈ 40 s), plus the bytecode the first
    # processes of a new venv compile (≈ 40 s)
    "extract": 80,
    "start": 8,  # a run's start-up: imports, shards, model (+ the baselines, once: ≈ 10 s)
    # training alone at the default 8e13 FLOPs (fp32, one process on both cores: the demo's
    # 5e12-FLOP training wall × 16), and one evaluation (1000 samples, 20 Euler steps)
    "train": {"cfm": 1290, "dfm": 1100, "purr": 1290},
    "eval": 10,
    # the shipped converged weights: unpack, purr's temperature sweep at 3 τ × 1000 samples,
    # entropy maps of purr and dfm; and the demo sweep's figures
    "shipped": 45,
    "figures": 20,
}
SHIPPED = "shipped converged weights (seed 0, 8e13)"


def overrides(args: list[str]) -> tuple[float, int]:
    """(training FLOPs, evaluation points) of a run under these Hydra overrides."""
    flops, points = DEFAULT_FLOPS, DEFAULT_POINTS
    for a in args:
        key, _, value = a.partition("=")
        if key == "budget.train_flops":
            flops = float(value)
        elif key == "eval.points":
            points = int(value)
    return flops, points


def demo_methods(args: list[str]) -> list[str]:
    """The methods of the sweep (``method=a,b,c``, as the Makefile passes the records' demo
    methods; without it, the measured ones)."""
    for a in args:
        key, _, value = a.partition("=")
        if key == "method":
            return value.split(",")
    return list(MEASURED["train"])


def run_seconds(method: str, flops: float, points: int) -> float:
    # a method not measured here is estimated at the slowest measured one
    train = MEASURED["train"].get(method, max(MEASURED["train"].values()))
    return MEASURED["start"] + train * flops / DEFAULT_FLOPS + (points * MEASURED["eval"])


def fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def stages(sweep: str, args: list[str]) -> list[tuple[str, float, bool]]:
    venv_done = bool(glob.glob(os.path.join(REPO, ".venv", ".deps-*")))
    data_done = os.path.isfile(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
    shards_done = bool(
        glob.glob(os.path.join(CACHE, "latents", "fashion-vq-*", "*", "manifest.json"))
    )
    out = [
        ("venv with the pinned dependencies", MEASURED["venv"], venv_done),
        ("Fashion-MNIST from Debian (apt)", MEASURED["data"], data_done),
        ("check the shipped tokenizer and fd_fashion network (sha256)", MEASURED["verify"], False),
        ("index shards of the 60k training images (cached)", MEASURED["extract"], shards_done),
    ]
    flops, points = overrides(args)
    for m in demo_methods(args):
        done = any(_finished(p) for p in glob.glob(os.path.join(sweep, f"*_{m}_seed0")))
        name = f"train + evaluate {m} (DiT-Nano/1, {flops / 1e12:g} TFLOP, {points} evals)"
        out.append((name, run_seconds(m, flops, points), done))
    out.append(("figures of the demo sweep: convergence, samples", MEASURED["figures"], False))
    out.append((f"{SHIPPED}: τ sweep, entropy maps", MEASURED["shipped"], False))
    return out


def _finished(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return '"status": "finished"' in f.read()
    except OSError:
        return False


def main(argv: list[str]) -> float:
    sweep, args = argv[0], argv[1:]
    flops, points = overrides(args)
    plan = stages(sweep, args)
    total = sum(s for _, s, done in plan if not done)
    print("==> make demo will run (estimates measured on a 2-core CPU):")
    for i, (name, seconds, done) in enumerate(plan, 1):
        print(f"  {i}. {name:<66} {'done' if done else '≈ ' + fmt(seconds)}")
    first = (
        sum(s for name, s, done in plan[:4] if not done)
        + MEASURED["start"]
        # the first evaluation, at 2^-(points-1) of the budget (log-spaced)
        + (MEASURED["train"]["cfm"] * flops / DEFAULT_FLOPS / 2 ** (points - 1))
        + MEASURED["eval"]
    )
    print(
        f"    total ≈ {fmt(total)}; the first figure, {sweep}/analysis/convergence.png, "
        f"appears after ≈ {fmt(first)} and is redrawn after every evaluation"
    )
    if (flops, points) != (DEFAULT_FLOPS, DEFAULT_POINTS):
        full = sum(run_seconds(m, DEFAULT_FLOPS, DEFAULT_POINTS) for m in demo_methods(args))
        print(
            f"    demo scale: {flops / 1e12:g} TFLOP and {points} evaluations per run, the "
            f"default protocol's first evaluations; the protocol itself ({DEFAULT_FLOPS / 1e12:g} "
            f"TFLOP, {DEFAULT_POINTS} evals) takes ≈ {fmt(full)} of runs: make demo DEMO_ARGS="
        )
    sys.stdout.flush()
    return total


if __name__ == "__main__":
    main(sys.argv[1:])
