#!/usr/bin/env bash
# Issue 7's GPU benchmark, prepared to run once on a lent GPU machine (the workplace's device tool):
#   run(command="bash experiments/gpu_bench.sh", carry=[".whl"])
# .whl holds the wheels the GPU image lacks (transformers 5.24.0, omegaconf 2.3.1, antlr4 4.9.3).
# Writes its logs and bench JSON under $OUT. Timeouts keep the whole run inside one 10-minute call.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:src
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
pair=(--pair llama3-8b-1b --device cuda --dtype bfloat16 --threads 8)
# 1. CUDA-graph replay samples what eager decoding samples (tiny models, on this GPU)
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_decoding.py -k "cuda_graph or pooled" 2>&1 \
  | tail -5 | tee "$OUT/pytest.txt"
# 2. the paper-shaped pair (Llama 3 8B, Llama 3.2 1B-shaped guide), bf16, CUDA graphs
timeout 250 python3 -m qsharp_exp.bench "${pair[@]}" --cuda-graphs --batches 1 8 32 --repeats 5 \
  --out "$OUT/bench_llama3_8b_1b_graphs.json" 2>&1 | tee "$OUT/graphs.log"
# 3. the same pair without CUDA graphs (eager), with the GPU busy time of each step. Eager steps are
# slow (32 ms for pi_ref): batches 1 and 8 with 3 repeats did not fit 180 s; this is what was measured.
timeout 180 python3 -m qsharp_exp.bench "${pair[@]}" --batches 8 --repeats 2 --skip-stages \
  --out "$OUT/bench_llama3_8b_1b_eager.json" 2>&1 | tee "$OUT/eager.log"
