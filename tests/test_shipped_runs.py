"""The shipped trained runs (experiments/shipped_runs.py): every one passes its sha256 check,
unpacks into a run folder, and samples through experiments/sample.py with no training."""

import json
import shutil

import numpy as np
import pytest

from experiments import shipped_runs
from shared import artifacts


def test_every_shipped_run_is_checked_unpacked_and_sampled(tmp_path, monkeypatch):
    from experiments.sample import main as sample
    from shared.io import file_sha256

    names = shipped_runs.names()
    assert {n.split("-4e13")[0] for n in names} >= {"nano1-cfm", "nano1-purr", "nano1-dfm"}
    m = artifacts.manifest()
    dirs = shipped_runs.main(["--out", str(tmp_path / "runs")])
    assert len(dirs) == len(names)
    for name, run in zip(names, dirs, strict=True):
        entry = m[f"runs/{name}"]
        assert entry["bytes"] < 2_000_000  # small enough for the repository
        folder = artifacts.ARTIFACTS_DIR / "runs" / name
        assert file_sha256(folder / "ema.safetensors") == entry["files"]["ema.safetensors"]
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["shipped_as"] == f"runs/{name}"
        card = sample([run, "--num-samples", "4", "--out", str(tmp_path / f"{name}.npz"),
                       "--steps", "4", "--no-progress"])  # fmt: skip
        with np.load(tmp_path / f"{name}.npz") as z:
            images = z["arr_0"]
        assert images.shape == (4, 32, 32, 3) and images.std() > 0  # not a blank image
        assert card["step"] == card["total_steps"] == entry["recorded"]["step"]


def test_a_tampered_shipped_run_is_refused_naming_the_file(tmp_path, monkeypatch):
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts.ARTIFACTS_DIR, copy)
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", copy)
    monkeypatch.setattr(artifacts, "MANIFEST", copy / "manifest.json")
    name = shipped_runs.names()[0]
    weights = copy / "runs" / name / "ema.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="ema.safetensors fails its sha256 check"):
        shipped_runs.main(["--out", str(tmp_path / "runs")])
