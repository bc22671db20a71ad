"""Throughput, FLOP utilisation and sampling speed of every method on one backbone.

    python experiments/benchmark.py                                  # precision as optim=auto
    python experiments/benchmark.py --precisions fp32,bf16 --compile # the precision table
    python experiments/benchmark.py --presets DiT-B/2,DiT-XL/2 --grid 32 --codes 16384
    python experiments/benchmark.py --compile --unfused             # + torch.compile, + loop AdamW
    python experiments/benchmark.py --heads chunked,full             # categorical heads: both paths

Measured in one process, side by side. Each repetition times a few training steps of every
method and variant in turn, and the GEMM peak (``torch.mm`` n×n×n at the model's dtype,
best of 3) between consecutive blocks, so every block of steps is bracketed by two peak
measurements: utilisation is the median over repetitions of (analytic FLOP/s ÷ the mean of
the two peaks around that block). On a noisy machine (this project's 2-core VM swung from 91
to 169 GFLOP/s within one run) numerator and denominator then move together;
``util_vs_max_peak`` divides by the best peak of the whole run instead, the stricter reading.
The training step is the trainer's own (``shared.optim``: fused AdamW, gradient clipping,
EMA). Sampling at several NFE reports images/s and the share of the time spent inside the
model (its utilisation against one peak measured just before). FLOPs are the backbone's
analytic count (training = 3 × forward). Prints tables and writes a CSV (``--out``).

``--precisions fp32,bf16`` times every variant in both (bf16 = autocast, as the trainer's
``optim.precision=bf16``); each block's utilisation is against the GEMM peak of its own
dtype, measured around it. ``auto`` (the default) is what ``optim.precision=auto`` resolves to
on this machine (shared/precision.py). Sampling is timed eager and, with ``--compile``,
compiled.

``--heads chunked,full`` times the categorical methods (purr, dfm) both ways side by side:
``chunked`` computes loss, posterior mean and draws from the head's hidden states
(``methods/head.py``), ``full`` materialises the (B, K, H, W) logits (the reference path).
Memory per variant: on CUDA the peak allocated during its timed steps; on CPU the largest
single tensor one step creates (the logit map, on the full path at large K), measured once
outside the timing.
"""

from __future__ import annotations

import argparse
import copy
import io
import resource
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import methods
from experiments.runner.train_loop import StepSettings, Trained, optimizer_step
from methods.records import records
from shared.backbone import build_dit
from shared.io import atomic_write_text
from shared.optim import build_adamw
from shared.precision import autocast, resolve


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device, dtype, n=2048, reps=3, warmup=True) -> float:
    """Best of ``reps`` timings of an n×n×n matmul on random data, in FLOP/s."""
    g = torch.Generator(device).manual_seed(n)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2 if warmup else 0):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class TimedModel:
    """Wraps a model to measure the wall time spent inside its forward calls."""

    def __init__(self, model, device):
        self.model = model
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, x, t, y, **kw):
        sync(self.device)
        t0 = time.perf_counter()
        out = self.model(x, t, y, **kw)
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def build(preset, name, codebook, grid, num_classes, device, compiled, fused, head="chunked"):
    kw = {"head": head} if records()[name].categorical else {}
    method = methods.build(name, codebook=codebook, **kw).to(device)
    model = build_dit(preset, input_size=grid, num_classes=num_classes, **method.model_kwargs())
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = build_adamw(model.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)
    net = torch.compile(model) if compiled else model
    return method, model, net, opt, ema


def random_batch_step(
    method, model, net, opt, ema, batch, k, grid, num_classes, device, use_bf16, gen
):
    """The trainer's own step (``experiments/runner/train_loop.optimizer_step``) on random
    codes/labels."""
    c = torch.randint(0, k, (batch, *grid), device=device, generator=gen)
    y = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
    trained = Trained(method, model, net, opt, ema)
    optimizer_step(trained, c, y, gen, StepSettings(1e-4, 1.0, 0.9999, use_bf16))


VARIANTS = {"eager": (False, True), "unfused": (False, False), "compiled": (True, True)}


class LargestTensor(TorchDispatchMode):
    """The largest tensor (bytes) any op creates while active: the logit map, if one is."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for output in out if isinstance(out, tuple | list) else (out,):
            if isinstance(output, torch.Tensor):
                self.bytes = max(self.bytes, output.numel() * output.element_size())
        return out


def head_of(name: str, heads: list[str]) -> list[str]:
    """The head variants a method is timed with (CFM has no categorical head)."""
    return heads if records()[name].categorical else ["-"]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", default="DiT-Mini/1,DiT-S/2,DiT-B/2")
    ap.add_argument(
        "--sample-presets",
        default="DiT-Mini/1,DiT-S/2",
        help="presets whose sampling is timed ('all' = every preset)",
    )
    ap.add_argument("--methods", default="cfm,purr,dfm")
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--code-dim", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps-per-rep", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--nfe", default="8,32,100")
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd training")
    ap.add_argument(
        "--unfused",
        action="store_true",
        help="also time training with torch's default (unfused) AdamW",
    )
    ap.add_argument(
        "--gemm-size",
        type=int,
        default=None,
        help="n of the n³ peak matmul (2048 on CPU, 8192 on CUDA)",
    )
    ap.add_argument(
        "--heads", default="chunked", help="categorical head paths to time: chunked, full or both"
    )
    ap.add_argument(
        "--precisions",
        default="auto",
        help="fp32, bf16 and/or auto (what optim.precision=auto resolves to here)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="outputs/benchmark.csv")
    args = ap.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    precs = list(dict.fromkeys(resolve(p, device.type) for p in args.precisions.split(",")))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    n_gemm = args.gemm_size or (8192 if device.type == "cuda" else 2048)
    grid, num_classes = (args.grid, args.grid), 10
    names = args.methods.split(",")
    if not set(names) <= set(records()):
        ap.error(
            f"--methods takes registered objectives ({', '.join(records())}), got {args.methods!r}"
        )
    heads = args.heads.split(",")
    if not set(heads) <= {"chunked", "full"}:
        ap.error(f"--heads takes chunked and/or full, got {args.heads!r}")
    variants = ["eager"] + ["unfused"] * args.unfused + ["compiled"] * args.compile
    if args.compile:  # every compiled model recompiles the one DiT.forward: allow them all
        torch._dynamo.config.recompile_limit = 16 * len(names) * len(heads) * len(precs)
    gen = torch.Generator(device).manual_seed(0)
    codebook = torch.randn(args.codes, args.code_dim, generator=torch.Generator().manual_seed(0))
    peaks = {p: [gemm_peak(device, dtypes[p], n_gemm)] for p in precs}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}), precisions {', '.join(precs)} (bf16 = autocast), "
        f"{torch.get_num_threads()} threads; GEMM {n_gemm}³ peak "
        + ", ".join(f"{p} {v[0] / 1e9:.1f}" for p, v in peaks.items())
        + " GFLOP/s"
    )
    results = []
    for preset in args.presets.split(","):
        built = {}
        for v in variants:
            compiled, fused = VARIANTS[v]
            for n in names:
                for hd in head_of(n, heads):
                    head = "chunked" if hd == "-" else hd
                    for p in precs:
                        built[v, n, hd, p] = build(
                            preset, n, codebook, grid, num_classes, device, compiled, fused, head
                        )

        def step(key, built=built):
            random_batch_step(
                *built[key],
                args.batch,
                args.codes,
                grid,
                num_classes,
                device,
                key[3] == "bf16",
                gen,
            )

        t0 = time.perf_counter()
        for key in built:  # warm-up (and compilation)
            for _ in range(2):
                step(key)
        print(f"{preset}: built and warmed up in {time.perf_counter() - t0:.0f} s", flush=True)
        largest = {}
        if device.type == "cpu":
            for key in built:
                with LargestTensor() as probe:
                    step(key)
                largest[key] = probe.bytes
        peak_mem = {key: [] for key in built}
        times = {key: [] for key in built}
        block_peaks = {key: [] for key in built}  # the GEMM rate around each timed block
        for _ in range(args.reps):  # interleaved: every variant sees the same machine state
            before = {}
            for p in precs:
                before[p] = gemm_peak(device, dtypes[p], n_gemm, warmup=False)
                peaks[p].append(before[p])
            for key in built:
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                for _ in range(args.steps_per_rep):
                    step(key)
                sync(device)
                times[key].append((time.perf_counter() - t0) / args.steps_per_rep)
                if device.type == "cuda":
                    peak_mem[key].append(torch.cuda.max_memory_allocated(device) / 2**30)
                p = key[3]
                after = gemm_peak(device, dtypes[p], n_gemm, warmup=False)
                peaks[p].append(after)
                block_peaks[key].append((before[p] + after) / 2)
                before[p] = after
        for (v, n, hd, p), ts in times.items():
            key = v, n, hd, p
            model = built[key][1]
            flops = model.train_flops(args.batch)
            t = statistics.median(ts)
            results.append(
                {
                    "kind": "train",
                    "preset": preset,
                    "method": n,
                    "variant": v,
                    "precision": p,
                    "head": hd,
                    "compiled": VARIANTS[v][0],
                    "fused_adamw": VARIANTS[v][1],
                    "batch": args.batch,
                    "params": model.num_params(),
                    "peak_mem_gib": max(peak_mem[key]) if peak_mem[key] else None,
                    "largest_tensor_mib": largest[key] / 2**20 if key in largest else None,
                    "gflop_per_step": flops / 1e9,
                    "step_s": t,
                    "images_per_s": args.batch / t,
                    "gflop_per_s": flops / t / 1e9,
                    "utilisation": statistics.median(
                        flops / tr / pk for tr, pk in zip(ts, block_peaks[key], strict=True)
                    ),
                }
            )
        if not (args.sample_presets == "all" or preset in args.sample_presets.split(",")):
            continue
        sample_variants = [v for v in variants if v != "unfused"]  # AdamW plays no part
        for nfe in [int(x) for x in args.nfe.split(",")]:
            rate_peak = {}
            for p in precs:
                rate_peak[p] = gemm_peak(device, dtypes[p], n_gemm, warmup=False)
                peaks[p].append(rate_peak[p])
            for v, n, hd, p in [
                (v, m, hd, p)
                for v in sample_variants
                for m in names
                for hd in head_of(m, heads)
                for p in precs
            ]:
                method, model, net = built[v, n, hd, p][:3]
                model.eval()
                timed = TimedModel(net, device)
                y = torch.arange(args.sample_batch, device=device) % num_classes
                with torch.no_grad(), autocast(device.type, p):
                    # warm-up at the timed batch: a compiled model then runs its final graph
                    method.sample(timed, args.sample_batch, grid, 2, y=y, generator=gen)
                    timed.seconds = 0.0
                    timed.calls = 0
                    sync(device)
                    t0 = time.perf_counter()
                    out = method.sample(timed, args.sample_batch, grid, nfe, y=y, generator=gen)
                    sync(device)
                total = time.perf_counter() - t0
                model.train()
                rate = model.flops(args.sample_batch) * out.nfe / total
                results.append(
                    {
                        "kind": "sample",
                        "preset": preset,
                        "method": n,
                        "variant": v,
                        "precision": p,
                        "head": hd,
                        "compiled": VARIANTS[v][0],
                        "batch": args.sample_batch,
                        "nfe": out.nfe,
                        "sample_s": total,
                        "images_per_s": args.sample_batch / total,
                        "in_model_fraction": timed.seconds / total,
                        "gflop_per_s": rate / 1e9,
                        "utilisation": rate / rate_peak[p],
                    }
                )
    for r in results:
        peak = max(peaks[r["precision"]])
        r["gemm_peak_gflop_per_s"] = peak / 1e9
        r["util_vs_max_peak"] = r["gflop_per_s"] * 1e9 / peak
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    report(results, peaks, mem, device)
    write(results, args.out)
    return results


def report(results, peaks, mem, device) -> None:
    for p, ps in peaks.items():
        print(
            f"\nGEMM peak {p}: best {max(ps) / 1e9:.1f}, median {statistics.median(ps) / 1e9:.1f}, "
            f"lowest {min(ps) / 1e9:.1f} GFLOP/s over {len(ps)} measurements"
        )
    print(f"peak memory {mem:.2f} GiB ({'CUDA allocated' if device.type == 'cuda' else 'RSS'})")
    train = [r for r in results if r["kind"] == "train"]
    print("\ntraining (median over interleaved repetitions; util = vs the peaks around each block)")
    print(
        f"{'preset':12s} {'method':6s} {'head':7s} {'variant':8s} {'prec':4s} {'GFLOP/step':>10s} "
        f"{'step s':>8s} {'img/s':>7s} {'GFLOP/s':>8s} {'util':>6s} {'vs max':>6s} "
        f"{'time/cfm':>8s} {'FLOP/cfm':>8s} {'memory':>12s}"
    )
    for r in train:
        same = ("preset", "variant", "precision")
        base = next(b for b in train if b["method"] == "cfm" and all(b[k] == r[k] for k in same))
        if r["peak_mem_gib"] is not None:
            mem = f"{r['peak_mem_gib']:.2f} GiB"
        else:
            mem = f"{r['largest_tensor_mib']:.1f} MiB max"
        print(
            f"{r['preset']:12s} {r['method']:6s} {r['head']:7s} {r['variant']:8s} "
            f"{r['precision']:4s} {r['gflop_per_step']:10.1f} {r['step_s']:8.3f} "
            f"{r['images_per_s']:7.1f} {r['gflop_per_s']:8.1f} {r['utilisation']:6.1%} "
            f"{r['util_vs_max_peak']:6.1%} {r['step_s'] / base['step_s']:8.3f} "
            f"{r['gflop_per_step'] / base['gflop_per_step']:8.3f} {mem:>12s}"
        )
    sample = [r for r in results if r["kind"] == "sample"]
    if sample:
        print("\nsampling (Euler; images/s at batch size; share of time inside the model)")
        print(
            f"{'preset':12s} {'method':6s} {'head':7s} {'variant':8s} {'prec':4s} {'NFE':>4s} "
            f"{'img/s':>8s} {'in model':>8s} {'util':>6s}"
        )
        for r in sample:
            print(
                f"{r['preset']:12s} {r['method']:6s} {r['head']:7s} {r['variant']:8s} "
                f"{r['precision']:4s} {r['nfe']:4d} {r['images_per_s']:8.1f} "
                f"{r['in_model_fraction']:8.1%} {r['utilisation']:6.1%}"
            )
    speedups(results)


def speedups(results) -> None:
    """Each variant's speed relative to eager fp32 of the same preset, method, head (and NFE):
    docs/performance.md's precision table."""
    ref = {}
    for r in results:
        if r["variant"] == "eager" and r["precision"] == "fp32":
            ref[r["kind"], r["preset"], r["method"], r["head"], r.get("nfe")] = r["images_per_s"]
    rows = [
        r
        for r in results
        if (r["kind"], r["preset"], r["method"], r["head"], r.get("nfe")) in ref
        and not (r["variant"] == "eager" and r["precision"] == "fp32")
    ]
    if not rows:
        return
    print("\nspeed-up vs eager fp32 (images/s ratio, measured side by side)")
    for r in rows:
        base = ref[r["kind"], r["preset"], r["method"], r["head"], r.get("nfe")]
        nfe = f" NFE {r['nfe']}" if r["kind"] == "sample" else ""
        print(
            f"{r['kind']:6s} {r['preset']:12s} {r['method']:6s} {r['head']:7s} {r['variant']:8s} "
            f"{r['precision']:4s}{nfe}: {r['images_per_s'] / base:.2f}×"
        )


def write(results, path) -> None:
    cols = sorted({k for r in results for k in r})
    buf = io.StringIO()
    buf.write(",".join(cols) + "\n")
    for r in results:
        buf.write(",".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + "\n")
    atomic_write_text(path, buf.getvalue())
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
