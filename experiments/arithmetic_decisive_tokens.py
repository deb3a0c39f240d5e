"""Does a trained return model know the value where an `arithmetic` solution is decided?

    python experiments/arithmetic_decisive_tokens.py RUN_DIR [--round K] [--problems N]

RUN_DIR is a run of `task=arithmetic` that trained return models (its metrics.json names their stage
directories). For each of the first N test problems, the reference solution is cut before each decisive
token: the multiplier after "doubles"/"triples" (the error pi_ref makes most), the first digit of the
operand of each sum or difference (copied from the problem), and the first digit of each result (the
arithmetic). At each cut the return model values the right token and wrong ones: the other multiplier
(2 for 3, 3 for 2), or the digits right +- 1. Printed: the share of (right, wrong) pairs in which the right
token is valued higher (chance 0.5), and the mean values of right and wrong tokens. docs/math.md reports
these figures for the default.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from qsharp_exp.compose import load_run_config
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.tasks import build_task

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
OTHER_MULTIPLIER = {"2": "3", "3": "2"}  # the task's "doubles" and "triples"


def decisive_cuts(solution: str) -> list[tuple[str, int]]:
    """(kind, character offset of the decisive token) for each equation of a worked solution."""
    cuts = []
    for m in EQUATION.finditer(solution):
        cuts.append(("multiplier" if m[2] == "*" else "operand", m.start(3)))
        cuts.append(("result", m.start(4)))
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
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--model", type=Path, default=None,
                        help="a saved return model to probe instead of the run's (same tokenizer)")
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())
    rounds = sorted(int(k.removeprefix("dir_return_model_round")) for k in metrics if k.startswith("dir_return_model"))
    if not rounds:
        sys.exit(f"{args.run}: this run trained no return model (run algo=qsharp or algo=cd).")
    round_ = args.round or rounds[-1]
    cfg = load_run_config(OmegaConf.load(args.run / ".hydra" / "config.yaml"))
    task = build_task(cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(Path(metrics["dir_pi_ref"]) / "model")
    model = ReturnModel.from_pretrained(args.model or Path(metrics[f"dir_return_model_round{round_}"]) / "model")
    model.eval()
    codec = PromptCodec(tokenizer, cfg.task.chat_template, [tokenizer.eos_token_id], None)
    known: dict[str, list[bool]] = defaultdict(list)
    mean_value: dict[str, list[list[float]]] = defaultdict(lambda: [[], []])  # right, wrong
    for problem in task.problems("test")[: args.problems]:
        prompt = codec.encode([problem], 0)[0]
        solution = task.target(problem)
        for kind, start in decisive_cuts(solution):
            prefix = prompt + tokenizer(solution[:start], add_special_tokens=False)["input_ids"]
            right = solution[start]
            wrong = [OTHER_MULTIPLIER[right]] if kind == "multiplier" else [str((int(right) + d) % 10) for d in (1, 9)]
            scored = values(model, [prefix + tokenizer.convert_tokens_to_ids([d]) for d in [right, *wrong]])
            known[kind] += [scored[0] > v for v in scored[1:]]
            mean_value[kind][0].append(scored[0])
            mean_value[kind][1].extend(scored[1:])
    which = args.model or f"of round {round_}"
    print(f"return model {which}: share of (right, wrong) pairs at decisive tokens valued right")
    for kind, hits in known.items():
        right, wrong = (sum(v) / len(v) for v in mean_value[kind])
        print(f"  {kind:<10} {sum(hits) / len(hits):.3f}  ({len(hits)} pairs; mean value right {right:.3f}, "
              f"wrong {wrong:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
