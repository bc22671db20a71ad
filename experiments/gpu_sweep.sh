#!/usr/bin/env bash
# The GPU headline sweep (issue #14) in one prepared run: 3 seeds of cfm, dfm, dfm-metric
# and purr on the fashion_gpu preset, PARALLEL runs packed on the GPU at once
# (experiments/pack.py), then every figure: convergence, ranking vs budget (FLOP- and
# iteration-matched), temperature sweep, entropy maps, samples. Meant for one H200 within
# 10 minutes; the preset's budget is provisional until the #14 scan has been run.
#
#     OUT=outputs/gpu_sweep bash experiments/gpu_sweep.sh
#     TINY=1 OUT=/tmp/x EXTRA="data.root=… tokenizer.path=…" bash experiments/gpu_sweep.sh  # CPU check
#
# Missing Python packages (hydra-core, omegaconf, torch-fidelity, …) can be placed as wheels
# in .whl/ (installed to /tmp/site; nothing else on the machine is touched). Results go to
# $OUT (figures, CSVs) and $OUT/sweep (the run folders); a relaunch resumes or reuses runs.
set -euo pipefail
OUT=${OUT:-outputs/gpu_sweep}
SWEEP=$OUT/sweep
PY=${PYTHON:-python3}
PARALLEL=${PARALLEL:-3}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-cfm,dfm,dfm-metric,purr}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if [ "${TINY:-0}" = 1 ]; then  # the same path with a budget of seconds (tests, CPU)
    SETTING="backbone=dit_nano_1 budget.train_flops=null budget.images=128 budget.batch_size=16
        eval.points=2 eval.spacing=log eval.num_samples=20 eval.batch_size=20 eval.steps=4
        eval.reference_n=32 eval.grid_samples=10 progress=false"
    TAU_ARGS="--taus 0.5,1.0"
else
    SETTING="preset=fashion_gpu"
    TAU_ARGS=""
fi
t0=$(date +%s)
# shellcheck disable=SC2086  # word splitting of the override lists is intended
$PY experiments/pack.py --parallel "$PARALLEL" --sweep-dir "$SWEEP" -- \
    seed="$SEEDS" method="$METHODS" $SETTING ${EXTRA:-} 2>&1 | tee "$OUT/pack.log"
echo "sweep: $(( $(date +%s) - t0 )) s" | tee "$OUT/timing.txt"
$PY analysis/convergence_plot.py "$SWEEP" --out "$OUT" 2>&1 | tee "$OUT/convergence.log"
$PY analysis/ranking_vs_budget.py "$SWEEP" --out "$OUT" 2>&1 | tee "$OUT/ranking.log"
# shellcheck disable=SC2086
$PY analysis/temperature_sweep.py --sweep "$SWEEP" --device auto --out "$OUT" $TAU_ARGS 2>&1 \
    | tee "$OUT/temperature.log"
$PY analysis/sample_grids.py "$SWEEP" --out "$OUT" 2>&1 | tail -1
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/timing.txt"
