"""What each piece of the star-graph setting buys: the return model's start (scratch / base model / pi_ref)
times its data (Algorithm 1 / the published code's pairs), each guiding pi_ref with CD and Q#.

    python experiments/star_graph_ablation.py [--out DIR] [override ...]

Every variant runs as `python -m qsharp_exp -m algo=cd,qsharp <variant> <overrides>` against the shared
stage cache (pi_ref, the base model and shared rollouts are built once), then a Markdown table of guided
accuracy and KL is printed and written to DIR/ablation.md (docs/star_graph.md shows the measured one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> overrides
    "base, Algorithm 1": [],
    "scratch, Algorithm 1": ["model.guide.init=scratch"],
    "pi_ref, Algorithm 1": ["model.guide.init=pi_ref"],
    "base, pairs": ["collect.mode=pairs", "collect.rounds=1"],
    "scratch, pairs": ["model.guide.init=scratch", "collect.mode=pairs", "collect.rounds=1"],
    "pi_ref, pairs": ["model.guide.init=pi_ref", "collect.mode=pairs", "collect.rounds=1"],
}


def run(name: str, overrides: list[str], out: Path) -> dict[str, dict]:
    sweep = out / name.replace(", ", "_").replace(" ", "_")
    merged = {o.split("=", 1)[0]: o for o in overrides}  # a later value of a key wins
    command = [sys.executable, "-m", "qsharp_exp", "-m", "algo=cd,qsharp", *merged.values(), f"hydra.sweep.dir={sweep}"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    return {m["algo"]: m for m in metrics}


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| return model starts from, data | CD accuracy (KL) | Q# accuracy (KL) | rounds |", "|---|---|---|---|"]
    for name, by_algo in results.items():
        cells = [f"{by_algo[a]['accuracy']:.3f} ({by_algo[a]['kl_mean']:.3f})" for a in ("cd", "qsharp")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {by_algo['qsharp'].get('guide_round', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "multirun" / "star_graph_ablation")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every variant")
    args = parser.parse_intermixed_args(argv)
    results = {name: run(name, [*extra, *args.overrides], args.out)
               for name, extra in VARIANTS.items() if args.only is None or name in args.only}
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
