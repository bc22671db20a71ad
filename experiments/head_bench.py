"""The categorical loss alone, three ways, side by side: forward + backward of CE over K codes
from hidden states (N positions × D) and a linear head (K × D).

    python experiments/head_bench.py                          # K=16384, N=4096, D=384 (CPU)
    python experiments/head_bench.py --codes 256 --rows 4096  # the Fashion head

- ``full``: logits = h·Wᵀ + b materialised, F.cross_entropy (the path before methods/head.py);
- ``ours``: methods/head.py's chunked autograd function (z-loss off, to compare like with
  like; with z-loss on it costs the same: lse is computed anyway);
- ``torch``: torch's F.linear_cross_entropy with LinearCrossEntropyOptions() (torch ≥ 2.13,
  chunked over rows; no z-loss, so it cannot serve Purrception's loss by itself).

Variants run interleaved, median over repetitions; each also reports the largest tensor one
call creates (a dispatch-mode probe, outside the timing) and checks its loss and gradients
against ``full``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from experiments.benchmark import LargestTensor
from methods.head import DEFAULT_CHUNK, LinearHead


def variants(chunk: int):
    def full(h, w, b, c):
        return F.cross_entropy(h @ w.t() + b, c)

    def ours(h, w, b, c):
        head = LinearHead(w, b, 1, (1, h.shape[0]), chunk)
        return head.loss(h.view(1, -1, h.shape[1]), c.view(1, 1, -1), 0.0)[0]

    out = {"full": full, "ours": ours}
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        opts = torch.nn.LinearCrossEntropyOptions()

        def torch_chunked(h, w, b, c):
            return F.linear_cross_entropy(h, w, c, linear_bias=b, options=opts)

        out["torch"] = torch_chunked
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.rows, args.dim, generator=g).requires_grad_()
    w = (torch.randn(args.codes, args.dim, generator=g) * 0.05).requires_grad_()
    b = torch.zeros(args.codes).requires_grad_()
    c = torch.randint(0, args.codes, (args.rows,), generator=g)
    fns = variants(args.chunk)

    def call(fn):
        loss = fn(h, w, b, c)
        grads = torch.autograd.grad(loss, (h, w, b))
        return loss.detach(), grads

    ref_loss, ref_grads = call(fns["full"])
    rows = []
    times = {k: [] for k in fns}
    for name, fn in fns.items():
        with LargestTensor() as probe:
            loss, grads = call(fn)
        pairs = zip(grads, ref_grads, strict=True)
        err = max(((a - r).norm() / r.norm()).item() for a, r in pairs)
        loss_err = abs(loss.item() - ref_loss.item())
        rows.append(
            {
                "variant": name,
                "largest_tensor_mib": probe.bytes / 2**20,
                "loss_abs_err": loss_err,
                "grad_rel_err": err,
            }
        )
    for _ in range(args.reps):  # interleaved
        for name, fn in fns.items():
            t0 = time.perf_counter()
            call(fn)
            times[name].append(time.perf_counter() - t0)
    flops = 3 * 2 * args.rows * args.dim * args.codes
    print(
        f"N={args.rows} D={args.dim} K={args.codes}: {flops / 1e9:.1f} GFLOP per forward+backward"
    )
    head = ("variant", "ms", "GFLOP/s", "largest", "loss err", "grad err")
    print("{:8s} {:>8s} {:>8s} {:>10s} {:>9s} {:>9s}".format(*head))
    for r in rows:
        r["ms"] = 1e3 * statistics.median(times[r["variant"]])
        r["gflop_per_s"] = flops / r["ms"] / 1e6
        print(
            f"{r['variant']:8s} {r['ms']:8.1f} {r['gflop_per_s']:8.1f} "
            f"{r['largest_tensor_mib']:7.1f} MiB {r['loss_abs_err']:9.1e} "
            f"{r['grad_rel_err']:9.1e}"
        )
    return rows


if __name__ == "__main__":
    main()
