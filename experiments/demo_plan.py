"""What ``make demo`` is about to run, with a measured estimate for each stage.

Standard library only: it runs before the venv exists. The estimates were measured on the
project's 2-core CPU machine (see README); stages whose output already exists are marked
"done" and cost nothing.
"""

from __future__ import annotations

import glob
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("VQBENCH_CACHE") or os.path.join(REPO, "cache")
SWEEP = os.path.join(REPO, "outputs", "sweeps", "fashion-default")
FASHION = os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist")

# seconds, measured on the 2-core machine from an empty folder (2026-11-30: bf16 training, as
# optim.precision=auto gives on this CPU; fp32 evaluation; venv, shards and figures again on
# 2026-12-03); see the README's opening paragraph
MEASURED = {
    "venv": 32,  # uv install of the pinned wheels (warm uv cache) + the FID wheel download
    "data": 10,  # apt-get install dataset-fashion-mnist
    "verify": 5,  # sha256 of the shipped tokenizer and fd_fashion network, Inception weights
    "extract": 55,  # encode the 60k training and 10k test images into index shards
    # one 20-TFLOP run: ≈ 150–165 s of training, 4 evaluations of ≈ 22 s, start-up
    "run": {"cfm": 268, "dfm": 242, "dfm-metric": 237, "purr": 255},
    "first_eval": 75,  # from the start of the first run to the first point of the figure
    "figures": 245,  # temperature sweep of 3 runs at 3 τ (≈ 230 s), entropy maps, grids
}


def fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def stages() -> list[tuple[str, float, bool]]:
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
    for m in ("cfm", "dfm", "dfm-metric", "purr"):
        done = any(_finished(p) for p in glob.glob(os.path.join(SWEEP, f"*_{m}_seed0")))
        out.append((f"train + evaluate {m} (DiT-Mini/1, 20 TFLOP, 4 evaluations)",
                    MEASURED["run"][m], done))  # fmt: skip
    out.append(("figures: convergence, temperature sweep, entropy maps, samples",
                MEASURED["figures"], False))  # fmt: skip
    return out


def _finished(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return '"status": "finished"' in f.read()
    except OSError:
        return False


def main() -> float:
    plan = stages()
    total = sum(s for _, s, done in plan if not done)
    print("==> make demo will run (estimates measured on a 2-core CPU):")
    for i, (name, seconds, done) in enumerate(plan, 1):
        print(f"  {i}. {name:<66} {'done' if done else '≈ ' + fmt(seconds)}")
    first = sum(s for name, s, done in plan[:4] if not done) + MEASURED["first_eval"]
    print(f"    total ≈ {fmt(total)}; the first figure, {SWEEP}/analysis/convergence.png, "
          f"appears after ≈ {fmt(first)} and is redrawn after every evaluation")  # fmt: skip
    sys.stdout.flush()
    return total


if __name__ == "__main__":
    main()
