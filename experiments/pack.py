"""Run a sweep's jobs several at a time on one machine: the lean launcher for a GPU that one
small run cannot fill (a Fashion DiT-Mini/1 run keeps an H200 a few percent busy).

    python experiments/pack.py --parallel 3 --sweep-dir outputs/sweeps/gpu -- \\
        seed=0,1,2 method=cfm,dfm,dfm-metric,purr budget.train_flops=1e15

Overrides with commas are swept as Hydra's basic sweeper does (the cartesian product, the
first key outermost); job i runs ``experiments/run.py <its overrides>
hydra.run.dir=<sweep dir>/<i>_<method>_seed<seed>``, the folder names ``-m`` would give, so
``analysis/*`` reads the result as any sweep. At most ``--parallel`` jobs run at once; each
logs to ``<run dir>.log``. A relaunch reuses finished runs and resumes the others (the
runner's own rules), so a preempted pack is restarted with the same command. ``--gpus 0,1``
deals the jobs round-robin over devices (CUDA_VISIBLE_DEVICES). Exit status 0 only if every
job finished; a table of the jobs, their status and wall time is printed either way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expand(overrides: list[str]) -> list[list[str]]:
    """Cartesian product of comma-separated override values (lists in [...] stay whole)."""
    axes = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise SystemExit(f"override {o!r} is not key=value")
        values = [value] if value.startswith("[") else value.split(",")
        axes.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)]


def job_name(num: int, job: list[str]) -> str:
    kv = dict(o.partition("=")[::2] for o in job)
    return f"{num}_{kv.get('method', 'purr')}_seed{kv.get('seed', '0')}"


def status_of(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return json.load(f).get("status", "unknown")
    except (OSError, ValueError):
        return "no summary"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parallel", type=int, default=3, help="jobs at once")
    ap.add_argument("--sweep-dir", required=True)
    ap.add_argument("--gpus", default=None, help="comma-separated device ids, dealt round-robin")
    ap.add_argument("overrides", nargs="*", help="run.py overrides, after --")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error("--parallel must be ≥ 1")
    jobs = expand(args.overrides)
    os.makedirs(args.sweep_dir, exist_ok=True)
    gpus = args.gpus.split(",") if args.gpus else None
    pending = list(enumerate(jobs))
    running: dict[int, tuple[subprocess.Popen, float, str]] = {}
    done: dict[int, tuple[int, float, str]] = {}
    print(f"pack: {len(jobs)} jobs, {args.parallel} at a time, in {args.sweep_dir}", flush=True)
    while pending or running:
        while pending and len(running) < args.parallel:
            num, job = pending.pop(0)
            name = job_name(num, job)
            run_dir = os.path.join(args.sweep_dir, name)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[num % len(gpus)]
            cmd = [sys.executable, os.path.join(REPO, "experiments", "run.py"), *job,
                   f"hydra.run.dir={run_dir}"]  # fmt: skip
            log = open(run_dir + ".log", "ab")  # noqa: SIM115 (closed when the job ends)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            log.close()
            running[num] = (proc, time.time(), run_dir)
            print(f"  started #{num} {name}: {' '.join(job)}", flush=True)
        time.sleep(0.2)
        for num, (proc, t0, run_dir) in list(running.items()):
            if proc.poll() is not None:
                done[num] = (proc.returncode, time.time() - t0, run_dir)
                del running[num]
                print(f"  ended #{num} {os.path.basename(run_dir)}: exit {proc.returncode}, "
                      f"{status_of(run_dir)}, {done[num][1]:.0f} s", flush=True)  # fmt: skip
    print(f"\n{'job':32s} {'exit':>4s} {'status':>12s} {'wall s':>8s}")
    failed = 0
    for num in sorted(done):
        code, wall, run_dir = done[num]
        status = status_of(run_dir)
        failed += code != 0 or status != "finished"
        print(f"{os.path.basename(run_dir):32s} {code:4d} {status:>12s} {wall:8.0f}")
    if failed:
        print(f"\n{failed} of {len(done)} jobs did not finish: see <run dir>.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
