"""Does a trained return model know the value where an `arithmetic` solution is decided, and is that value the
success rate it claims?

    python experiments/arithmetic_decisive_tokens.py RUN_DIR [--round K] [--problems N] [--continuations C]
        [--out FILE.json]

RUN_DIR is a run of `task=arithmetic` that trained return models (its metrics.json names their stage
directories). For each of the first N test problems, the right solution is cut before each decisive token,
where the demonstrator that taught pi_ref slips (tasks/arithmetic.py) and where the arithmetic is done:

- `multiplier`: the `2` or `3` after "doubles"/"triples" (wrong: the other one);
- `sign`: the operator after "giving ... away" (wrong: `+`);
- `carry`: the first digit of a later step's first operand (wrong: that of the number the step before
  started from, where the first digits differ);
- `result`: the first digit of a result (wrong: the digit +- 1).

At each cut the return model values the right token and the wrong ones (`value`), and pi_ref's own
continuations from the same prefix and token are sampled (`--continuations`, with the run's sampling) and
scored: their success rate (`mc_rate`) is the value an exact return model would give. Printed per kind:
the share of (right, wrong) pairs ranked right (chance 0.5), mean value and Monte-Carlo rate of right and
wrong tokens, and the mean |value - rate|. docs/math.md reports these figures for the default.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from qsharp_exp.compose import load_run_config
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.sampling import Draw, Sampler
from qsharp_exp.sampling.decoding import SamplingSpec
from qsharp_exp.tasks import build_task

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


@dataclass(frozen=True)
class Cut:
    kind: str
    offset: int  # where the candidates' text starts in the solution
    right: str
    wrong: tuple[str, ...]


def decisive_cuts(solution: str) -> list[Cut]:
    """The decisive tokens of a right worked solution, with the wrong candidates of each."""
    cuts = []
    previous: tuple[int, int] | None = None  # (start, result) of the step before
    for m in EQUATION.finditer(solution):
        a, op, b, c = m[1], m[2], m[3], m[4]
        if previous is not None and str(previous[0])[0] != a[0]:
            cuts.append(Cut("carry", m.start(1), a[0], (str(previous[0])[0],)))
        if op == "*":
            cuts.append(Cut("multiplier", m.start(3), b, ({"2": "3", "3": "2"}[b],)))
        elif op == "-":
            cuts.append(Cut("sign", m.end(1), " -", (" +",)))
        cuts.append(Cut("result", m.start(4), c[0], tuple(str((int(c[0]) + d) % 10) for d in (1, 9))))
        previous = (int(a), int(c))
    return cuts


@torch.no_grad()
def values(model: ReturnModel, sequences: list[list[int]]) -> list[float]:
    """The model's expected return of each sequence's last token (equal lengths)."""
    ids = torch.tensor(sequences)
    out = model(ids, torch.ones_like(ids))
    last = out[:, -1] if model.cfg.head == "v" else out[torch.arange(len(sequences)), -2, ids[:, -1]]
    return model.distribution.mean(last).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory of task=arithmetic (with metrics.json)")
    parser.add_argument("--round", type=int, default=None, help="which round's return model (default: the last)")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--continuations", type=int, default=32,
                        help="pi_ref continuations per cut and candidate (0: values only)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a saved return model to probe instead of the run's (same tokenizer)")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="read the model without its fitted temperature (its values before calibration)")
    parser.add_argument("--out", type=Path, default=None, help="write every cut's figures to this JSON file")
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())
    rounds = sorted(int(k.removeprefix("dir_return_model_round")) for k in metrics if k.startswith("dir_return_model"))
    if not rounds and args.model is None:
        sys.exit(f"{args.run}: this run trained no return model (run algo=qsharp or algo=cd).")
    round_ = args.round or (rounds[-1] if rounds else 0)
    cfg = load_run_config(OmegaConf.load(args.run / ".hydra" / "config.yaml"))
    task = build_task(cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(Path(metrics["dir_pi_ref"]) / "model")
    model = ReturnModel.from_pretrained(args.model or Path(metrics[f"dir_return_model_round{round_}"]) / "model")
    model.eval()
    if args.uncalibrated:
        model.temperature.fill_(1.0)
    codec = PromptCodec(tokenizer, cfg.task.chat_template, [tokenizer.eos_token_id], None)

    def one_token(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SystemExit(f"{text!r} is {len(ids)} tokens of pi_ref's tokenizer: the cuts assume one")
        return ids[0]

    rows = []  # one per (cut, candidate)
    for problem in task.problems("test")[: args.problems]:
        prompt = codec.encode([problem], 0)[0]
        solution = task.target(problem)
        for cut in decisive_cuts(solution):
            prefix = prompt + tokenizer(solution[: cut.offset], add_special_tokens=False)["input_ids"]
            candidates = [cut.right, *cut.wrong]
            scored = values(model, [prefix + [one_token(c)] for c in candidates])
            for i, (text, value) in enumerate(zip(candidates, scored, strict=True)):
                rows.append({"problem": problem.id, "kind": cut.kind, "right": i == 0, "candidate": text,
                             "value": value, "prefix": prefix + [one_token(text)],
                             "text": solution[: cut.offset] + text})
    if args.continuations:
        mc_rates(rows, args.continuations, cfg, task, tokenizer, metrics)
    summary = summarise(rows)
    which = f"{args.model or f'of round {round_}'}" + (" without its temperature" if args.uncalibrated else "")
    print(f"return model {which}, {args.problems} test problems"
          + (f", {args.continuations} pi_ref continuations per candidate" if args.continuations else ""))
    for kind, s in summary.items():
        line = (f"  {kind:<10} pairs ranked right {s['ranked_right']:.3f} ({s['pairs']} pairs); value right "
                f"{s['value_right']:.3f}, wrong {s['value_wrong']:.3f}")
        if "mc_right" in s:
            line += (f"; MC rate right {s['mc_right']:.3f}, wrong {s['mc_wrong']:.3f}; mean |value - rate| "
                     f"{s['abs_error']:.3f}")
        print(line)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "cuts": [{k: v for k, v in r.items() if k != "prefix"}
                                                                     for r in rows]}, indent=1))
    return 0


def mc_rates(rows: list[dict], k: int, cfg, task, tokenizer, metrics: dict) -> None:
    """Each row's `mc_rate`: the success rate of `k` pi_ref continuations of its prefix and candidate."""
    pi_ref = AutoModelForCausalLM.from_pretrained(Path(metrics["dir_pi_ref"]) / "model").eval()
    codec = PromptCodec.for_model(tokenizer, pi_ref, cfg.task.chat_template)
    ev = cfg.eval
    sampler = Sampler(pi_ref, codec, SamplingSpec(ev.temperature, ev.top_p, ev.max_new_tokens, ev.paper_compat),
                      Hardware(cfg.hardware), ev.batch_size, desc="pi_ref continuations")
    prompts = [r["prefix"] for r in rows for _ in range(k)]
    sampled = sampler.sample(prompts, Draw(cfg.seed))
    problems = {p.id: p for p in task.problems("test")}
    for i, r in enumerate(rows):
        texts = [r["text"] + codec.decode(s.response) for s in sampled[i * k : (i + 1) * k]]
        r["mc_rate"] = sum(task.reward(problems[r["problem"]], t) for t in texts) / k


def summarise(rows: list[dict]) -> dict[str, dict]:
    by_cut: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_cut[(r["problem"], r["kind"], r["text"][: -len(r["candidate"])])].append(r)
    out: dict[str, dict] = {}
    for kind in sorted({r["kind"] for r in rows}):
        cuts = [c for key, c in by_cut.items() if key[1] == kind]
        pairs = [(c[0]["value"], w["value"]) for c in cuts for w in c[1:]]
        right = [c[0] for c in cuts]
        wrong = [w for c in cuts for w in c[1:]]
        s = {"pairs": len(pairs), "ranked_right": sum(a > b for a, b in pairs) / len(pairs),
             "value_right": _mean(r["value"] for r in right), "value_wrong": _mean(r["value"] for r in wrong)}
        if all("mc_rate" in r for r in right + wrong):
            s.update(mc_right=_mean(r["mc_rate"] for r in right), mc_wrong=_mean(r["mc_rate"] for r in wrong),
                     abs_error=_mean(abs(r["value"] - r["mc_rate"]) for r in right + wrong))
        out[kind] = {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


if __name__ == "__main__":
    sys.exit(main())
