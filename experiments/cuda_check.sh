#!/usr/bin/env bash
# One-shot checks on a CUDA machine: the runner's tests with device=auto (→ CUDA, bf16
# autocast) and the benchmark tables at ImageNet-256 scale (SD vq-f8 latents: 32×32 grid,
# K=16384, d=4), eager and torch.compile'd, the chunked and the full-logit categorical head
# side by side. Sized to finish in about 10 minutes on one H200 (not yet run in this form).
#
#     OUT=outputs/cuda_check bash experiments/cuda_check.sh
#
# Logs and CSVs go to $OUT. Python packages missing on the machine can be placed as wheels
# in .whl/ (installed to /tmp/site first, nothing else on the machine is touched).
set -uo pipefail
OUT=${OUT:-outputs/cuda_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, \
torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())" | tee -a "$OUT/gpu.txt"

echo "== runner tests on CUDA"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/runner/test_runner.py tests/shared/test_optim.py \
    -k "not sweep" 2>&1 | tee "$OUT/pytest.log"

echo "== benchmark, eager (bf16 autocast)"
timeout 280 $PY experiments/benchmark.py --presets DiT-B/2,DiT-XL/2 --sample-presets all \
    --grid 32 --codes 16384 --code-dim 4 --batch 32 --heads chunked,full --out "$OUT/bench_eager.csv" 2>&1 \
    | tee "$OUT/bench_eager.log"

echo "== memory: DiT-B/2 at batch 256, chunked heads (target: < 80 GiB)"
timeout 120 $PY experiments/benchmark.py --presets DiT-B/2 --sample-presets none --grid 32 \
    --codes 16384 --code-dim 4 --batch 256 --heads chunked --reps 2 --steps-per-rep 1 \
    --out "$OUT/bench_b2_b256.csv" 2>&1 | tee "$OUT/bench_b2_b256.log"

[ "${SKIP_COMPILE:-0}" = 1 ] && exit 0
echo "== benchmark, torch.compile (DiT-B/2)"
timeout 170 $PY experiments/benchmark.py --presets DiT-B/2 --sample-presets none --compile \
    --grid 32 --codes 16384 --code-dim 4 --batch 128 --heads chunked,full --out "$OUT/bench_compile.csv" 2>&1 \
    | tee "$OUT/bench_compile.log"
