"""The shipped tokenizer and fd_fashion network: present, unchanged, and reproducing the
numbers recorded when they were built; tampering is caught; progress logs stay terse."""

import io
import json
import os
import shutil

import pytest
import torch

from shared import artifacts
from shared.artifacts import METRIC_NET, TOKENIZER, ArtifactError

HAVE_DATA = os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed")


def test_shipped_artifacts_match_their_checksums_and_identities():
    from shared.metrics import load_classifier
    from shared.tokenizers import shipped_fashion_tokenizer

    m = artifacts.manifest()
    for name in (TOKENIZER, METRIC_NET):
        folder = artifacts.shipped(name)
        assert sorted(m[name]["files"]) == sorted(artifacts.weight_files(folder))
        assert m[name]["bytes"] < 2_000_000  # small enough for the repository
    tok = shipped_fashion_tokenizer()
    assert tok.weights_sha256 == m[TOKENIZER]["digest"]
    assert tok.tokenizer_id == f"fashion-vq-{m[TOKENIZER]['digest'][:12]}"
    assert (tok.num_codes, tok.code_dim, tok.grid) == (256, 4, (8, 8))
    net = load_classifier()
    assert net.sha256 == m[METRIC_NET]["digest"]
    assert artifacts.not_comparable_warning("tokenizer", tok.weights_sha256, TOKENIZER) is None
    assert "NOT comparable" in artifacts.not_comparable_warning("tokenizer", "0" * 64, TOKENIZER)


def test_the_codebook_axis_tokenizer_is_shipped_and_chosen_by_name(compose):
    """K = 4096 on the default's grid and code size, loaded by ``tokenizer.path=shipped:…``
    (the ``tokenizer=fashion_k4096`` group), checked like the default and comparable."""
    from experiments.runner.build import load_tokenizer as run_tokenizer
    from experiments.runner.checks import check_inputs
    from shared.tokenizers import load_tokenizer

    name = "fashion-vq-k4096"
    m = artifacts.manifest()
    assert sorted(m[name]["files"]) == sorted(artifacts.weight_files(artifacts.shipped(name)))
    tok = load_tokenizer("fashion-vq", f"shipped:{name}")
    assert (tok.num_codes, tok.code_dim, tok.grid) == (4096, 4, (8, 8))
    assert tok.weights_sha256 == m[name]["digest"] != m[TOKENIZER]["digest"]
    assert (
        artifacts.not_comparable_warning("tokenizer", tok.weights_sha256, artifacts.TOKENIZERS)
        is None
    )
    cfg = compose(["tokenizer=fashion_k4096"])
    check_inputs(cfg)
    assert run_tokenizer(cfg).weights_sha256 == tok.weights_sha256
    with pytest.raises(ArtifactError, match="no shipped tokenizer 'k9'; the shipped ones are"):
        load_tokenizer("fashion-vq", "shipped:k9")


def test_a_changed_or_missing_artifact_file_is_named(tmp_path, monkeypatch):
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts.ARTIFACTS_DIR, copy)
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", copy)
    monkeypatch.setattr(artifacts, "MANIFEST", copy / "manifest.json")
    artifacts.shipped(METRIC_NET)
    weights = copy / METRIC_NET / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{weights} fails its sha256 check"):
        artifacts.shipped(METRIC_NET)
    os.remove(copy / TOKENIZER / "tokenizer.json")
    with pytest.raises(ArtifactError, match="tokenizer.json is missing"):
        artifacts.shipped(TOKENIZER)


@pytest.mark.slow  # 31 s alone, 46 s beside another worker: the longest check (README)
@needs_data
def test_shipped_artifacts_reproduce_their_recorded_numbers():
    from experiments.build_artifacts import tokenizer_numbers
    from shared.metrics import load_classifier
    from shared.metrics.fashion_cnn import test_accuracy
    from shared.tokenizers import shipped_fashion_tokenizer

    for name in artifacts.TOKENIZERS:
        rec = artifacts.recorded(name)
        got = tokenizer_numbers(shipped_fashion_tokenizer(name))
        assert got["n_images"] == rec["n_images"] == 10000
        assert abs(got["psnr_db"] - rec["psnr_db"]) <= 0.002
        assert got["codebook_usage"] == rec["codebook_usage"]
        assert abs(got["perplexity"] - rec["perplexity"]) <= 0.02
    acc = test_accuracy(load_classifier())
    assert abs(acc - artifacts.recorded(METRIC_NET)["test_accuracy"]) <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fd_fashion_is_the_same_on_cpu_and_cuda():
    from shared.metrics import build_extractor, extract_features, metrics_from_features

    g = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (300, 1, 32, 32), generator=g, dtype=torch.uint8)
    reference = (samples.float() * 0.5 + 60).to(torch.uint8)  # any second image set
    fd = {}
    for device in ("cpu", "cuda"):
        fe = build_extractor("fashion", device)
        gen, ref = extract_features(fe, samples), extract_features(fe, reference)
        fd[device] = metrics_from_features(gen, ref, "fashion", which=("fd",))["fd_fashion"]
    assert abs(fd["cpu"] - fd["cuda"]) <= 1e-3 * abs(fd["cpu"])


def test_progress_in_a_log_file_is_one_line_per_interval(monkeypatch):
    from shared.progress import progress_bar

    monkeypatch.setenv("VQBENCH_LOG_INTERVAL", "3600")
    log = io.StringIO()  # not a terminal
    bar = progress_bar(total=5000, desc="train", file=log)
    for _ in range(5000):
        bar.update()
        bar.set_postfix(loss=0.5, refresh=False)
    bar.close()
    lines = [x for x in log.getvalue().splitlines() if x.strip()]
    assert len(lines) <= 3 and "5000/5000" in lines[-1] and "\r" not in log.getvalue()
    assert json.dumps(lines)  # plain text lines
