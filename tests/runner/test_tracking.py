"""logger=tensorboard and logger=wandb (experiments/runner/tracking.py): what a real run
writes is read back, with TensorBoard's own event reader and with an independent reader of
W&B's offline run file, and compared with the run's metrics.csv."""

import csv
import glob
import json
import sys

import pytest


def csv_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tensorboard_gets_every_log_line_and_evaluation_with_the_config(
    run_in_process, env, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "0_cfm_seed0"
    run_in_process(env, ["method=cfm", "logger=tensorboard"], run_dir, monkeypatch)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    rows = csv_rows(run_dir)
    fd = events.Scalars("eval/fd_fashion")
    assert [e.step for e in fd] == [int(r["step"]) for r in rows] == [4, 8]
    assert [e.value for e in fd] == pytest.approx([float(r["fd_fashion"]) for r in rows])
    flops = [e.value for e in events.Scalars("eval/train_flops")]
    assert flops == pytest.approx([float(r["train_flops"]) for r in rows])
    # log_every=2 over 8 steps: four log lines, each with a finite loss and the lr
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert all(e.value > 0 for e in events.Scalars("train/images_per_s"))
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "method.name = 'cfm'" in config and "train_identity = " in config


def wandb_records(path):
    """The protobuf records of a W&B run file: a LevelDB-style log (a 7-byte ':W&B' header,
    then 32 KiB blocks of records, each with a 7-byte header: crc32, length, kind; kinds 2–4
    are the first, middle and last pieces of a record split across blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_writes_an_offline_run_with_every_evaluation_and_the_config(
    run_in_process, env, tmp_path, monkeypatch
):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline unless the user says otherwise
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "0_purr_seed0"
    run_in_process(env, ["method=purr", "logger=wandb"], run_dir, monkeypatch)
    (path,) = [p for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")]
    records = wandb_records(path)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "purr-seed0" and run.project == "vqflow-bench"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["method.name"] == "purr" and len(config["train_identity"]) > 0
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            # the step is an item (_step) or the record's own field, by W&B version
            step = items.get("_step", r.history.step.num)
            history.setdefault(step, {}).update(items)
    rows = csv_rows(run_dir)
    for row in rows:
        logged = history[int(row["step"])]
        assert logged["eval/fd_fashion"] == pytest.approx(float(row["fd_fashion"]))
        assert logged["eval/train_flops"] == pytest.approx(float(row["train_flops"]))
    assert sorted(s for s, items in history.items() if "train/loss" in items) == [2, 4, 6, 8]


def test_a_tracker_whose_package_is_missing_is_refused_naming_the_install(tmp_path, monkeypatch):
    from experiments.runner.errors import RunError
    from experiments.runner.tracking import open_tracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(RunError, match="pip install wandb"):
        open_tracker("wandb", str(tmp_path), {}, "x", "p")
    assert open_tracker("none", str(tmp_path), {}, "x", "p").log(1, {"a": 1.0}) is None
    assert not glob.glob(str(tmp_path / "*"))  # logger=none writes nothing
