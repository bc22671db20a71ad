"""Index-shard extraction: content, resume after interruption, worker sharding, validation."""

import json
import os

import numpy as np
import pytest
import torch
from helpers.data import make_fmnist

from shared.data import FashionMNIST
from shared.latents import IndexShards, ShardError, extract, shard_paths
from shared.tokenizers import Tokenizer
from shared.tokenizers.fashion import FashionVQConfig, build_vqmodel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    make_fmnist(root, n_train=23, n_test=4)
    torch.manual_seed(0)
    vq = build_vqmodel(FashionVQConfig(block_out_channels=(16, 16, 16)))
    torch.nn.init.normal_(vq.quantize.embedding.weight)  # spread codes so indices vary
    tok = Tokenizer(vq, 32, "test-tok")
    return FashionMNIST(str(root), "train", strict_count=False), tok


def run(ds, tok, out, **kw):
    kw = {"shard_size": 5, "batch_size": 2, "progress": False, **kw}
    return extract(ds, tok, str(out), "fm-train", **kw)


def test_extract_content_and_reader(setup, tmp_path):
    ds, tok = setup
    manifest = run(ds, tok, tmp_path)
    assert manifest["count"] == 23 and manifest["num_shards"] == 5 and manifest["num_codes"] == 256
    assert manifest["grid"] == [8, 8] and manifest["dtype"] == "uint16"
    assert np.load(shard_paths(str(tmp_path), 0)[0]).dtype == np.uint16
    shards = IndexShards(str(tmp_path), verify=True)
    idx, lbl = shards.load_all()
    assert torch.equal(idx, tok.encode(ds.images)) and torch.equal(lbl, ds.labels)
    assert idx.unique().numel() > 5  # not a degenerate encoding
    i, y = shards[17]
    assert torch.equal(i, idx[17]) and y == int(ds.labels[17]) and len(shards) == 23


def test_interrupted_extraction_resumes_identically(setup, tmp_path):
    ds, tok = setup
    reference = run(ds, tok, tmp_path / "ref")
    out = tmp_path / "run"
    calls = {"n": 0}
    real = tok.encode

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-way through shard 1 (3 batches per shard)
            raise KeyboardInterrupt
        return real(images)

    tok.encode = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            run(ds, tok, out)
    finally:
        tok.encode = real
    assert os.path.exists(shard_paths(str(out), 0)[2]) and not os.path.exists(out / "manifest.json")
    assert not os.path.exists(shard_paths(str(out), 1)[2])
    # a stale partial shard (data without its commit marker) must be redone, not trusted
    np.save(shard_paths(str(out), 1)[0], np.zeros((2, 8, 8), np.uint16))
    t0 = os.stat(shard_paths(str(out), 0)[0]).st_mtime_ns
    resumed = run(ds, tok, out)
    assert resumed == reference
    assert os.stat(shard_paths(str(out), 0)[0]).st_mtime_ns == t0  # finished shard kept
    a, b = IndexShards(str(out)).load_all(), IndexShards(str(tmp_path / "ref")).load_all()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_workers_split_shards_without_collision(setup, tmp_path):
    ds, tok = setup
    single = run(ds, tok, tmp_path / "one")
    assert run(ds, tok, tmp_path / "two", rank=1, world_size=2) is None  # rank 0's shards missing
    written = sorted(
        p for p in os.listdir(tmp_path / "two") if p.endswith(".json") and "shard" in p
    )
    assert written == ["shard_00001.json", "shard_00003.json"]
    assert run(ds, tok, tmp_path / "two", rank=0, world_size=2) == single


def test_validation_errors(setup, tmp_path):
    ds, tok = setup
    with pytest.raises(ShardError, match="no manifest.json"):
        IndexShards(str(tmp_path))
    run(ds, tok, tmp_path)
    with pytest.raises(ShardError, match="different plan"):
        run(ds, tok, tmp_path, shard_size=7)
    idx_p = shard_paths(str(tmp_path), 2)[0]
    arr = np.load(idx_p)
    arr[0, 0, 0] ^= 1
    np.save(idx_p, arr)
    with pytest.raises(ShardError, match="shard_00002.indices.npy fails its sha256 check"):
        IndexShards(str(tmp_path), verify=True)
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f)["shards"][2]["count"] == 5


def test_shards_are_keyed_by_what_the_data_is(setup, tmp_path):
    """Shards keyed by the folder's basename would let every ``…/train`` share one
    cache, and latents made at 128 px be reused at 256 px. The folder name carries a
    digest of the data's identity (listing or files, image size), and a reader given shards
    of other data refuses them, naming what differs."""
    from helpers.data import make_fmnist, make_tree

    from experiments.extract_latents import data_source, shard_folder

    a, b = tmp_path / "a" / "train", tmp_path / "b" / "train"
    make_tree(a)
    make_tree(b, sizes=((300, 200),))
    id_a, ident_a, _ = data_source("imagefolder", str(a), "train", 32)
    id_b, _, _ = data_source("imagefolder", str(b), "train", 32)
    id_a64, ident_a64, _ = data_source("imagefolder", str(a), "train", 64)
    assert len({id_a, id_b, id_a64}) == 3
    assert id_a.startswith("imagefolder-train-32px-")
    assert id_a64.startswith("imagefolder-train-64px-")
    assert data_source("imagefolder", str(a), "train", 32)[:2] == (id_a, ident_a)  # stable
    os.utime(a / "ant" / "img0.png", ns=(1, 1))  # a touched file is other data
    assert data_source("imagefolder", str(a), "train", 32)[0] != id_a
    # Fashion-MNIST roots are told apart by their files' content
    f1, f2 = tmp_path / "f1", tmp_path / "f2"
    f1.mkdir(), f2.mkdir()
    make_fmnist(f1, n_train=5, n_test=2)
    make_fmnist(f2, n_train=6, n_test=2)
    fm1, fm2 = (data_source("fashion", str(f), "train", 32)[0] for f in (f1, f2))
    assert fm1 != fm2
    # one folder convention: a root (extract_latents.py --out, data.latents_dir) holds
    # <tokenizer>/<dataset id>/; a folder that is an extraction itself is used as it is
    root = str(tmp_path / "lat")
    folder = shard_folder(root, "tok", id_a)
    assert folder == os.path.join(root, "tok", id_a) != shard_folder(root, "tok", id_a64)
    ds, tok = setup
    fm_id, fm_ident, _ = data_source("fashion", ds.root, "train", 32)
    manifest = run(ds, tok, folder, identity=fm_ident)
    assert manifest["data_identity"] == fm_ident
    assert shard_folder(folder, "other", "x") == folder
    assert len(IndexShards(folder, identity=fm_ident)) == len(ds)
    _, other, _ = data_source("fashion", ds.root, "train", 36)
    with pytest.raises(ShardError, match=r"other data \(image_size: 32 → 36\)"):
        IndexShards(folder, identity=other)
    run(ds, tok, tmp_path / "legacy")  # extracted without an identity (a legacy layout)
    with pytest.raises(ShardError, match="extracted before data identities were recorded"):
        IndexShards(str(tmp_path / "legacy"), identity=fm_ident)


def test_extraction_batch_is_chosen_from_memory(setup):
    """The per-image estimate bounds the first conv's own output from above and grows
    with the pixels (4× at twice the size); the batch is what a budget holds, within
    [1, MAX_BATCH]."""
    from shared.latents import MAX_BATCH, activation_bytes_per_image, auto_batch_size

    _, tok = setup
    per = activation_bytes_per_image(tok, "cpu")
    assert per >= 16 * 32 * 32 * 4  # conv_in alone: 16 channels × 32² float32
    big = Tokenizer(tok.vq, 64, "test-tok-64")
    assert activation_bytes_per_image(big, "cpu") / per == pytest.approx(4, rel=0.05)
    assert auto_batch_size(tok, "cpu", budget_bytes=7.5 * per) == 7
    assert auto_batch_size(tok, "cpu", budget_bytes=per / 10) == 1
    assert auto_batch_size(tok, "cpu", budget_bytes=1e15) == MAX_BATCH
    assert auto_batch_size(tok, "cpu") == MAX_BATCH  # 32 px: tiny next to this machine


def test_out_of_memory_halves_the_batch_and_loses_nothing(setup, tmp_path, monkeypatch):
    """A CUDA out-of-memory during extraction halves the batch and retries it: the shards
    equal an extraction at the smaller batch."""
    ds, tok = setup
    reference = run(ds, tok, tmp_path / "ref", batch_size=2)
    encode, sizes = tok.encode, []

    def tight(images):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return encode(images)

    monkeypatch.setattr(tok, "encode", tight)
    got = run(ds, tok, tmp_path / "oom", batch_size=5, shard_size=10)
    assert 5 in sizes and max(sizes[sizes.index(2) :]) == 2
    assert got["count"] == reference["count"]
    a, b = (
        IndexShards(str(tmp_path / "ref")).load_all(),
        IndexShards(str(tmp_path / "oom")).load_all(),
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
