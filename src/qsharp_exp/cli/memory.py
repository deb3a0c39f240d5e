"""`python -m qsharp_exp.cli.memory`: per-GPU memory of pi_ref + guide under each hardware config.

An estimate from parameter counts, not a measurement: frozen weights in bf16 (2 bytes per
parameter); the guide's training state as mixed-precision AdamW keeps it (fp32 weights or bf16
weights plus fp32 master copy, gradients, two fp32 moments: 16 bytes per parameter); the KV caches
of pi_ref and the guide while sampling. ZeRO-2 shards gradients and optimizer state over the GPUs,
ZeRO-3 the weights too, and offload moves weights and optimizer state to CPU memory (not counted). Activations of guide
training and framework overheads (CUDA context, allocator slack: budget 3-6 GiB) come on top.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class ModelSize:
    params: float
    layers: int
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # keys and values, bf16


# From the models' published configs (hidden sizes, layers, grouped-query heads) and parameter counts.
SIZES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": ModelSize(8.03e9, 32, 8, 128),
    "meta-llama/Llama-3.1-8B-Instruct": ModelSize(8.03e9, 32, 8, 128),
    "meta-llama/Meta-Llama-3-70B-Instruct": ModelSize(70.6e9, 80, 8, 128),
    "meta-llama/Llama-3.1-70B-Instruct": ModelSize(70.6e9, 80, 8, 128),
    "meta-llama/Llama-3.2-1B-Instruct": ModelSize(1.24e9, 16, 8, 64),
    "meta-llama/Llama-3.2-3B-Instruct": ModelSize(3.21e9, 28, 8, 128),
    "Qwen/Qwen2.5-7B-Instruct": ModelSize(7.62e9, 28, 4, 128),
    "Qwen/Qwen2.5-1.5B-Instruct": ModelSize(1.54e9, 28, 2, 128),
}
PAIRS = {  # conf/model/<name>.yaml: (pi_ref, guide)
    "llama3_8b_instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
    "llama31_8b_instruct": ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
    "llama32_3b_instruct": ("meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
    "qwen25_7b_instruct": ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
    "llama3_70b_instruct": ("meta-llama/Meta-Llama-3-70B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
    "llama31_70b_instruct": ("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
    "llama31_70b_instruct_guide3b": ("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"),
}
HARDWARE = ("gpu", "zero2", "zero3", "zero3_offload")


def estimate(pi_ref: ModelSize, guide: ModelSize, hardware: str, gpus: int, batch: int, tokens: int) -> dict:
    """GiB per GPU: pi_ref's weights, sampling (KV caches + guide weights), guide training state, peak."""
    if hardware == "gpu" and gpus != 1:
        raise ValueError("hardware=gpu is one GPU; use zero2/zero3 for several")
    sharded_ref = hardware in ("zero3", "zero3_offload")
    offloaded = hardware == "zero3_offload"
    ref_weights = 0.0 if offloaded else 2 * pi_ref.params / (gpus if sharded_ref else 1)
    # Each GPU samples its own batch: the KV caches are per rank, and the guide decodes from a full copy.
    kv = batch * tokens * (pi_ref.kv_bytes_per_token() + guide.kv_bytes_per_token())
    sampling = kv + 2 * guide.params
    p = guide.params
    training = {"gpu": 16 * p, "zero2": 2 * p + 14 * p / gpus, "zero3": 16 * p / gpus, "zero3_offload": 0.0}[hardware]
    out = {"pi_ref_weights": ref_weights, "sampling": sampling, "guide_training": training,
           "peak": ref_weights + max(sampling, training)}
    return {k: v / GIB for k, v in out.items()}


def table(batch: int, tokens: int, gpu_gib: float, gpu_counts: list[int]) -> str:
    lines = [f"Per-GPU memory estimate, GiB (sampling batch {batch} x {tokens} tokens; {gpu_gib:g} GiB GPUs; "
             "activations and overheads not included)", "",
             "| model pair | hardware | GPUs | pi_ref weights | sampling | guide training | peak | fits |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (ref_id, guide_id) in PAIRS.items():
        for hardware in HARDWARE:
            for gpus in ([1] if hardware == "gpu" else gpu_counts):
                e = estimate(SIZES[ref_id], SIZES[guide_id], hardware, gpus, batch, tokens)
                fits = "yes" if e["peak"] + 4 <= gpu_gib else "no"
                lines.append(f"| {name} | {hardware} | {gpus} | {e['pi_ref_weights']:.1f} | {e['sampling']:.1f} | "
                             f"{e['guide_training']:.1f} | {e['peak']:.1f} | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsharp-memory", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="sampling batch per GPU (eval.batch_size)")
    parser.add_argument("--tokens", type=int, default=1536, help="prompt + max_new_tokens")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU")
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8], help="GPU counts for the ZeRO configs")
    args = parser.parse_args(argv)
    print(table(args.batch, args.tokens, args.gpu_gib, args.gpus))
    print("\nfits: peak + 4 GiB of overhead within --gpu-gib. Lower eval.batch_size / collect.batch_size to "
          "shrink sampling; guide-training activations grow with guide_train.batch_size.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
