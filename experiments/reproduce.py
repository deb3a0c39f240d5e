"""Reproduce the paper's main table (Table 2), its Qwen 2.5 rows or the star-graph comparison with one command.

    python experiments/reproduce.py table2 [--dry-run] [override ...]
    python experiments/reproduce.py qwen [--dry-run] [override ...]
    python experiments/reproduce.py star-graph [--paper-scale] [--dry-run] [override ...]

Each job is a preset of conf/experiment/ times an algo. `--dry-run` composes every job's config
(no model is loaded, nothing is downloaded), prints its resolved settings and checks them against the
paper's; it exits non-zero if one differs. Without it, each preset runs as one Hydra multirun into
multirun/reproduce_<name>/<preset>/ and the report (tables and plots) is written there.
Extra `key=value` overrides go to every job (e.g. eval.paper_compat=true to decode as the published code).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.compose import load_run_config
from qsharp_exp.config import RunConfig
from qsharp_exp.guidance import RULES
from qsharp_exp.training.policy import TRAINERS

REPO = Path(__file__).resolve().parents[1]
MATH_ALGOS = ("pi_ref", *RULES)  # the paper's Table 2: pi_ref against every guidance rule
STAR_GRAPH_ALGOS = ("pi_ref", *TRAINERS, *RULES)  # the paper's Figure 2b

# The paper's math protocol (Section 3.2, Appendix E; docs/method.md, section 3).
MATH_PROTOCOL = {
    "algo.eta": 0.1, "algo.top_k": 20, "collect.top_k": 20, "collect.rounds": 2, "collect.samples_per_problem": 16,
    "collect.eta": 0.1, "collect.explore_prob": 0.0, "guide_train.lr": 2e-5, "guide_train.weight_decay": 0.01,
    "guide_train.epochs": 5, "eval.temperature": 0.8, "eval.top_p": 0.9, "eval.num_samples": 8,
    "eval.max_new_tokens": 1024, "task.num_test": None, "task.chat_template": True,
    "model.guide.arch.pretrained": "meta-llama/Llama-3.2-1B-Instruct", "model.guide.head": "v",
    "model.guide.distribution": "bernoulli",
}
STAR_GRAPH_PROTOCOL = {"algo.eta": 0.1, "algo.top_k": 10, "eval.temperature": 1.0}
# The published star-graph code (docs/star_graph.md, "Paper-scale presets"): pi_ref = GPT-2 fine-tuned, the
# classifier = GPT-2's trunk with a scalar head per position, trained on pairs with BCE.
STAR_GRAPH_PUBLISHED = {
    "task.num_nodes": 50, "task.num_pretrain": 200_000, "task.num_train": 200_000, "task.num_test": 20_000,
    "model.pi_ref_init": "base", "model.guide.init": "base", "model.guide.head": "v",
    "model.guide.distribution": "bernoulli", "pretrain.lr": 2.5e-4, "pretrain.batch_size": 256,
    "pretrain.steps": 7813, "pretrain.weight_decay": 0.1, "collect.mode": "pairs", "collect.pair_tries": 1024,
    "collect.rounds": 1, "guide_train.epochs": 10, "guide_train.batch_size": 512, "guide_train.lr": 2.5e-4,
    "guide_train.warmup_fraction": 0.1, "guide_train.warmup_steps": 100, "guide_train.weight_decay": 0.1,
    "hardware.bf16": True, "algo.policy.steps": 7813, "algo.policy.batch_size": 256,
}


@dataclass(frozen=True)
class Preset:
    name: str  # conf/experiment/<name>.yaml; "" = the defaults
    expected: dict


def table2_presets() -> list[Preset]:
    out = []
    for model, pi_ref in (("llama3_8b", "meta-llama/Meta-Llama-3-8B-Instruct"),
                          ("llama31_8b", "meta-llama/Llama-3.1-8B-Instruct")):
        for task in ("gsm8k", "math"):
            expected = {**MATH_PROTOCOL, "task.name": task, "model.pi_ref.pretrained": pi_ref}
            out.append(Preset(f"table2_{model}_{task}", expected))
    return out


def qwen_presets() -> list[Preset]:
    """Qwen 2.5 7B Instruct guided by Qwen 2.5 1.5B Instruct on GSM8K, MATH-500 and AIME 2024; the AIME guide
    trains on MATH's training problems."""
    qwen = {**MATH_PROTOCOL, "model.pi_ref.pretrained": "Qwen/Qwen2.5-7B-Instruct",
            "model.guide.arch.pretrained": "Qwen/Qwen2.5-1.5B-Instruct"}
    return [Preset("qwen25_7b_gsm8k", {**qwen, "task.name": "gsm8k"}),
            Preset("qwen25_7b_math", {**qwen, "task.name": "math"}),
            Preset("qwen25_7b_aime24", {**qwen, "task.name": "aime24", "task.train_from": "math"})]


def star_graph_presets(paper_scale: bool) -> list[Preset]:
    if not paper_scale:
        return [Preset("", {**STAR_GRAPH_PROTOCOL, "task.degree": 2, "task.path_length": 3})]
    shapes = {"star_graph_g25_paper": (2, 5, "gpt2"), "star_graph_g55_paper": (5, 5, "gpt2"),
              "star_graph_g38_paper": (3, 8, "gpt2-medium")}
    return [Preset(name, {**STAR_GRAPH_PROTOCOL, **STAR_GRAPH_PUBLISHED, "task.degree": d, "task.path_length": length,
                          "model.base.pretrained": gpt2})
            for name, (d, length, gpt2) in shapes.items()]


def resolved(cfg: RunConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def job_config(preset: Preset, algo: str, overrides: list[str]) -> RunConfig:
    args = ([f"+experiment={preset.name}"] if preset.name else []) + [f"algo={algo}", *overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return load_run_config(compose(config_name="config", overrides=args))


def dry_run(presets: list[Preset], algos: tuple[str, ...], overrides: list[str]) -> int:
    failures = 0
    jobs = 0
    for preset in presets:
        for algo in algos:
            jobs += 1
            cfg = job_config(preset, algo, overrides)
            guide = {"scratch": cfg.model.guide.arch.pretrained or "random init", "pi_ref": "from pi_ref",
                     "base": f"from base {cfg.model.base.pretrained or 'pretrained here'}"}[cfg.model.guide.init]
            base = cfg.model.base.pretrained or "base model"
            pi_ref = cfg.model.pi_ref.pretrained or (f"{base} fine-tuned" if cfg.model.pi_ref_init == "base"
                                                     else f"{cfg.model.name} from random init")
            train_from = getattr(cfg.task, "train_from", None)
            task = cfg.task.name + (f" (trains on {train_from})" if train_from else "")
            print(f"[{jobs:2d}] {preset.name or 'defaults'} algo={algo}: task={task} "
                  f"pi_ref={pi_ref} guide={guide} eta={cfg.algo.eta} top_k={cfg.algo.top_k} "
                  f"data={cfg.collect.mode} rounds={cfg.collect.rounds} samples={cfg.collect.samples_per_problem} "
                  f"T={cfg.eval.temperature} top_p={cfg.eval.top_p} eval_samples={cfg.eval.num_samples} "
                  f"max_new_tokens={cfg.eval.max_new_tokens} device={cfg.hardware.device}")
            for key, want in preset.expected.items():
                got = resolved(cfg, key)
                if got != want:
                    failures += 1
                    print(f"     MISMATCH {key}: {got!r}, the paper's is {want!r}")
    print(f"{jobs} jobs, {failures} settings differ from the paper's" if failures
          else f"{jobs} jobs, all checked settings match the paper's")
    return 1 if failures else 0


def launch(name: str, presets: list[Preset], algos: tuple[str, ...], overrides: list[str]) -> int:
    root = REPO / "multirun" / f"reproduce_{name}"
    for preset in presets:
        sweep_dir = root / (preset.name or _experiment_of(overrides) or "defaults")
        command = [sys.executable, "-m", "qsharp_exp", "-m", *([f"+experiment={preset.name}"] if preset.name else []),
                   f"algo={','.join(algos)}", f"hydra.sweep.dir={sweep_dir}", *overrides]
        print("+", " ".join(command), flush=True)
        if subprocess.run(command, cwd=REPO).returncode:
            print(f"{preset.name or 'defaults'} failed: rerun the same command to resume (finished stages and "
                  "batches are kept).", file=sys.stderr)
            return 1
    return subprocess.run([sys.executable, "-m", "qsharp_exp.cli.report", str(root)], cwd=REPO).returncode


def _experiment_of(overrides: list[str]) -> str:
    """The preset an `+experiment=<name>` override adds to the defaults (its sweep directory's name), or ""."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("table2", "qwen", "star-graph"))
    parser.add_argument("--dry-run", action="store_true", help="print and check every job; load nothing")
    parser.add_argument("--paper-scale", action="store_true", help="star-graph: the paper's G(2,5), G(5,5), G(3,8)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every job")
    args = parser.parse_intermixed_args(argv)
    if args.what == "table2":
        presets, algos = table2_presets(), MATH_ALGOS
    elif args.what == "qwen":
        presets, algos = qwen_presets(), MATH_ALGOS
    else:
        presets, algos = star_graph_presets(args.paper_scale), STAR_GRAPH_ALGOS
    if args.dry_run:
        return dry_run(presets, algos, args.overrides)
    return launch(args.what.replace("-", "_"), presets, algos, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
