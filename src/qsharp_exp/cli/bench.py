"""`python -m qsharp_exp.cli.bench`: the cost of guided decoding against its one-pass floor.

For a (pi_ref, guide) pair built from configs with random weights, times generation of exactly
`--new-tokens` tokens per row for pi_ref alone, CD and Q# with a V-type and a Q-type guide, at several
batch sizes; repeats are interleaved (pi_ref, then each guided variant, per repeat) so that drift
cancels, and medians are reported. Decoding is timed without the prompt's prefill (a run of all the
new tokens minus a run of the first token alone: what remains is new_tokens - 1 decoding steps).
Beside it the bench times, in isolation, one pi_ref decoding step and one guide pass of the per-step
shape, and reports

  floor_ratio    = (pi_ref step + guide pass) / pi_ref step   (what one guide pass per step costs)
  measured_ratio = guided / pi_ref-only decoding time
  efficiency     = floor_ratio / measured_ratio               (1 = at the floor)

On CUDA it also reports the GPU's busy time of the isolated step and pass (kernel time, from the
profiler): when the wall-clock time of a step is far above it, the step is bound by launching kernels
from Python, not by the GPU.

Writes bench.json (one record per configuration) and prints a table. `--pair default` is the workload
the project compares versions on: Llama-architecture pi_ref, vocabulary 8192, hidden 768, 12 layers,
12 heads, MLP 3072; the guide the same with 2 layers; 64-token prompts; 64 new tokens; temperature 1,
no top-p; 20 candidates; float32. `--pair llama3-8b-1b` is the paper's pair in shape (Llama 3 8B
guided by a Llama 3.2 1B-shaped guide), for a GPU with `--device cuda --dtype bfloat16`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from qsharp_exp.config import ArchConfig, GuideConfig, GuideTrainConfig, HardwareConfig
from qsharp_exp.guidance import RULES, Guidance
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import build_return_model
from qsharp_exp.padding import right_pad
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.sampling import (
    DecodeOptions,
    Draw,
    PaddingStats,
    PromptBatch,
    Sampler,
    SamplingSpec,
    Steering,
    Stops,
    generate,
)
from qsharp_exp.sampling.decoding import LMState, guide_state
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.engine import TrainingEnv
from qsharp_exp.training.return_learning import length_chunks, length_grouped_batches, train_return_model

NEVER = torch.tensor([-1])  # no stop token: every row generates exactly the requested tokens
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Workloads by name; any flag given on the command line overrides the pair's value.
PAIRS = {
    "default": dict(vocab=8192, hidden=768, layers=12, heads=12, kv_heads=None, mlp=3072,
                    guide_hidden=None, guide_layers=2, guide_mlp=None),
    # Llama 3 8B and a Llama 3.2 1B-shaped guide (the paper's 8:1 pair), random weights.
    "llama3-8b-1b": dict(vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8, mlp=14336,
                         guide_hidden=2048, guide_layers=16, guide_mlp=8192),
}


def vocabulary(size: int) -> PreTrainedTokenizerFast:
    """A tokenizer of `size` placeholder tokens: only its size matters to the models built here."""
    vocab = {f"t{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   pad_token="t0", eos_token="t1", bos_token="t2")


@contextlib.contextmanager
def _building_on(device: str, dtype: torch.dtype):
    """New modules are created on `device` in `dtype` (an 8B model never passes through host memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def architectures(args) -> tuple[ArchConfig, ArchConfig]:
    arch = ArchConfig(arch="llama", n_layer=args.layers, n_embd=args.hidden, n_head=args.heads,
                      n_kv_head=args.kv_heads, n_inner=args.mlp, max_positions=args.prompt_tokens + args.new_tokens + 8)
    guide = ArchConfig(**{**arch.__dict__, "n_layer": args.guide_layers, "n_embd": args.guide_hidden or args.hidden,
                          "n_inner": args.guide_mlp or args.mlp})
    return arch, guide


def build_pair(args, dtype: torch.dtype | None = None, guide_heads: tuple[str, ...] = ("v", "q"),
               with_pi_ref: bool = True) -> tuple:
    """pi_ref and a guide of each head type, random weights from fixed seeds, built on --device."""
    tokenizer = vocabulary(args.vocab)
    arch, guide_arch = architectures(args)
    with _building_on(args.device, dtype or DTYPES[args.dtype]):
        pi_ref = build_causal_lm(arch, tokenizer, seed=0).eval() if with_pi_ref else None
        guides = {head: build_return_model(GuideConfig(arch=guide_arch, head=head), tokenizer, seed=1).eval()
                  for head in guide_heads}
    return pi_ref, guides


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _busy_seconds(fn, repeats: int) -> float:
    """GPU kernel time of one call of `fn` (mean over `repeats`), from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    if not kernel_us:
        raise RuntimeError("the profiler recorded no GPU kernels")
    return kernel_us / 1e6 / repeats


@torch.no_grad()
def isolated_step_times(pi_ref, guide, batch: int, args) -> dict:
    """Median seconds of one pi_ref decoding step and one guide pass of the per-step shape, after a
    prompt plus half the new tokens in cache (and, on CUDA, their GPU busy time). Each is the loop's own
    step (the same states, CUDA graphs if enabled), repeated by rewinding the KV window."""
    device = pi_ref.device
    context = args.prompt_tokens + args.new_tokens // 2
    ids = torch.randint(3, args.vocab, (batch, context), device=device)
    mask = torch.ones_like(ids)
    capacity = args.prompt_tokens + args.new_tokens  # as generate sizes the windows: the same step shapes
    fast = dict(graphs=args.cuda_graphs, compile_steps=args.compile)
    ref = LMState(pi_ref, ids, mask, capacity, **fast)
    token = torch.randint(3, args.vocab, (batch,), device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)

    def ref_step():
        ref.advance(token, alive)
        ref.rewind()

    state = guide_state(guide, ids, mask, capacity, args.top_k, fast)
    candidates = torch.randint(3, args.vocab, (batch, args.top_k), device=device)

    def guide_pass():
        state.advance(token, alive)  # Q-type: the pass; V-type: the sampled token waits for the scoring pass
        state.values(candidates)  # Q-type: a gather; V-type: the pass
        state.rewind()

    for _ in range(2):  # warm-up (and, with CUDA graphs, capture)
        ref_step(), guide_pass()
    times = {"ref_step": _timed(ref_step, args.repeats * 3, device),
             "guide_pass": _timed(guide_pass, args.repeats * 3, device)}
    if device.type == "cuda" and not args.cuda_graphs:  # the profiler's kernel view of a graph is not per kernel
        times.update(ref_step_busy=_busy_seconds(ref_step, args.repeats), guide_pass_busy=_busy_seconds(
            guide_pass, args.repeats))
    return times


COLUMNS = ["algo", "guide_type", "batch", "tokens_per_s", "ms_per_step", "guide_forwards_per_step", "floor_ratio",
           "measured_ratio", "efficiency", "busy_floor_ratio"]


def print_records(records: list[dict]) -> None:
    for r in records:
        print(" | ".join(str(r.get(c, "-")) for c in COLUMNS), flush=True)


@torch.no_grad()
def run(args, pi_ref, guides) -> list[dict]:
    device = pi_ref.device
    torch.manual_seed(0)
    variants = [("pi_ref", None, None)] + [(algo, head, Guidance(guides[head], rule, 0.1, args.top_k))
                                           for head in ("v", "q") for algo, rule in RULES.items()]
    lengths = {"full": args.new_tokens, "first": 1}  # decoding time = full - first (the prefill cancels)
    records = []
    for batch in args.batches:
        ids = torch.randint(3, args.vocab, (batch, args.prompt_tokens), device=device)
        mask = torch.ones_like(ids)
        times: dict[tuple, list[float]] = {(a, h, n): [] for a, h, _ in variants for n in lengths}
        passes: dict[tuple, float] = {}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for algo, head, guidance in variants:
                for name, new_tokens in lengths.items():
                    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
                    generator = torch.Generator(device=device).manual_seed(repeat)
                    _sync(device)
                    start = time.perf_counter()
                    gen = generate(pi_ref, PromptBatch(ids, mask, Stops(NEVER, 0)), spec, generator,
                                   Steering(guide=guidance), DecodeOptions(args.cuda_graphs, args.compile))
                    _sync(device)
                    if repeat:
                        times[(algo, head, name)].append(time.perf_counter() - start)
                    if name == "full":  # guide passes after the prefill, per sampled token
                        passes[(algo, head)] = (gen.guide_passes - 1) / gen.tokens.shape[1] if guidance else 0.0
        decode = {key: statistics.median(full) - statistics.median(times[(*key[:2], "first")])
                  for key, full in times.items() if key[2] == "full"}
        base, base_full = decode[("pi_ref", None, "full")], statistics.median(times[("pi_ref", None, "full")])
        step_times = {head: isolated_step_times(pi_ref, guides[head], batch, args) for head in ("v", "q")}
        for algo, head, _ in variants:
            full = statistics.median(times[(algo, head, "full")])
            seconds = decode[(algo, head, "full")]
            record = {"algo": algo, "guide_type": head, "batch": batch, "seconds": round(full, 4),
                      "tokens_per_s": round(batch * args.new_tokens / full, 1),
                      "ms_per_step": round(1000 * seconds / (args.new_tokens - 1), 3),
                      "guide_forwards_per_step": round(passes[(algo, head)], 4),
                      "measured_ratio": round(seconds / base, 4), "end_to_end_ratio": round(full / base_full, 4)}
            if head is not None:
                isolated = step_times[head]
                floor = (isolated["ref_step"] + isolated["guide_pass"]) / isolated["ref_step"]
                record.update(pi_ref_step_ms=round(1000 * isolated["ref_step"], 3),
                              guide_pass_ms=round(1000 * isolated["guide_pass"], 3), floor_ratio=round(floor, 4),
                              efficiency=round(floor / record["measured_ratio"], 4))
                if "ref_step_busy" in isolated:
                    busy_floor = (isolated["ref_step_busy"] + isolated["guide_pass_busy"]) / isolated["ref_step_busy"]
                    record.update(pi_ref_step_busy_ms=round(1000 * isolated["ref_step_busy"], 3),
                                  guide_pass_busy_ms=round(1000 * isolated["guide_pass_busy"], 3),
                                  busy_floor_ratio=round(busy_floor, 4))
            records.append(record)
        print_records(records[-len(variants) :])  # as each batch size ends, so that a run cut short shows it
    return records


@torch.no_grad()
def collection_throughput(pi_ref, args) -> dict:
    """Samples per second and padding waste of batched sampling (the entry point of collection) on
    prompts of 1/2 to 1 x --prompt-tokens and responses that stop at one of vocab/32 stop tokens (mean
    length about 32 tokens, capped at --new-tokens)."""
    gen = torch.Generator().manual_seed(0)
    count = 4 * args.collection_batch
    lengths = torch.randint(args.prompt_tokens // 2, args.prompt_tokens + 1, (count,), generator=gen)
    prompts = [torch.randint(3, args.vocab, (int(n),), generator=gen).tolist() for n in lengths]
    stops = list(range(3, 3 + args.vocab // 32))
    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    stats = PaddingStats()
    hw = Hardware(HardwareConfig(device=args.device, num_threads=args.threads, cuda_graphs=args.cuda_graphs,
                                 compile_decoding=args.compile))
    _sync(hw.device)
    start = time.perf_counter()
    codec = PromptCodec(vocabulary(args.vocab), chat_template=False, stop_ids=stops, max_positions=None)
    sampler = Sampler(pi_ref, codec, spec, hw, args.collection_batch, show_progress=False)
    sampled = sampler.sample(prompts, Draw(0), stats=stats)
    seconds = time.perf_counter() - start
    return {"stage": "collection", "batch": args.collection_batch, "samples": len(sampled),
            "samples_per_s": round(len(sampled) / seconds, 2),
            "mean_response_tokens": round(sum(len(s.response) for s in sampled) / len(sampled), 1),
            "padding_waste": round(stats.waste(), 4), "prompt_waste": round(stats.prompt_waste(), 4),
            "decode_waste": round(stats.decode_waste(), 4)}


def training_throughput(args) -> dict:
    """Tokens per second and padding waste of return-model training (V-type guide, float32 weights,
    bf16 autocast when --dtype bfloat16) on 64 problems x 4 rollouts of varied lengths."""
    gen = torch.Generator().manual_seed(1)
    rollouts = []
    for problem in range(64):
        prompt = torch.randint(3, args.vocab, (int(torch.randint(args.prompt_tokens // 2, args.prompt_tokens + 1,
                                                                   (1,), generator=gen)),), generator=gen).tolist()
        for sample in range(4):
            n = int(torch.randint(4, args.new_tokens + 1, (1,), generator=gen))
            response = torch.randint(3, args.vocab, (n,), generator=gen).tolist()
            rollouts.append(Rollout(f"p{problem}", prompt, response, int(torch.randint(0, n, (1,), generator=gen)),
                                    float(sample % 2)))
    _, guides = build_pair(args, dtype=torch.float32, guide_heads=("v",), with_pi_ref=False)
    guide = guides["v"].train()
    cfg = GuideTrainConfig(steps=args.training_steps, batch_size=32, eval_every=10**6, val_fraction=0.05)
    hw = Hardware(HardwareConfig(device=args.device, bf16=args.dtype == "bfloat16", num_threads=args.threads))
    _sync(hw.device)
    start = time.perf_counter()
    train_return_model(guide, rollouts, cfg, 0, TrainingEnv(hw, 0, show_progress=False))
    _sync(hw.device)
    seconds = time.perf_counter() - start
    groups = [rollouts[i : i + 4] for i in range(0, len(rollouts), 4)]
    plan = length_grouped_batches([max(len(r.prompt) + len(r.response) for r in g) for g in groups], 8, 0, 0)
    real = slots = 0
    for problems in plan:  # an epoch of batches as training draws them, run in chunks as training runs them
        batch = [r for i in problems for r in groups[i]]
        for chunk in length_chunks([len(r.prompt) + len(r.response) for r in batch]):
            _, mask = right_pad([batch[i].prompt + batch[i].response for i in chunk], 0)
            real, slots = real + int(mask.sum()), slots + mask.numel()
    return {"stage": "guide_training", "steps": args.training_steps, "batch": 32,
            "tokens_per_s": round(args.training_steps * real / len(plan) / seconds, 1),
            "padding_waste": round(1 - real / slots, 4)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qsharp-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="default",
                        help="the (pi_ref, guide) shapes; the flags below override single values")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--mlp", type=int)
    parser.add_argument("--guide-hidden", type=int, help="default: --hidden")
    parser.add_argument("--guide-layers", type=int)
    parser.add_argument("--guide-mlp", type=int, help="default: --mlp")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay decoding steps as CUDA graphs (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoding steps' forwards")
    parser.add_argument("--skip-decoding", action="store_true", help="only collection and training throughput")
    parser.add_argument("--skip-stages", action="store_true", help="only decoding: no collection or training")
    parser.add_argument("--collection-batch", type=int, default=32)
    parser.add_argument("--training-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    for key, value in PAIRS[args.pair].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: decoding is timed as all new tokens minus the first")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pi_ref, guides = build_pair(args)
    machine = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
               "torch": torch.__version__, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "pi_ref_parameters": parameters(pi_ref), "guide_parameters": parameters(guides["v"].trunk),
               "workload": {k: v for k, v in vars(args).items() if k != "out"}}
    modes = "".join(name for flag, name in ((args.cuda_graphs, ", CUDA graphs"), (args.compile, ", compiled")) if flag)
    print(f"{machine['device']}, torch {torch.__version__}, pair {args.pair}, {args.dtype}{modes}")
    records: list[dict] = []
    stages: list[dict] = []

    def write() -> None:  # after each part, so that a run cut short keeps what it measured
        args.out.write_text(json.dumps({"machine": machine, "records": records, "stages": stages}, indent=2,
                                       default=str))

    if not args.skip_decoding:
        print(" | ".join(COLUMNS))
        records = run(args, pi_ref, guides)
        write()
    del guides
    if not args.skip_stages:
        stages.append(collection_throughput(pi_ref, args))
        del pi_ref
        if args.device == "cuda":
            torch.cuda.empty_cache()
        stages.append(training_throughput(args))
        write()
        for stage in stages:
            print(", ".join(f"{k}={v}" for k, v in stage.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
