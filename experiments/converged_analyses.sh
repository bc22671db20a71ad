#!/usr/bin/env bash
# The sampling-side analyses of the converged CPU protocol (the default config), from the
# shipped seed-0 weights at 8e13 FLOPs: no training. Writes into analysis/results/fashion_cpu/
# analysis/ (or $OUT); every sweep resumes point by point, so a rerun redoes only what is
# missing. MaskGIT against carry-over Euler is measured on every dfm seed of a sweep ($SWEEP,
# when its runs are there: the shipped folder has seed 0 only).
#
#   experiments/converged_analyses.sh                    # about 11 min on 2 CPU cores
#   SWEEP=outputs/sweeps/fashion_cpu experiments/converged_analyses.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-analysis/results/fashion_cpu/analysis}
SHIPPED=${SHIPPED:-outputs/shipped}
SWEEP=${SWEEP:-}

"$PY" experiments/shipped_runs.py --out "$SHIPPED"
CFM=$SHIPPED/nano1-cfm-8e13-seed0
DFM=$SHIPPED/nano1-dfm-8e13-seed0
PURR=$SHIPPED/nano1-purr-8e13-seed0

echo "==> temperature: purr and masked dfm at five τ (the protocol's 1000 samples per point)"
"$PY" analysis/temperature_sweep.py "$PURR" "$DFM" --taus 0.5,0.75,1.0,1.25,1.5 --out "$OUT"
echo "==> entropy maps of purr and masked dfm"
"$PY" analysis/entropy_maps.py "$PURR" "$DFM" --out "$OUT"
echo "==> NFE: Euler and midpoint at 5–50 calls, dopri5 at four tolerances, MaskGIT for dfm"
"$PY" analysis/nfe_sweep.py "$CFM" "$PURR" "$DFM" --nfe 5,10,20,50 \
    --tolerances 1e-1,1e-2,1e-3,1e-4 --solvers euler,midpoint,dopri5,maskgit --out "$OUT"
echo "==> classifier-free guidance at four scales"
"$PY" analysis/guidance_sweep.py "$CFM" "$PURR" "$DFM" --scales 1,1.5,2,3 --out "$OUT"
echo "==> metric noise: each final FD at five sampling seeds, against the training seeds' spread"
"$PY" analysis/metric_noise.py "$CFM" "$DFM" "$PURR" --sweep analysis/results/fashion_cpu --out "$OUT"
if [ -n "$SWEEP" ]; then
    echo "==> MaskGIT against carry-over Euler on every dfm seed of $SWEEP"
    "$PY" analysis/sampler_check.py "$SWEEP"/*_dfm_seed* --solvers euler,maskgit --out "$OUT"
fi
