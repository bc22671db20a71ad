"""No file a user points at can run code; shards are verified; files respect the umask."""

import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.runner.errors import RunError
from shared.io import atomic_write_text, remove_stale_temporaries
from shared.latents import IndexShards, ShardError, shard_paths
from shared.safe_load import FileLoadError, UnsafeFileError
from shared.tokenizers import SDVQF8, FashionVQ, LlamaGenVQ


def test_pretrained_tokenizer_loaders_refuse_code(tmp_path, payload):
    for loader, name in ((SDVQF8, "model.ckpt"), (LlamaGenVQ, "vq_ds8_c2i.pt")):
        path = payload.write(tmp_path / name, wrap=lambda p: {"state_dict": {}, "cb": p})
        with pytest.raises(UnsafeFileError, match=f"{path}.*posix.system.*could run code"):
            loader.load(path, image_size=16)
        assert not payload.ran()
    # a diffusers folder is read from safetensors only, never from a pickled .bin
    folder = tmp_path / "fashion"
    (folder / "model").mkdir(parents=True)
    (folder / "tokenizer.json").write_text(json.dumps({"config": {"image_size": 32}, "id": "x"}))
    (folder / "model" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    payload.write(folder / "model" / "diffusion_pytorch_model.bin", wrap=lambda p: {"w": p})
    with pytest.raises(Exception):  # noqa: B017 (diffusers' own "no safetensors file" error)
        FashionVQ.load(str(folder))
    assert not payload.ran()


def test_trainer_loaders_refuse_code(run_in_process, env, tmp_path, monkeypatch, payload):
    from experiments.runner.build import load_trained

    run_dir = tmp_path / "run"
    ckpt = payload.write(run_dir / "checkpoints" / "last.pt")
    # refused with the loader's reason and the way out, the run's files untouched
    refused = f"refusing to load checkpoint {ckpt}: it asks to unpickle .*could run code.*"
    with pytest.raises(RunError, match=refused + "overwrite=true"):
        run_in_process(env, ["method=cfm"], run_dir, monkeypatch)
    with pytest.raises(RunError, match=refused + "restore it from a copy"):
        load_trained(str(run_dir))
    assert not payload.ran()
    # the metric classifier's weights
    from shared.metrics.fashion_cnn import FashionCNNConfig, classifier_dir, load_classifier

    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "cache"))
    net_dir = classifier_dir(FashionCNNConfig())
    weights = payload.write(os.path.join(net_dir, "model.safetensors"), wrap=lambda p: {"w": p})
    meta = {"config": {"widths": [16, 32, 64], "feat_dim": 128}}
    atomic_write_text(os.path.join(net_dir, "meta.json"), json.dumps(meta))
    with pytest.raises(FileLoadError, match=f"cannot read metric network {weights}"):
        load_classifier(net_dir)
    assert not payload.ran()


def test_truncated_file_is_named(tmp_path):
    from shared.safe_load import load_torch_file

    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(FileLoadError, match=f"cannot read checkpoint {path}"):
        load_torch_file(path, "checkpoint")


def copy_shards(latents, tmp_path):
    src, dst = Path(latents), tmp_path / "lat"
    dst.mkdir(parents=True)
    for f in os.listdir(src):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


def rewrite_shard(folder, s, idx=None, lbl=None, fix_checksum=True):
    """Replace shard ``s``'s arrays; with ``fix_checksum`` its recorded sha256 follows, as if
    a buggy extractor (not a disk fault) had written the values."""
    from shared.latents import _sha256, finalize

    idx_p, lbl_p, meta_p = shard_paths(str(folder), s)
    idx = np.load(idx_p) if idx is None else idx
    lbl = np.load(lbl_p) if lbl is None else lbl
    np.save(idx_p, idx)
    np.save(lbl_p, lbl)
    if fix_checksum:
        meta = json.loads(open(meta_p).read())
        meta["sha256"] = _sha256(idx, lbl)
        atomic_write_text(meta_p, json.dumps(meta))
        os.remove(os.path.join(folder, "manifest.json"))
        finalize(str(folder))


def test_a_run_refuses_shards_of_other_data_before_training(
    latents, run_in_process, env, tmp_path, monkeypatch
):
    """data.latents_dir pointing at shards extracted from other data (here: their recorded
    identity says other files) is refused at start-up, naming the difference."""
    from experiments.runner.errors import RunError

    lat = copy_shards(latents, tmp_path)
    manifest = json.loads((lat / "manifest.json").read_text())
    manifest["data_identity"]["files_sha256"] = "0" * 64
    (lat / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match=r"latents of other data \(files_sha256: '0000"):
        run_in_process(env, ["method=cfm", f"data.latents_dir={lat}"], tmp_path / "r", monkeypatch)
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_training_verifies_shards_at_start(
    latents, run_in_process, env, tmp_path, monkeypatch, payload
):
    run = lambda lat, d: run_in_process(
        env,
        ["method=cfm", f"data.latents_dir={lat}"],
        tmp_path / d,
        monkeypatch,
    )
    from experiments.runner.errors import RunError

    lat = copy_shards(latents, tmp_path)
    idx_p, lbl_p, _ = shard_paths(str(lat), 0)
    idx = np.load(idx_p)
    idx[3, 0, 0] ^= 1  # a flipped bit on disk
    rewrite_shard(lat, 0, idx=idx, fix_checksum=False)
    with pytest.raises(RunError, match=f"shard {idx_p} fails its sha256 check"):
        run(lat, "a")
    assert not (tmp_path / "a" / "metrics.csv").exists()  # refused before any training

    lat = copy_shards(latents, tmp_path / "b")
    idx = np.load(shard_paths(str(lat), 0)[0])
    idx[5, 1, 1] = 300  # K = 256
    rewrite_shard(lat, 0, idx=idx)
    with pytest.raises(RunError, match=r"row 5 holds code 300, outside \[0, 256\)"):
        run(lat, "b")
    lat = copy_shards(latents, tmp_path / "c")
    lbl = np.load(shard_paths(str(lat), 0)[1])
    lbl[7] = 12
    rewrite_shard(lat, 0, lbl=lbl)
    with pytest.raises(RunError, match=r"row 7 has label 12, outside \[0, 10\)"):
        run(lat, "c")
    # a shard holding a pickled object array is refused without unpickling it
    lat = copy_shards(latents, tmp_path / "d")
    bad = np.empty(1, dtype=object)
    bad[0] = payload.write(tmp_path / "unused.pt")  # any object: an object array needs pickle
    np.save(shard_paths(str(lat), 0)[1], bad, allow_pickle=True)
    with pytest.raises(ShardError, match="cannot read shard 0 .*labels.npy"):
        IndexShards(str(lat))
    assert not payload.ran()


def test_atomic_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == 0o600


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    orphan = tmp_path / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"partial")
    keep = tmp_path / "checkpoints" / "last.pt"
    keep.write_bytes(b"ok")
    assert remove_stale_temporaries(tmp_path) == [str(orphan)]
    assert keep.exists() and not orphan.exists()


def test_shard_verification_cost_script(tmp_path):
    from experiments import shard_verify_cost

    args = "--rows 2500 --grid 4 --codes 16 --classes 3 --reps 1 --dir".split() + [str(tmp_path)]
    out = shard_verify_cost.main(args)
    assert out["bytes"] > 2500 * 16 * 2 and out["verify_s"] > 0 and os.listdir(tmp_path) == []


def test_a_second_job_waits_for_the_extraction_in_progress(
    compose, latents, env, tmp_path, monkeypatch
):
    """The jobs of a sweep extract the same data once. A job that finds the
    shards being extracted (their lock held) waits for the manifest instead, and fails with
    a relaunch hint when the extracting job dies before finishing."""
    import threading

    from experiments.runner import build
    from experiments.runner.errors import RunError
    from shared.latents import ExtractionLock

    src = Path(latents)
    cfg = compose(env["overrides"] + ["method=cfm", f"data.latents_dir={tmp_path / 'lat'}"])
    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    tok = build.load_tokenizer(cfg)
    folder = Path(build.shard_location(cfg, tok)[2])
    extracted = []
    monkeypatch.setattr("shared.latents.extract", lambda *a, **k: extracted.append(1))
    outcome = {}

    def job():
        try:
            outcome["shards"] = build.prepare_latents(cfg, tok, build.Dist())
        except RunError as e:
            outcome["error"] = str(e)

    for holder_finishes in (True, False):
        lock = ExtractionLock(str(folder))  # another job, extracting
        assert lock.acquire() is True
        t = threading.Thread(target=job)
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and not outcome  # waiting, not extracting
        if holder_finishes:
            folder.mkdir(parents=True)
            for f in os.listdir(src):
                (folder / f).write_bytes((src / f).read_bytes())
        lock.release()
        t.join(30)
        if holder_finishes:
            assert len(outcome.pop("shards")) == 64
        else:
            assert "stopped before it finished; relaunch" in outcome.pop("error")
        shutil.rmtree(folder, ignore_errors=True)
    assert extracted == []
