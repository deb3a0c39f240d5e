"""`python -m qsharp_exp.cli.generate --pi-ref MODEL --guide DIR --prompt "..."`: guide one's own prompts with a
trained guide, through transformers' `generate` and the GuidanceLogitsProcessor, and print each guided
completion (its text and token ids) with its KL to pi_ref, one JSON line each on stdout.

Prompts come from `--prompt` (repeatable) or `--prompts FILE.jsonl` (one object per line with a "prompt"),
and are fed as they are (apply a chat template first if pi_ref expects one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from qsharp_exp.config import UserError


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qsharp-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--pi-ref", required=True, help="pi_ref: a hub id or a model folder (a run's pi_ref/model)")
    parser.add_argument("--guide", required=True, help="a trained return model folder (a run's return_model/model)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    parser.add_argument("--prompts", type=Path, help="a JSONL file with a 'prompt' per line")
    parser.add_argument("--rule", default="qsharp", help="the guidance rule: qsharp, cd, or another registered one")
    parser.add_argument("--eta", type=float, default=0.1, help="KL weight (smaller: stronger guidance)")
    parser.add_argument("--top-k", type=int, default=20, help="pi_ref's candidates the guide rescores")
    parser.add_argument("--non-candidates", default="keep", choices=["keep", "mask"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise UserError(f"--prompts {args.prompts}: no such file")
        for number, line in enumerate(args.prompts.read_text().splitlines(), 1):
            if line.strip():
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{args.prompts}, line {number}: not a JSON object with a 'prompt'") from None
    if not prompts:
        raise UserError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    return prompts


def check_args(args: argparse.Namespace) -> None:
    """What the arguments alone decide, before a model is loaded."""
    from qsharp_exp.guidance import RULES
    from qsharp_exp.hardware import check_device
    from qsharp_exp.models.lm import check_local_source
    from qsharp_exp.sampling.logits_processor import check_sampler_settings

    counts = {"--samples": args.samples, "--top-k": args.top_k, "--max-new-tokens": args.max_new_tokens}
    for flag, value in counts.items():
        if value < 1:
            raise UserError(f"{flag} {value} must be at least 1")
    check_sampler_settings(args.eta, args.temperature, args.top_p,
                           lambda key, value: f"--{key.replace('_', '-')} {value}")
    if args.rule not in RULES:
        raise UserError(f"--rule {args.rule} is not a guidance rule: use one of {', '.join(sorted(RULES))}")
    check_device(args.device, f"--device {args.device}", "use --device cpu")
    check_local_source(args.pi_ref, "--pi-ref")
    check_local_source(args.guide, "--guide")


def guided(args: argparse.Namespace, prompts: list[str]) -> list[dict]:
    """Each prompt's completions, with their KL to pi_ref (nats)."""
    from qsharp_exp.api import load_guide, load_pi_ref
    from qsharp_exp.guidance import GuidanceSettings
    from qsharp_exp.padding import left_pad
    from qsharp_exp.prompts import PromptCodec, check_top_k, checked_prompts, context_length
    from qsharp_exp.sampling.decoding import SamplingSpec
    from qsharp_exp.sampling.logits_processor import GuidanceLogitsProcessor
    from qsharp_exp.tasks import Problem

    pi_ref, tokenizer = load_pi_ref(args.pi_ref)
    guide = load_guide(args.guide)
    check_top_k(args.top_k, guide.vocab_size, "--top-k")
    if tokenizer.pad_token_id is None:  # prompts of several lengths are left-padded with EOS
        tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id
    spec = SamplingSpec(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    settings = GuidanceSettings(args.rule, args.eta, args.top_k, args.non_candidates)
    processor = GuidanceLogitsProcessor(guide.to(args.device), settings, tokenizer=tokenizer, spec=spec)
    # The pipeline's checks before sampling: the tokenizer represents each prompt, and each fits the context of
    # pi_ref and of the guide with --max-new-tokens to go.
    codec = PromptCodec.for_model(tokenizer, pi_ref, chat_template=False)
    contexts = [c for c in (codec.max_positions, context_length(guide.trunk.config)) if c]
    codec.max_positions = min(contexts) if contexts else None
    problems = [Problem(f"--prompt {i + 1}", text, "") for i, text in enumerate(prompts)]
    encoded = checked_prompts(codec, problems, args.max_new_tokens, "--max-new-tokens", f"--pi-ref {args.pi_ref}")
    jobs = [p for p in prompts for _ in range(args.samples)]
    ids, mask = left_pad([ids for ids in encoded for _ in range(args.samples)], pad)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        out = pi_ref.to(args.device).generate(input_ids=ids.to(args.device), attention_mask=mask.to(args.device),
                                              max_new_tokens=args.max_new_tokens, pad_token_id=pad,
                                              eos_token_id=tokenizer.eos_token_id, **processor.generate_kwargs())
    completions = [_until_stop(row, tokenizer.eos_token_id, pad) for row in out[:, ids.shape[1] :].tolist()]
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return [{"prompt": p, "completion": t, "completion_ids": c, "kl": round(k, 6)}
            for p, t, c, k in zip(jobs, texts, completions, processor.kl.tolist(), strict=True)]


def _until_stop(ids: list[int], eos: int | None, pad: int) -> list[int]:
    """A completion's tokens up to and including its EOS (generate pads rows that stopped early)."""
    return ids[: ids.index(eos) + 1] if eos is not None and eos in ids else [t for t in ids if t != pad]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON lines only; libraries' notices go
            check_args(args)                          # (DeepSpeed's, imported by accelerate) to stderr
            rows = guided(args, read_prompts(args))
        for row in rows:
            print(json.dumps(row))
    except (UserError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
