"""`python -m qsharp_exp.bench`: the cost of guided decoding against its one-pass floor.

For a (pi_ref, guide) pair built from configs with random weights, times generation of exactly
`--new-tokens` tokens per row for pi_ref alone, CD and Q# with a V-type and a Q-type guide, at several
batch sizes; repeats are interleaved (pi_ref, then each guided variant, per repeat) so that drift
cancels, and medians are reported. Beside the end-to-end time it times, in isolation, one pi_ref
decoding step and one guide pass of the per-step shape, and reports

  floor_ratio    = (pi_ref step + guide pass) / pi_ref step   (what one guide pass per step costs)
  measured_ratio = guided / pi_ref-only, end to end
  efficiency     = floor_ratio / measured_ratio               (1 = at the floor)

Writes bench.json (one record per configuration) and prints a table. The default workload is the one
the project compares versions on: Llama-architecture pi_ref, vocabulary 8192, hidden 768, 12 layers,
12 heads, MLP 3072; the guide the same with 2 layers; 64-token prompts; 64 new tokens; temperature 1,
no top-p; 20 candidates; float32.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import DynamicCache, PreTrainedTokenizerFast

from qsharp_exp.config import ArchConfig, GuideConfig, GuideTrainConfig, HardwareConfig
from qsharp_exp.decoding import Guidance, GuideState, SamplingSpec, generate, positions
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import build_return_model
from qsharp_exp.rollouts import PaddingStats, sample_many
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.train_guide import batch_tensors, length_grouped_batches, train_return_model

NEVER = torch.tensor([-1])  # no stop token: every row generates exactly the requested tokens


def vocabulary(size: int) -> PreTrainedTokenizerFast:
    """A tokenizer of `size` placeholder tokens: only its size matters to the models built here."""
    vocab = {f"t{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   pad_token="t0", eos_token="t1", bos_token="t2")


def build_pair(args) -> tuple:
    tokenizer = vocabulary(args.vocab)
    arch = ArchConfig(arch="llama", n_layer=args.layers, n_embd=args.hidden, n_head=args.heads, n_inner=args.mlp,
                      max_positions=args.prompt_tokens + args.new_tokens + 8)
    pi_ref = build_causal_lm(arch, tokenizer, seed=0).eval()
    guides = {}
    for head in ("v", "q"):
        guide_arch = ArchConfig(**{**arch.__dict__, "n_layer": args.guide_layers})
        guides[head] = build_return_model(GuideConfig(arch=guide_arch, head=head), tokenizer, seed=1).eval()
    return pi_ref, guides


def _truncate(cache: DynamicCache, length: int) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def isolated_step_times(pi_ref, guide, batch: int, args) -> tuple[float, float]:
    """Median seconds of one pi_ref decoding step and one guide pass of the per-step shape, after a
    prompt plus half the new tokens in cache."""
    context = args.prompt_tokens + args.new_tokens // 2
    ids = torch.randint(3, args.vocab, (batch, context))
    mask = torch.ones_like(ids)
    cache = DynamicCache(config=pi_ref.config)
    pi_ref(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=cache, use_cache=True)
    token = torch.randint(3, args.vocab, (batch, 1))
    step_mask = torch.ones(batch, context + 1, dtype=torch.long)
    pos = torch.full((batch, 1), context)

    def ref_step():
        pi_ref(input_ids=token, attention_mask=step_mask, position_ids=pos, cache=cache, use_cache=True)
        _truncate(cache, context)

    state = GuideState(guide, ids, mask)
    candidates = torch.randint(3, args.vocab, (batch, args.top_k))
    alive = torch.ones(batch, dtype=torch.bool)
    length = state.cache.get_seq_length()

    def guide_pass():
        if guide.cfg.head == "v":
            state.advance(token.squeeze(1), alive)  # the sampled token goes into the scoring pass
            state.values(candidates)
        else:
            state.advance(token.squeeze(1), alive)
        _truncate(state.cache, length)
        state.mask, state.next_pos = mask.clone(), mask.sum(-1)

    ref_step(), guide_pass()  # warm-up
    return _timed(ref_step, args.repeats * 3), _timed(guide_pass, args.repeats * 3)


@torch.no_grad()
def run(args) -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    pi_ref, guides = build_pair(args)
    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    variants = [("pi_ref", None, None)] + [(algo, head, Guidance(guides[head], algo, 0.1, args.top_k))
                                           for head in ("v", "q") for algo in ("cd", "qsharp")]
    records = []
    for batch in args.batches:
        ids = torch.randint(3, args.vocab, (batch, args.prompt_tokens))
        mask = torch.ones_like(ids)
        times: dict[tuple, list[float]] = {(a, h): [] for a, h, _ in variants}
        passes: dict[tuple, float] = {}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for algo, head, guidance in variants:
                start = time.perf_counter()
                gen = generate(pi_ref, ids, mask, spec, NEVER, 0, torch.Generator().manual_seed(repeat), guidance)
                if repeat:
                    times[(algo, head)].append(time.perf_counter() - start)
                passes[(algo, head)] = (gen.guide_passes - 1) / gen.tokens.shape[1] if guidance else 0.0
        base = statistics.median(times[("pi_ref", None)])
        step_times = {head: isolated_step_times(pi_ref, guides[head], batch, args) for head in ("v", "q")}
        for algo, head, _ in variants:
            median = statistics.median(times[(algo, head)])
            record = {"algo": algo, "guide_type": head, "batch": batch, "seconds": round(median, 4),
                      "tokens_per_s": round(batch * args.new_tokens / median, 1),
                      "ms_per_step": round(1000 * median / args.new_tokens, 3),
                      "guide_forwards_per_step": passes[(algo, head)],
                      "measured_ratio": round(median / base, 4)}
            if head is not None:
                ref_step, guide_pass = step_times[head]
                floor = (ref_step + guide_pass) / ref_step
                record.update(pi_ref_step_ms=round(1000 * ref_step, 3), guide_pass_ms=round(1000 * guide_pass, 3),
                              floor_ratio=round(floor, 4), efficiency=round(floor / record["measured_ratio"], 4))
            records.append(record)
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
    hw = Hardware(HardwareConfig(num_threads=args.threads))
    start = time.perf_counter()
    sampled = sample_many(pi_ref, prompts, spec, stops, 0, hw, 0, args.collection_batch, show_progress=False,
                          stats=stats)
    seconds = time.perf_counter() - start
    return {"stage": "collection", "batch": args.collection_batch, "samples": len(sampled),
            "samples_per_s": round(len(sampled) / seconds, 2),
            "mean_response_tokens": round(sum(len(s.response) for s in sampled) / len(sampled), 1),
            "padding_waste": round(stats.waste(), 4), "decode_waste": round(1 - stats.decode_tokens /
                                                                            stats.decode_slots, 4)}


def training_throughput(guide, args) -> dict:
    """Tokens per second and padding waste of return-model training on rollouts of varied lengths."""
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
    cfg = GuideTrainConfig(steps=args.training_steps, batch_size=32, eval_every=10**6, val_fraction=0.05)
    hw = Hardware(HardwareConfig(num_threads=args.threads))
    start = time.perf_counter()
    train_return_model(guide, rollouts, cfg, 0, hw, 0, show_progress=False)
    seconds = time.perf_counter() - start
    groups = [rollouts[i : i + 4] for i in range(0, len(rollouts), 4)]
    real = slots = 0
    for batch in length_grouped_batches(groups, 8, 0, 0):  # an epoch of batches as training draws them
        _, mask, *_ = batch_tensors(guide, [r for i in batch for r in groups[i]], 0)
        real, slots = real + int(mask.sum()), slots + mask.numel()
    per_step = real / len(length_grouped_batches(groups, 8, 0, 0))
    return {"stage": "guide_training", "steps": args.training_steps, "batch": 32,
            "tokens_per_s": round(args.training_steps * per_step / seconds, 1),
            "padding_waste": round(1 - real / slots, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qsharp_exp.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--mlp", type=int, default=3072)
    parser.add_argument("--guide-layers", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-decoding", action="store_true", help="only collection and training throughput")
    parser.add_argument("--collection-batch", type=int, default=32)
    parser.add_argument("--training-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    records = [] if args.skip_decoding else run(args)
    torch.set_num_threads(args.threads)
    pi_ref, guides = build_pair(args)
    stages = [collection_throughput(pi_ref, args), training_throughput(guides["v"].train(), args)]
    machine = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
               "torch": torch.__version__, "workload": {k: v for k, v in vars(args).items() if k != "out"}}
    args.out.write_text(json.dumps({"machine": machine, "records": records, "stages": stages}, indent=2,
                                   default=str))
    cols = ["algo", "guide_type", "batch", "tokens_per_s", "ms_per_step", "guide_forwards_per_step", "floor_ratio",
            "measured_ratio", "efficiency"]
    print(" | ".join(cols))
    for r in records:
        print(" | ".join(str(r.get(c, "-")) for c in cols))
    for stage in stages:
        print(", ".join(f"{k}={v}" for k, v in stage.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
