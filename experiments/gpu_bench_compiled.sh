#!/usr/bin/env bash
# The GPU decoding benchmark of experiments/gpu_bench.sh with the decoding steps compiled (torch.compile)
# and replayed as CUDA graphs. Batch 8 only: every step shape compiles once (a minute or more for an 8B
# pi_ref).   bash experiments/gpu_bench_compiled.sh   (wheels in .whl/ are installed first, if any)
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=16
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
export PYTHONPATH=/tmp/site:src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
# compiled + graphed steps sample what eager steps sample (tiny models, on this GPU)
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_decoding.py -m slow -k "compiled and cuda" 2>&1 \
  | tail -3 | tee "$OUT/pytest.txt"
timeout 320 qsharp-bench --pair llama3-8b-1b --device cuda --dtype bfloat16 --threads 8 --cuda-graphs \
  --compile --batches 8 --repeats 5 --skip-stages --out "$OUT/bench_llama3_8b_1b_compiled.json" 2>&1 \
  | grep -v Warning | tee "$OUT/compiled.log"
