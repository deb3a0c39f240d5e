#!/usr/bin/env bash
# On one GPU: star-graph G(2,5) at the paper's scale (GPT-2 small, experiment=star_graph_g25_paper) with
# hardware=gpu (plain PyTorch, bf16 autocast) and hardware=zero3 (DeepSpeed ZeRO-3 under torchrun, one
# rank), then a table of time and peak GPU memory per stage for both.
#
#   bash experiments/gpu_star_graph_scale.sh            # the paper's sizes (roughly an hour per setting)
#   QUICK=1 bash experiments/gpu_star_graph_scale.sh    # 1/8 of the steps and graphs, for a run of minutes
#   bash experiments/gpu_star_graph_scale.sh algo=cd    # extra overrides go to both runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/gpu_star_graph_scale}
QUICK_ARGS=()
if [[ "${QUICK:-0}" == "1" ]]; then
  QUICK_ARGS=(task.num_pretrain=25000 task.num_train=25000 task.num_test=5000 pretrain.steps=977 guide_train.steps=977)
fi
COMMON=(+experiment=star_graph_g25_paper progress=false "${QUICK_ARGS[@]}" "$@")

"$PY" -m qsharp_exp "${COMMON[@]}" hardware=gpu "cache_dir=$OUT/cache_gpu" "hydra.run.dir=$OUT/gpu"
"$(dirname "$PY")/torchrun" --nproc_per_node=1 -m qsharp_exp "${COMMON[@]}" hardware=zero3 \
  "cache_dir=$OUT/cache_zero3" "hydra.run.dir=$OUT/zero3"

"$PY" - "$OUT" <<'PYEOF'
import json, sys, torch
out = sys.argv[1]
print(f"GPU: {torch.cuda.get_device_name(0)}")
print(f"{'stage':<24}{'gpu: s':>10}{'GiB':>8}{'zero3: s':>12}{'GiB':>8}")
runs = {hw: json.load(open(f"{out}/{hw}/metrics.json")) for hw in ("gpu", "zero3")}
stages = [k[len("build_time_"):-2] for k in runs["gpu"] if k.startswith("build_time_")]
for stage in stages:
    row = [f"{stage:<24}"]
    for hw in ("gpu", "zero3"):
        m = runs[hw]
        row.append(f"{m.get(f'build_time_{stage}_s', float('nan')):>10.1f}{m.get(f'peak_gpu_gib_{stage}', float('nan')):>8.2f}")
    print("".join(row))
for hw, m in runs.items():
    print(f"{hw}: accuracy {m['accuracy']:.4f}, KL {m['kl_mean']:.4f}")
PYEOF
