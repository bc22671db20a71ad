"""Metric sanity on the in-domain extractor; cached references; the Inception path (slow)."""

import os

import pytest
import torch

from shared.data import load_fashion_mnist
from shared.metrics import FashionCNN, build_extractor, compute_metrics, reference_features
from shared.metrics import fidelity as fid_mod

HAVE_DATA = os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)  # an untrained network: its features still separate noise from data
    return build_extractor("fashion", net=FashionCNN().eval())


@pytest.fixture(scope="module")
def test_images():
    return load_fashion_mnist(None, "test", 32)[0]


@needs_data
def test_fd_sanity(cache, extractor, test_images):
    ref = reference_features("fashion", split="train", n=400, extractor=extractor, progress=False)
    assert ref["features"]["feat"].shape == (400, 128)
    real = compute_metrics(test_images[:400], ref, extractor)
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (400, 1, 32, 32), generator=g, dtype=torch.uint8)
    fake = compute_metrics(noise, ref, extractor)
    assert set(real) == {
        "fd_fashion",
        "kid_fashion",
        "kid_fashion_std",
        "precision_fashion",
        "recall_fashion",
        "is_fashion",
    }
    assert not any(k.startswith("fid") for k in real)  # never called FID
    assert fake["fd_fashion"] > 10 * real["fd_fashion"] > 0
    assert fake["kid_fashion"] > 10 * abs(real["kid_fashion"])
    assert real["precision_fashion"] > 0.5 and real["recall_fashion"] > 0.5
    assert fake["precision_fashion"] < 0.05


@needs_data
def test_self_distance_and_unbiased_kid(extractor, test_images):
    from shared.metrics import extract_features, metrics_from_features

    feats = extract_features(extractor, test_images[:600])
    same = metrics_from_features(feats, feats, "fashion", which=("fd",))
    assert abs(same["fd_fashion"]) < 1e-6 * feats["feat"].var(0).sum().item() + 1e-8
    half1 = {k: v[:300] for k, v in feats.items()}
    half2 = {k: v[300:] for k, v in feats.items()}
    halves = metrics_from_features(
        half1, half2, "fashion", which=("fd", "kid"), kid_subset_size=200
    )
    noise = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8)
    nf = extract_features(extractor, noise)
    far = metrics_from_features(nf, half2, "fashion", which=("kid",), kid_subset_size=200)
    # unbiased KID on two halves of one set: |mean| within a few standard errors of 0
    assert abs(halves["kid_fashion"]) < 0.02 * far["kid_fashion"]
    assert halves["fd_fashion"] > same["fd_fashion"]  # FD is biased upward at finite n


@needs_data
def test_reference_cache_reused_and_rebuilt(cache, extractor, monkeypatch, capsys):
    first = reference_features("fashion", split="test", n=50, extractor=extractor, progress=False)
    files = list((cache / "metrics" / "refs").iterdir())
    assert len(files) == 1
    real_extract = fid_mod.extract_features
    monkeypatch.setattr(fid_mod, "extract_features", lambda *a, **k: pytest.fail("recomputed"))
    again = reference_features("fashion", split="test", n=50, extractor=extractor)
    assert torch.equal(again["features"]["feat"], first["features"]["feat"])
    monkeypatch.setattr(fid_mod, "extract_features", real_extract)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncate: corrupt cache
    rebuilt = reference_features("fashion", split="test", n=50, extractor=extractor, progress=False)
    assert "stale or corrupt" in capsys.readouterr().out
    assert torch.equal(rebuilt["features"]["feat"], first["features"]["feat"])
    blob = torch.load(files[0], weights_only=True)
    blob["features"]["feat"][0, 0] += 1.0  # contents no longer match the stored checksum
    torch.save(blob, files[0])
    reference_features("fashion", split="test", n=50, extractor=extractor, progress=False)
    assert "stale or corrupt" in capsys.readouterr().out


@needs_data
def test_reference_cache_never_runs_code(cache, extractor, payload, capsys):
    reference_features("fashion", split="test", n=50, extractor=extractor, progress=False)
    (path,) = (cache / "metrics" / "refs").iterdir()
    payload.write(path, wrap=lambda p: {"key": p, "features": {}, "sha256": ""})
    rebuilt = reference_features("fashion", split="test", n=50, extractor=extractor, progress=False)
    out = capsys.readouterr().out
    assert not payload.ran() and str(path) in out and "could run code" in out
    assert len(rebuilt["features"]["feat"]) == 50


def test_bad_inputs(extractor):
    from shared.metrics import extract_features

    with pytest.raises(TypeError, match="uint8"):
        extract_features(extractor, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_extractor("clip")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        build_extractor("inception", inception_weights="/nonexistent.pth")


@pytest.mark.slow
@needs_data
def test_inception_fid_offline(tmp_path, monkeypatch, test_images):
    """Standard Inception FID on a few hundred images is finite, and the converted weights
    reproduce the TorchScript network's features."""
    from shared.metrics.inception import torchscript_source

    fe = build_extractor("inception")  # converted weights from the project cache
    source = torchscript_source()
    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path))  # reference features: a private cache
    x = test_images[:8].expand(-1, 3, -1, -1).contiguous()
    ours = fe.convert_features_tuple_to_dict(fe(x))["2048"]
    # the TorchScript network takes the already resized, normalised image
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x as resize,
    )

    ts = torch.jit.load(source, map_location="cpu")
    theirs = ts.net((resize(x.float(), size=(299, 299), align_corners=False) - 128) / 128)
    assert (ours - theirs).abs().max() < 1e-4  # measured 9.5e-7
    ref = reference_features("inception", split="train", n=200, extractor=fe, progress=False)
    m = compute_metrics(test_images[:200], ref, fe)
    assert 0 < m["fid_inception"] < 200 and "is_inception" not in m


@pytest.mark.parametrize("n_gen,n_ref,batch", [(300, 400, 10000), (257, 190, 64)])
def test_metric_arithmetic_equals_torch_fidelity_bit_for_bit(n_gen, n_ref, batch):
    """stats.py against torch-fidelity 0.4.0's own functions, on correlated random features
    (both sides shifted and scaled apart, so that every term matters): FD, KID mean and std,
    precision and recall (in batches smaller than a set, too), IS — equal, not close."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from shared.metrics import stats

    g = torch.Generator().manual_seed(n_gen)
    mix = torch.randn(16, 16, generator=g, dtype=torch.float64)
    gen = torch.randn(n_gen, 16, generator=g, dtype=torch.float64) @ mix
    ref = 1.3 * torch.randn(n_ref, 16, generator=g, dtype=torch.float64) @ mix + 0.4
    logits = torch.randn(n_gen, 10, generator=g) * 3

    fd = fid_statistics_to_metric(
        fid_features_to_statistics(gen), fid_features_to_statistics(ref), verbose=False
    )["frechet_inception_distance"]
    assert stats.frechet_distance(stats.fd_statistics(gen), stats.fd_statistics(ref)) == fd > 0
    size = min(n_gen, n_ref, 150)
    k = kid_features_to_metric(
        gen, ref, kid_subset_size=size, kid_subsets=20, rng_seed=5, verbose=False
    )
    assert stats.kid(gen, ref, size, 20, 5) == (
        k["kernel_inception_distance_mean"],
        k["kernel_inception_distance_std"],
    )
    p = prc_features_to_metric(
        gen, ref, prc_neighborhood=3, prc_batch_size=batch, save_cpu_ram=True, verbose=False
    )
    assert stats.precision_recall(gen, ref, 3, batch) == (p["precision"], p["recall"])
    assert 0 < p["precision"] < 1 and 0 < p["recall"] < 1
    isc = isc_features_to_metric(logits, splits=10, rng_seed=3)
    assert stats.inception_score(logits, 10, 3) == (
        isc["inception_score_mean"],
        isc["inception_score_std"],
    )
    with pytest.raises(ValueError, match="different dimensions"):
        stats.frechet_distance(stats.fd_statistics(gen), stats.fd_statistics(ref[:, :8]))


def test_the_two_matrix_square_roots_of_the_fd_agree_and_the_old_bf16_snap_differs():
    """analysis/metric_arithmetic_check.py's two computations: scipy's sqrtm (ADM) against
    torch-fidelity's eigenvalues on random features, and the legacy bf16 snap on a near-tie."""
    from analysis.metric_arithmetic_check import bf16_snap, fd_sqrtm
    from shared.codebook import nearest_code
    from shared.metrics.stats import fd_statistics, frechet_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g).double(), torch.randn(400, 16, generator=g).double()
    b = b * 1.5 + 0.3
    sa, sb = fd_statistics(a), fd_statistics(b)
    assert fd_sqrtm(sa, sb) == pytest.approx(frechet_distance(sa, sb), rel=1e-9)
    book = torch.zeros(2, 4)
    book[0, 0], book[1, 0] = 1.0, 1.001
    z = torch.zeros(1, 4, 1, 1)
    z[0, 0] = 1.0006
    assert int(nearest_code(z, book)) == 1 and int(bf16_snap(z, book)) == 0
