"""The shipped trained runs (experiments/shipped_runs.py): every one passes its sha256 check,
unpacks into a run folder, and samples through experiments/sample.py with no training."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.frozen import fingerprint

from experiments import shipped_runs
from shared import artifacts
from shared.paths import REPO_ROOT


def test_every_shipped_run_is_checked_unpacked_and_sampled(tmp_path, monkeypatch):
    from experiments.sample import main as sample
    from shared.io import file_sha256

    names = shipped_runs.names()
    frozen = json.loads((Path(__file__).parent / "shipped_samples.json").read_text())
    assert set(frozen["samples"]) == set(names)
    # the converged protocol's seed-0 runs (preset=fashion_cpu), whose final FD is the one
    # committed with the 3-seed results
    converged = {"cfm": "0_cfm_seed0", "dfm": "1_dfm_seed0", "purr": "2_purr_seed0"}
    results = REPO_ROOT / "analysis" / "results" / "fashion_cpu"
    for method, run in converged.items():
        name = f"nano1-{method}-8e13-seed0"
        assert name in names
        final = json.loads((results / run / "summary.json").read_text())["final"]
        recorded = artifacts.manifest()[f"runs/{name}"]["recorded"]
        assert recorded["fd_fashion"] == pytest.approx(float(final["fd_fashion"]), rel=1e-12)
        assert recorded["step"] == int(final["step"])
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
        card = sample(
            [
                run,
                "--num-samples",
                "6",
                "--out",
                str(tmp_path / f"{name}.npz"),
                "--steps",
                "4",
                "--no-progress",
            ]
        )
        with np.load(tmp_path / f"{name}.npz") as z:
            images = z["arr_0"]
        assert images.shape == (6, 32, 32, 3) and images.std() > 0  # not a blank image
        assert card["step"] == card["total_steps"] == entry["recorded"]["step"]
        # the same bytes as the code that shipped them drew (recorded before the methods were
        # restructured; on another CPU float rounding may differ, so only the shape is checked)
        if frozen["fingerprint"] == fingerprint():
            digest = hashlib.sha256(images.tobytes()).hexdigest()
            assert digest == frozen["samples"][name], f"{name}: other images than before"


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
