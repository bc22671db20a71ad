#!/usr/bin/env bash
# The GPU headline sweep in one prepared run: 3 seeds of cfm, dfm, dfm-metric
# and purr on the fashion_gpu preset, PARALLEL runs packed on the GPU at once
# (experiments/pack.py), then every figure: convergence, ranking vs budget (FLOP- and
# iteration-matched), temperature sweep, entropy maps, samples. Meant for one H200 within
# 10 minutes; the preset's budget is provisional until its GPU scan has been run.
#
#     OUT=outputs/gpu_sweep bash experiments/gpu_sweep.sh
#     TINY=1 OUT=/tmp/x EXTRA="data.root=… tokenizer.path=…" bash experiments/gpu_sweep.sh  # CPU check
#
# Missing Python packages (hydra-core, omegaconf, torch-fidelity, …) can be placed as wheels
# in .whl/ (installed to /tmp/site; nothing else on the machine is touched). Results go to
# $OUT (figures, CSVs) and $OUT/sweep (the run folders); a relaunch resumes or reuses runs.
#
# One failure costs only itself: a job that fails (say out of memory) leaves the others
# running, every figure is drawn from the runs that finished, a figure that fails leaves the
# rest, and the script names what failed and exits non-zero at the very end.
set -uo pipefail
OUT=${OUT:-outputs/gpu_sweep}
SWEEP=$OUT/sweep
PY=${PYTHON:-python3}
PARALLEL=${PARALLEL:-3}
SEEDS=${SEEDS:-0,1,2}
# the four the prepared script is timed for (3 seeds each in its 10 minutes on an H200);
# METHODS=… names others (python -c "import methods; print(methods.summary())" lists them)
METHODS=${METHODS:-cfm,dfm,dfm-metric,purr}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
if [ "${TINY:-0}" = 1 ]; then  # the same path with a budget of seconds (tests, CPU)
    SETTING="backbone=dit_nano_1 budget.train_flops=null budget.images=128 budget.batch_size=16
        eval.points=2 eval.spacing=log eval.num_samples=20 eval.batch_size=20 eval.steps=4
        eval.reference_n=32 eval.grid_samples=10 progress=false"
    TAU_ARGS="--taus 0.5,1.0"
    ENTROPY_ARGS="--samples 2 --times 3"
else
    SETTING="preset=fashion_gpu"
    TAU_ARGS=""
    ENTROPY_ARGS=""
fi
FAILED=()
# step NAME LOG CMD...: run one step, its output also in $OUT/LOG; a failure is noted, not fatal
step() {
    local name=$1 log=$2
    shift 2
    "$@" 2>&1 | tee "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then
        FAILED+=("$name (exit $rc, see $OUT/$log)")
        echo "!! $name failed (exit $rc); going on with what there is" >&2
    fi
}
t0=$(date +%s)
# shellcheck disable=SC2086  # word splitting of the override lists is intended
step sweep pack.log $PY experiments/pack.py --parallel "$PARALLEL" --sweep-dir "$SWEEP" -- \
    seed="$SEEDS" method="$METHODS" $SETTING ${EXTRA:-}
echo "sweep: $(( $(date +%s) - t0 )) s" | tee "$OUT/timing.txt"
# every figure from the runs that finished (each script names the runs it leaves out)
step convergence convergence.log $PY analysis/convergence_plot.py "$SWEEP" --out "$OUT"
step ranking ranking.log $PY analysis/ranking_vs_budget.py "$SWEEP" --out "$OUT"
# shellcheck disable=SC2086
step temperature temperature.log $PY analysis/temperature_sweep.py --sweep "$SWEEP" \
    --device auto --out "$OUT" $TAU_ARGS
# shellcheck disable=SC2086
step entropy entropy.log $PY analysis/entropy_maps.py --sweep "$SWEEP" --device auto \
    --out "$OUT" $ENTROPY_ARGS
step samples samples.log $PY analysis/sample_grids.py "$SWEEP" --out "$OUT"
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/timing.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "!! ${#FAILED[@]} step(s) failed:" >&2
    printf '!!   %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "every step finished; figures and CSVs in $OUT"
