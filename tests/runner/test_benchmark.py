"""The benchmark script runs end to end on a tiny preset and reports consistent numbers."""

import csv

from experiments import benchmark


def test_benchmark_tiny(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    results = benchmark.main(
        [
            "--presets",
            "DiT-Nano/1",
            "--grid",
            "4",
            "--batch",
            "4",
            "--reps",
            "2",
            "--steps-per-rep",
            "1",
            "--nfe",
            "2,3",
            "--sample-batch",
            "4",
            "--device",
            "cpu",
            "--sample-presets",
            "all",
            "--unfused",
            "--heads",
            "chunked,full",
            "--gemm-size",
            "256",
            "--precisions",
            "fp32,bf16",
            "--out",
            str(out),
        ]
    )
    train = [r for r in results if r["kind"] == "train"]
    sample = [r for r in results if r["kind"] == "sample"]
    assert {r["method"] for r in train} == {"cfm", "purr", "dfm"}
    assert {(r["variant"], r["fused_adamw"]) for r in train} == {
        ("eager", True),
        ("unfused", False),
    }
    assert {r["nfe"] for r in sample} == {2, 3}  # the NFE actually taken
    # both head paths of every categorical method, trained and sampled; one CFM
    assert {(r["method"], r["head"]) for r in train if r["variant"] == "eager"} == {
        ("cfm", "-"),
        ("purr", "chunked"),
        ("purr", "full"),
        ("dfm", "chunked"),
        ("dfm", "full"),
    }
    assert {(r["method"], r["head"]) for r in sample} == {
        ("cfm", "-"),
        ("purr", "chunked"),
        ("purr", "full"),
        ("dfm", "chunked"),
        ("dfm", "full"),
    }
    for r in train:  # CPU: the largest tensor a step creates, measured; the same FLOPs
        assert r["largest_tensor_mib"] > 0 and r["peak_mem_gib"] is None
    for r in results:  # a sanity bound on the FLOP count: a tiny model's GEMMs can beat the
        # peak measured on one large GEMM (1.70 on a 2-core AMD EPYC), never by 3×
        assert 0 < r["utilisation"] < 3 and r["images_per_s"] > 0
        # the best peak of the run is at least every per-repetition peak
        assert r["util_vs_max_peak"] <= r["utilisation"] * (1 + 1e-9) or r["kind"] == "train"
    for r in sample:
        assert 0 < r["in_model_fraction"] <= 1
    # categorical heads cost more FLOPs than CFM's d-channel head
    flops = {r["method"]: r["gflop_per_step"] for r in train}
    assert len({r["gflop_per_step"] for r in train if r["method"] == "purr"}) == 1
    assert flops["purr"] > flops["cfm"] and flops["dfm"] > flops["cfm"]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results) and "gemm_peak_gflop_per_s" in rows[0]
    printed = capsys.readouterr().out
    assert "GEMM peak fp32" in printed and "GEMM peak bf16" in printed
    # both precisions of every trained and sampled variant, and their ratio to eager fp32
    for kind in (train, sample):
        keys = {(r["method"], r["head"], r["variant"], r.get("nfe")) for r in kind}
        assert {
            (r["method"], r["head"], r["variant"], r.get("nfe"), r["precision"]) for r in kind
        } == {(*k, p) for k in keys for p in ("fp32", "bf16")}
    assert "speed-up vs eager fp32" in printed and "bf16" in printed.split("speed-up")[1]


def test_head_bench_compares_three_losses_that_agree():
    from experiments import head_bench

    rows = head_bench.main(
        ["--rows", "64", "--codes", "300", "--dim", "16", "--reps", "1", "--chunk", "3000"]
    )
    by = {r["variant"]: r for r in rows}
    assert {"full", "ours"} <= set(by)
    for r in rows:
        assert r["ms"] > 0 and r["grad_rel_err"] < 1e-4 and r["loss_abs_err"] < 1e-4
    # the full path holds the 64×300 logits; ours holds 10 rows of them at a time
    assert by["full"]["largest_tensor_mib"] * 2**20 >= 64 * 300 * 4
    assert by["ours"]["largest_tensor_mib"] * 2**20 < 64 * 300 * 4
