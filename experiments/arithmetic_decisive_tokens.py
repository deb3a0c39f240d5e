"""Does a trained return model know the value where an `arithmetic` solution is decided?

    python experiments/arithmetic_decisive_tokens.py RUN_DIR [--round K] [--problems N]

RUN_DIR is a run of `task=arithmetic` that trained return models (its metrics.json names their stage
directories). For each of the first N test problems, the reference solution is cut before each decisive
token: the multiplier after "doubles"/"triples" (the error pi_ref makes most), the operand of each sum or
difference (copied from the problem), and the first digit of each result (the arithmetic). At each cut the
return model scores the right token and two wrong digits (right +- 1); a cut counts as known when the
right token's value is above both. Chance is about 1/3. docs/math.md reports these figures for the default.
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

from qsharp_exp.config import load_run_config
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.tasks import build_task

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


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
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())
    rounds = sorted(int(k.removeprefix("dir_return_model_round")) for k in metrics if k.startswith("dir_return_model"))
    if not rounds:
        sys.exit(f"{args.run}: this run trained no return model (run algo=qsharp or algo=cd).")
    round_ = args.round or rounds[-1]
    cfg = load_run_config(OmegaConf.load(args.run / ".hydra" / "config.yaml"))
    task = build_task(cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(Path(metrics["dir_pi_ref"]) / "model")
    model = ReturnModel.from_pretrained(Path(metrics[f"dir_return_model_round{round_}"]) / "model").eval()
    codec = PromptCodec(tokenizer, cfg.task.chat_template, [tokenizer.eos_token_id], None)
    known: dict[str, list[bool]] = defaultdict(list)
    for problem in task.problems("test")[: args.problems]:
        prompt = codec.encode([problem], 0)[0]
        solution = task.target(problem)
        for kind, start in decisive_cuts(solution):
            prefix = prompt + tokenizer(solution[:start], add_special_tokens=False)["input_ids"]
            right = solution[start]
            digits = [right] + [str((int(right) + d) % 10) for d in (1, 9)]
            scored = values(model, [prefix + tokenizer.convert_tokens_to_ids([d]) for d in digits])
            known[kind].append(all(scored[0] > v for v in scored[1:]))
    print(f"return model of round {round_}: share of decisive tokens where the right one is valued highest")
    for kind, hits in known.items():
        print(f"  {kind:<10} {sum(hits) / len(hits):.3f}  ({len(hits)} cuts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
