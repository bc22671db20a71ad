"""Trained runs shipped in the repository: EMA weights as safetensors, sha256-checked.

    python experiments/shipped_runs.py                      # verify and unpack every one
    python experiments/shipped_runs.py --ship RUN [RUN …]   # maintainers: ship these runs

Each shipped run is ``shared/artifacts/runs/<name>/`` (``ema.safetensors`` and ``run.json``:
the run's config, step, budget, identity, summary and metrics rows), listed with every file's
sha256 in ``shared/artifacts/manifest.json`` under ``runs/<name>``. Unpacking checks the
checksums and writes an ordinary run folder, ``outputs/shipped/<name>/`` (a checkpoint holding
the EMA weights, ``summary.json``, ``metrics.csv``), so ``experiments/sample.py``,
``experiments/evaluate.py``, the τ/NFE/guidance sweeps and the entropy maps take it as they
take any finished run, with no training. The unpacked checkpoint has no optimizer state: it
samples, it does not resume training.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os

from shared import artifacts
from shared.io import atomic_torch_save, atomic_write_text

RUNS = "runs"
OUT = os.path.join("outputs", "shipped")


def names() -> list[str]:
    """The shipped runs, by name."""
    return sorted(k.split("/", 1)[1] for k in artifacts.manifest() if k.startswith(RUNS + "/"))


def run_name(summary: dict) -> str:
    """``<size>-<method>-<budget>-seed<k>``, e.g. ``nano1-purr-4e13-seed0``."""
    size = summary["backbone"].removeprefix("DiT-").replace("/", "").lower()
    return f"{size}-{summary['method']}-{summary['budget_train_flops']:.0e}-seed{summary['seed']}"


def ship(run_dir: str) -> str:
    """Copy a finished run's EMA weights and records into shared/artifacts/runs/<name>."""
    from safetensors.torch import save_file

    from experiments.runner import checkpoint

    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    if summary.get("status") != "finished":
        raise SystemExit(f"error: {run_dir} is {summary.get('status')}, not finished")
    ck = checkpoint.load(os.path.join(run_dir, "checkpoints", "last.pt"))
    name = run_name(summary).replace("+", "")
    folder = artifacts.ARTIFACTS_DIR / RUNS / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ck["ema"].items()}, str(folder / "ema.safetensors"))
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    record = {
        "config": ck["config"],
        "progress": ck["progress"],
        "total_steps": ck["total_steps"],
        "identity": ck["identity"],
        "summary": {k: v for k, v in summary.items() if k != "launches"},
        "metrics": rows,
    }
    atomic_write_text(str(folder / "run.json"), json.dumps(record, indent=1) + "\n")
    entries = artifacts.manifest()
    files = artifacts.weight_files(folder)
    final = rows[-1]
    entries[f"{RUNS}/{name}"] = {
        "digest": artifacts.folder_digest(folder),
        "recorded": {
            "fd_fashion": float(final["fd_fashion"]),
            "step": int(final["step"]),
            "train_flops": float(final["train_flops"]),
            "num_samples": int(final["num_samples"]),
        },
        "files": files,
        "bytes": sum((folder / rel).stat().st_size for rel in files),
        "built_by": f"python experiments/shipped_runs.py --ship {run_dir}",
        "built_on": datetime.date.today().isoformat(),
    }
    atomic_write_text(str(artifacts.MANIFEST), json.dumps(entries, indent=2) + "\n")
    return name


def unpack(name: str, out_root: str = OUT) -> str:
    """Check shipped run ``name``'s files and write it as a run folder; returns the folder."""
    from safetensors.torch import load_file

    from experiments.runner import checkpoint
    from experiments.runner.metrics_file import csv_text, write_csv

    folder = artifacts.shipped(f"{RUNS}/{name}")  # sha256 of every file, or ArtifactError
    with open(os.path.join(folder, "run.json")) as f:
        record = json.load(f)
    tokenizer = artifacts.shipped_tokenizer_name(record["config"].get("tokenizer.path"))
    if tokenizer:  # trained on a shipped tokenizer: it must be the one shipped now
        from shared.tokenizers import shipped_fashion_tokenizer

        now = shipped_fashion_tokenizer(tokenizer).tokenizer_id
        then = record["identity"]["tokenizer"]
        if now != then:
            raise artifacts.ArtifactError(
                f"shipped run {name} was trained on tokenizer {then}, the shipped tokenizer is "
                f"{now}: its indices would decode wrongly; ship it again from a run of this one"
            )
    ema = load_file(os.path.join(folder, "ema.safetensors"))
    run_dir = os.path.join(out_root, name)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    unpacked = {
        "format": checkpoint.FORMAT,
        "model": ema,
        "ema": ema,
        "opt": {},
        "progress": record["progress"],
        "total_steps": record["total_steps"],
        "config": record["config"],
        "identity": record["identity"],
        "metrics_csv": csv_text(record["metrics"]),
    }
    # sealed with its sha256, so a byte that changes on disk later is refused when loaded
    atomic_torch_save(checkpoint.seal(unpacked), os.path.join(run_dir, "checkpoints", "last.pt"))
    summary = {
        **record["summary"],
        "shipped_as": f"{RUNS}/{name}",
        "shipped_digest": artifacts.shipped_digest(f"{RUNS}/{name}"),
    }
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=1))
    write_csv(os.path.join(run_dir, "metrics.csv"), record["metrics"])
    return run_dir


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ship", nargs="+", default=None, help="finished run folders to ship")
    ap.add_argument("--out", default=OUT, help="where shipped runs are unpacked")
    args = ap.parse_args(argv)
    if args.ship:
        shipped = [ship(r) for r in args.ship]
        print("shipped " + ", ".join(shipped) + f" (manifest: {artifacts.MANIFEST})")
        return shipped
    try:
        dirs = [unpack(n, args.out) for n in names()]
    except artifacts.ArtifactError as e:
        raise SystemExit(f"error: {e}") from None
    for d in dirs:
        print(f"{d}  (checksums verified)")
    return dirs


if __name__ == "__main__":
    main()
