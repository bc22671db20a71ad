"""Run a sweep's jobs several at a time on one machine: the lean launcher for a GPU that one
small run cannot fill (a Fashion DiT-Mini/1 run keeps an H200 a few percent busy).

    python experiments/pack.py --parallel 3 --sweep-dir outputs/sweeps/gpu -- \\
        seed=0,1,2 method=cfm,dfm,dfm-metric,purr budget.train_flops=1e15

Overrides are parsed by Hydra's own override parser, and swept as its basic sweeper does (the
cartesian product, the first key outermost; ``range(0,3)``, ``[0.9,0.95]`` lists and quoting
as in ``run.py -m``). Every job's config is composed and validated before any job starts:
one bad value or key typo refuses the whole pack (exit 2), listing every problem.

Job i runs ``experiments/run.py <its overrides> hydra.run.dir=<sweep dir>/<i>_<method>_seed
<seed>``, the folder names ``-m`` would give, so ``analysis/*`` reads the result as any sweep;
each logs to ``<run dir>.log``. A job is known by its set of overrides, not its position: a
relaunch with added or reordered values finds every existing run by the overrides it was
launched with (its ``.hydra/overrides.yaml``), reuses the finished ones, resumes the others
(the runner's own rules) and numbers only new jobs after the existing ones. So a preempted
pack is restarted with the same command, or a larger one.

The pack owns its jobs. SIGTERM or SIGINT is forwarded to every running job, which
checkpoints and exits; the pack waits for them, prints its table and exits 128 + signal.
If the pack itself dies (even by SIGKILL) its jobs get SIGTERM from the kernel (Linux
PR_SET_PDEATHSIG), so no run is left orphaned holding its lock. ``--gpus 0,1`` deals the
jobs round-robin over devices (CUDA_VISIBLE_DEVICES). On a CPU each job gets cores ÷
``--parallel`` threads (OMP_NUM_THREADS, printed at the start) unless OMP_NUM_THREADS is
set. Exit status 0 only if every job finished; the table of jobs, exit codes, status and
wall time is printed in every case (a job that run.py refused, e.g. a run another process is
already writing, shows "refused", not that run's status). Exit status 2: the pack refused to
start (a malformed override, an invalid job), with every reason on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import itertools
import json
import os
import signal
import subprocess
import sys
import time

from shared.refusal import refuse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_SET_PDEATHSIG = 1


def parse(overrides: list[str]) -> list[list[str]]:
    """Hydra's override grammar → the jobs (lists of ``key=value``), the first key outermost.
    A malformed override is refused with Hydra's own message."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:  # Hydra's message spans two lines: one here
        why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        refuse(f"override {getattr(e, 'override', '?')!r} is malformed: {why}")
    axes = []
    for o in parsed:
        key = o.get_key_element()
        values = (
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
        )
        axes.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)]


def compose_all(jobs: list[list[str]]) -> list:
    """Every job's config, validated (values, keys, input files) before any job starts."""
    from hydra import compose, initialize_config_dir

    from experiments.runner.checks import check_inputs, validation_errors
    from experiments.runner.config import register
    from experiments.runner.errors import RunError

    register()
    configs, problems = [], []
    with initialize_config_dir(os.path.join(REPO, "experiments", "conf"), version_base=None):
        for num, job in enumerate(jobs):
            try:
                cfg = compose("config", overrides=job)
                errors = validation_errors(cfg)
                if not errors:
                    check_inputs(cfg)
            except RunError as e:
                errors = [str(e)]
            except Exception as e:  # noqa: BLE001 (Hydra's composition errors, named per job)
                errors = [f"{type(e).__name__}: {e}"]
            configs.append(None if errors else cfg)
            problems += [f"job {num} ({' '.join(job)}): {err}" for err in errors]
    if problems:
        raise SystemExit("error: the pack starts no job, because:\n  " + "\n  ".join(problems))
    return configs


def job_key(job: list[str]) -> str:
    """A job's identity: its set of overrides (order-free)."""
    return json.dumps(sorted(job))


def existing_runs(sweep_dir: str) -> dict[str, str]:
    """job key → run folder, for the runs a pack (or ``-m``) launched in ``sweep_dir``, read
    from the overrides each was launched with."""
    import yaml

    found = {}
    for path in glob.glob(os.path.join(sweep_dir, "*", ".hydra", "overrides.yaml")):
        run_dir = os.path.dirname(os.path.dirname(path))
        try:
            with open(path) as f:
                job = [o for o in (yaml.safe_load(f) or []) if not o.startswith("hydra.")]
        except (OSError, yaml.YAMLError):
            continue
        found.setdefault(job_key(job), run_dir)
    return found


def plan(jobs, configs, sweep_dir: str) -> list[tuple[int, list[str], str]]:
    """(index, overrides, run folder) per job: the existing folder of a known override set,
    else a new one numbered after the highest existing number."""
    from experiments.runner.labels import method_label

    known = existing_runs(sweep_dir)
    taken = [
        int(os.path.basename(d).split("_", 1)[0])
        for d in known.values()
        if os.path.basename(d).split("_", 1)[0].isdigit()
    ]
    nxt = max(taken, default=-1) + 1
    out = []
    for job, cfg in zip(jobs, configs, strict=True):
        run_dir = known.get(job_key(job))
        if run_dir is None:
            run_dir = os.path.join(
                sweep_dir, f"{nxt}_{method_label(cfg, sampler=False)}_seed{cfg.seed}"
            )
            nxt += 1
        out.append((len(out), job, run_dir))
    return out


def status_of(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return json.load(f).get("status", "unknown")
    except (OSError, ValueError, AttributeError):
        return "no summary"


def job_status(code: int | None, run_dir: str) -> str:
    """A job's status: its run's, from summary.json, except for a job that run.py refused
    (exit 2) without marking the run failed. A refused launch changes nothing in the folder,
    so its summary.json is another launch's: the same run launched twice, the second refused
    by the run directory's lock, read "finished" once the first had finished."""
    status = status_of(run_dir)
    return "refused" if code == 2 and status != "failed" else status


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_job(parallel: int, gpus, env=os.environ) -> int | None:
    """Threads each job may use on a CPU: the cores this process may run on ÷ the jobs at once
    (at least 1). Torch's default, every core per process, oversubscribes a packed CPU: two
    DiT-Nano/1 jobs side by side on 2 cores ran at 69 images/s each with 2 threads each and
    at about 800 with 1 (one job alone: about 1000). None when the user set OMP_NUM_THREADS
    (theirs is kept) or the jobs run on GPUs (their host threads only launch kernels)."""
    if gpus or env.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // parallel)


def die_with_parent(parent: int):
    """preexec_fn: SIGTERM this child when the pack dies, however it dies (Linux)."""

    def arm():
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: the signal forwarding still holds
            return
        if os.getppid() != parent:  # the pack died before the prctl: do not run orphaned
            os._exit(1)

    return arm


class Stop:
    """SIGTERM / SIGINT to the pack: remember it; the main loop forwards it to the jobs."""

    def __init__(self):
        self.signum = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handle)

    def handle(self, signum, frame):
        self.signum = self.signum or signum


def table(done: dict, planned: dict) -> int:
    print(f"\n{'job':32s} {'exit':>5s} {'status':>12s} {'wall s':>8s}")
    failed = 0
    for num in sorted(planned):
        run_dir = planned[num]
        code, wall = done.get(num, (None, 0.0))
        status = job_status(code, run_dir)
        failed += code != 0 or status != "finished"
        shown = "-" if code is None else str(code)
        print(f"{os.path.basename(run_dir):32s} {shown:>5s} {status:>12s} {wall:8.0f}")
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parallel", type=int, default=3, help="jobs at once")
    ap.add_argument("--sweep-dir", required=True)
    ap.add_argument("--gpus", default=None, help="comma-separated device ids, dealt round-robin")
    ap.add_argument("overrides", nargs="*", help="run.py overrides, after --")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error("--parallel must be ≥ 1")
    jobs = parse(args.overrides)
    try:
        configs = compose_all(jobs)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    os.makedirs(args.sweep_dir, exist_ok=True)
    jobs = plan(jobs, configs, args.sweep_dir)
    gpus = args.gpus.split(",") if args.gpus else None
    pending = list(jobs)
    planned = {num: run_dir for num, _, run_dir in jobs}
    running: dict[int, tuple[subprocess.Popen, float, str]] = {}
    done: dict[int, tuple[int, float]] = {}
    stop = Stop()
    threads = threads_per_job(args.parallel, gpus)
    print(f"pack: {len(jobs)} jobs, {args.parallel} at a time, in {args.sweep_dir}", flush=True)
    if threads is not None:
        print(
            f"pack: {threads} CPU thread(s) per job (OMP_NUM_THREADS; cores ÷ --parallel; "
            f"set OMP_NUM_THREADS to choose)",
            flush=True,
        )
    forwarded = False
    while (pending and stop.signum is None) or running:
        while pending and stop.signum is None and len(running) < args.parallel:
            num, job, run_dir = pending.pop(0)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[num % len(gpus)]
            if threads is not None:
                env.update(dict.fromkeys(THREAD_VARS, str(threads)))
            cmd = [
                sys.executable,
                os.path.join(REPO, "experiments", "run.py"),
                *job,
                f"hydra.run.dir={run_dir}",
            ]
            log = open(run_dir + ".log", "ab")  # noqa: SIM115 (closed when the job ends)
            # its own process group: a Ctrl-C reaches the pack alone, which forwards it once
            # (the runner takes a second SIGINT as "stop now")
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                preexec_fn=die_with_parent(os.getpid()),
                process_group=0,
            )
            log.close()
            running[num] = (proc, time.time(), run_dir)
            print(f"  started #{num} {os.path.basename(run_dir)}: {' '.join(job)}", flush=True)
        if stop.signum is not None and not forwarded:
            name = signal.Signals(stop.signum).name
            print(
                f"pack: {name}: stopping {len(running)} running jobs (they checkpoint); "
                f"{len(pending)} not started",
                flush=True,
            )
            for proc, _, _ in running.values():
                proc.send_signal(stop.signum)
            forwarded = True
        time.sleep(0.2)
        for num, (proc, t0, run_dir) in list(running.items()):
            if proc.poll() is not None:
                done[num] = (proc.returncode, time.time() - t0)
                del running[num]
                print(
                    f"  ended #{num} {os.path.basename(run_dir)}: exit {proc.returncode}, "
                    f"{job_status(proc.returncode, run_dir)}, {done[num][1]:.0f} s",
                    flush=True,
                )
    failed = table(done, planned)
    if failed:
        print(
            f"\n{failed} of {len(planned)} jobs did not finish: see <run dir>.log", file=sys.stderr
        )
    if stop.signum is not None:
        return 128 + stop.signum
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
