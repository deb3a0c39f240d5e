#!/usr/bin/env bash
# The decoding benchmark on one GPU (docs/performance.md): the paper-shaped pair (Llama 3 8B guided by a
# Llama 3.2 1B-shaped guide, random weights), bf16, with CUDA graphs and eagerly.
#   bash experiments/gpu_bench.sh        (OUT=dir for the logs and bench JSON; default /tmp/gpu_bench)
# On a machine without package-index access, put wheels of what its Python lacks in .whl/ first.
# Timeouts keep the whole script within 10 minutes.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
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
timeout 250 qsharp-bench "${pair[@]}" --cuda-graphs --batches 1 8 32 --repeats 5 \
  --out "$OUT/bench_llama3_8b_1b_graphs.json" 2>&1 | tee "$OUT/graphs.log"
# 3. the same pair without CUDA graphs (eager), with the GPU busy time of each step; eager steps are slow,
# so batch 8 with 2 repeats only.
timeout 180 qsharp-bench "${pair[@]}" --batches 8 --repeats 2 --skip-stages \
  --out "$OUT/bench_llama3_8b_1b_eager.json" 2>&1 | tee "$OUT/eager.log"
