"""The commands outside the trainer end a failure in one line that names the file, what is
wrong and the fix, with exit status 2, and write nothing wrong: experiments/evaluate.py
(statistics, metric network, --out), experiments/sample.py (--out, a second command on the
same file) and experiments/pack.py (a malformed override, a refused job)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.paths import REPO_ROOT


def write_adm(path, images, **extra):
    np.savez(path, arr_0=images, **extra)
    return path


def fake_images(n, seed, size=32):
    """n greyscale images in the ADM layout (uint8, N × H × W × 3)."""
    base = np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return np.repeat(base, 3, axis=-1)


def refusal(excinfo, capsys) -> str:
    """The one ``error:`` line a refused command printed; its exit status must be 2."""
    assert excinfo.value.code == 2, excinfo.value
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def evaluate(samples, reference, out, *extra):
    from experiments.evaluate import main

    return main([str(samples), "--reference", str(reference), "--out", str(out), *extra])


def strict_json(path):
    """A results file as a strict JSON reader takes it (``NaN`` is no JSON)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------ evaluate.py
def test_a_reference_batch_with_non_finite_statistics_is_refused_naming_it(tmp_path, capsys):
    """An ADM reference batch whose mu holds a nan: the FID against it was nan, written as
    ``"fid": NaN`` (not JSON) with exit status 0. Refused before any network runs."""
    s = write_adm(tmp_path / "s.npz", fake_images(8, 1))
    mu = np.zeros(2048)
    mu[7] = np.nan
    ref = write_adm(tmp_path / "ref.npz", fake_images(8, 2), mu=mu, sigma=np.eye(2048))
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        evaluate(s, ref, out, "--no-progress")
    line = refusal(e, capsys)
    assert line.startswith(f"error: the reference {ref}: its mu holds 1 non-finite value(s)")
    assert "download the reference batch again" in line
    assert not out.exists()


def test_cached_statistics_that_are_not_finite_are_rebuilt_and_results_are_strict_json(
    tmp_path, monkeypatch, capsys
):
    """The reference's cached FD moments poisoned with a nan: they were read as they were,
    and results.json said ``"fd_fashion": NaN``. Now the file is named and rebuilt."""
    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "cache"))
    s = write_adm(tmp_path / "s.npz", fake_images(12, 1))
    ref = write_adm(tmp_path / "ref.npz", fake_images(16, 2))
    args = ("--extractors", "fashion", "--no-progress")
    first = evaluate(s, ref, tmp_path / "r1.json", *args)
    (cached,) = (tmp_path / "cache" / "metrics" / "ref_stats").glob("*.pt")
    blob = torch.load(cached, weights_only=True)
    blob["mu"][0] = float("nan")
    torch.save(blob, cached)
    capsys.readouterr()
    again = evaluate(s, ref, tmp_path / "r2.json", *args)
    assert f"reference statistics {cached} are stale or corrupt; rebuilding them (non-finite" in (
        capsys.readouterr().out
    )
    assert strict_json(tmp_path / "r2.json")["fd_fashion"] == again["fd_fashion"]
    assert again["fd_fashion"] == first["fd_fashion"]


def test_a_non_finite_metric_is_an_error_naming_it_and_nothing_is_written(
    tmp_path, monkeypatch, capsys
):
    import shared.metrics

    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "cache"))
    real = shared.metrics.metrics_from_features

    def nan_fd(*a, **k):
        return {**real(*a, **k), "fd_fashion": float("nan")}

    monkeypatch.setattr(shared.metrics, "metrics_from_features", nan_fd)
    s = write_adm(tmp_path / "s.npz", fake_images(8, 1))
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        evaluate(s, s, out, "--extractors", "fashion", "--no-progress")
    line = refusal(e, capsys)
    assert line.startswith("error: non-finite result fd_fashion=nan:") and "nothing written" in line
    assert not out.exists()


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_metric_network_is_named_with_its_fix(tmp_path, monkeypatch, capsys, damage):
    """The shipped fd_fashion network with one bit flipped, or cut short: a traceback
    (ArtifactError) before; now one line naming the file, the manifest check and the fix."""
    from shared import artifacts

    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts.ARTIFACTS_DIR, copy, ignore=shutil.ignore_patterns("runs"))
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", copy)
    monkeypatch.setattr(artifacts, "MANIFEST", copy / "manifest.json")
    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "cache"))
    weights = copy / artifacts.METRIC_NET / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data if damage == "flipped" else data[: len(data) // 2]))
    s = write_adm(tmp_path / "s.npz", fake_images(8, 1))
    with pytest.raises(SystemExit) as e:
        evaluate(s, s, tmp_path / "r.json", "--extractors", "fashion", "--no-progress")
    line = refusal(e, capsys)
    assert line.startswith(
        f"error: shipped artifact file {weights} fails its sha256 check against manifest.json"
    )
    assert "restore it with `git checkout -- shared/artifacts`" in line


def test_evaluate_refuses_an_out_it_cannot_write_before_scoring(tmp_path, monkeypatch, capsys):
    """--out under a file (ENOTDIR, whoever runs the test): the traceback came after every
    image was scored; now one line, before any is."""
    import experiments.evaluate as evaluate_module

    def never(*a, **k):
        raise AssertionError("scored before --out was checked")

    monkeypatch.setattr(evaluate_module, "features", never)
    s = write_adm(tmp_path / "s.npz", fake_images(8, 1))
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sub" / "r.json"
    with pytest.raises(SystemExit) as e:
        evaluate(s, s, out, "--extractors", "fashion", "--no-progress")
    line = refusal(e, capsys)
    assert line.startswith(f"error: cannot write {out}: Not a directory (ENOTDIR); a part of")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_evaluate_refuses_a_read_only_folder(tmp_path, capsys):
    s = write_adm(tmp_path / "s.npz", fake_images(8, 1))
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as e:
            evaluate(s, s, folder / "r.json", "--extractors", "fashion", "--no-progress")
    finally:
        folder.chmod(0o755)
    assert "Permission denied (EACCES)" in refusal(e, capsys)


# -------------------------------------------------------------------------------- sample.py
@pytest.fixture(scope="module")
def trained(run_in_process, env, tmp_path_factory):
    """One tiny trained cfm run."""
    run = tmp_path_factory.mktemp("trained") / "cfm"
    with pytest.MonkeyPatch.context() as mp:
        run_in_process(env, ["method=cfm", "eval.points=1"], run, mp)
    return run


def sample(env, run, out, monkeypatch, *extra):
    from experiments.sample import main

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    args = ["--num-samples", "4", "--shard-size", "2", "--batch-size", "2", "--no-progress"]
    return main([str(run), "--out", str(out), *args, *map(str, extra)])


def test_sample_refuses_an_out_it_cannot_write(env, trained, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sub" / "s.npz"
    with pytest.raises(SystemExit) as e:
        sample(env, trained, out, monkeypatch)
    line = refusal(e, capsys)
    assert line.startswith(f"error: cannot write {out}: Not a directory (ENOTDIR); a part of")


def test_a_second_sample_command_on_the_same_out_is_refused_naming_the_first(
    env, trained, tmp_path, monkeypatch, capsys
):
    """While one command samples into s.npz, the same command again: it sampled the same
    shards and died in a traceback once the first had assembled the file and removed the
    shard folder. Now it is refused at once, naming the first by host and pid; the first
    writes its file, and a third command, once it has ended, finds the file complete."""
    import experiments.sample_files as sampler

    out = tmp_path / "s.npz"
    real, second = sampler.sample_shard, {}

    def shard_then_second_command(*a, **k):
        if not second:  # while the first holds the file: the same command again
            second["started"] = True
            try:
                second["result"] = sample(env, trained, out, monkeypatch)
            except SystemExit as e:
                second["code"] = e.code
                second["err"] = capsys.readouterr().err
        return real(*a, **k)

    monkeypatch.setattr(sampler, "sample_shard", shard_then_second_command)
    first = sample(env, trained, out, monkeypatch)
    assert second.get("code") == 2, second
    (line,) = [x for x in second["err"].splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {out} is being written by another sampling command (")
    assert f'"pid": {os.getpid()}' in line and "choose another --out" in line
    with np.load(out, allow_pickle=False) as z:
        assert len(z["arr_0"]) == 4 and json.loads(str(z["card"]))["arr_0_sha256"]
    assert first["num_samples"] == 4
    monkeypatch.setattr(sampler, "sample_shard", real)
    assert sample(env, trained, out, monkeypatch) is None  # the lock went with the first
    assert "is complete (same settings)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- pack.py
def test_pack_refuses_a_malformed_override_with_status_2(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "pack.py"),
            "--sweep-dir",
            str(tmp_path / "sweep"),
            "--",
            "seed=0",
            "method=[cfm,",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's packages
    )
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: override 'method=[cfm,' is malformed: no viable alternative")
    assert not (tmp_path / "sweep").exists()


def test_the_pack_table_shows_a_refused_job_as_refused(tmp_path, capsys):
    """Job 0 launched a run that another process was writing: run.py refused it (exit 2,
    nothing changed), and the table printed that run's status, "finished", for it."""
    from experiments import pack

    runs = {}
    for num, status in enumerate(("finished", "finished", "failed")):
        runs[num] = tmp_path / f"{num}_cfm_seed{num}"
        runs[num].mkdir()
        (runs[num] / "summary.json").write_text(json.dumps({"status": status}))
    done = {0: (2, 1.0), 1: (0, 60.0), 2: (2, 30.0)}
    assert pack.table(done, {n: str(r) for n, r in runs.items()}) == 2
    rows = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {
        "0_cfm_seed0": ["2", "refused"],
        "1_cfm_seed1": ["0", "finished"],
        "2_cfm_seed2": ["2", "failed"],  # a run that failed is marked so by the runner
    }
