"""The run, stage by stage: task data -> pi_ref -> rollouts -> return model -> guided decoding -> metrics.

Each stage's directory under `cache_dir` is named by its inputs (see stages.py), so changing only
`algo` or `algo.eta` reuses pi_ref and the return models, and a rerun repeats nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from qsharp_exp.config import RunConfig, as_dict
from qsharp_exp.decoding import Guidance, SamplingSpec
from qsharp_exp.evaluation import evaluate
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import ReturnModel, build_return_model
from qsharp_exp.reporting import plot_guide_curve, print_summary
from qsharp_exp.stages import StageResult, run_stage
from qsharp_exp.tasks import Task, build_task
from qsharp_exp.training.collect import Rollout, collect
from qsharp_exp.training.pretrain import pretrain
from qsharp_exp.training.train_guide import train_return_model

log = logging.getLogger(__name__)

# Bumped when the rollout file's layout changes, so that older cached rollouts are not reused.
ROLLOUT_FORMAT = 2


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class Run:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.hw = Hardware(cfg.hardware)
        self.root = Path(cfg.cache_dir)
        self.task: Task = build_task(cfg.task)
        self.spec = SamplingSpec(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens)
        # What sampled text depends on (eval.num_samples only matters to the evaluation stage).
        self.sampling_inputs = as_dict(self.spec)
        self.stages: dict[str, StageResult] = {}

    # -- pi_ref ---------------------------------------------------------------------------------
    def pi_ref(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        cfg = self.cfg
        # pi_ref depends on the task's graphs but not on the size of the post-training set.
        task_inputs = {k: v for k, v in as_dict(cfg.task).items() if k != "num_train"}
        inputs = {"task": task_inputs, "arch": as_dict(cfg.model.pi_ref), "pretrain": as_dict(cfg.pretrain),
                  "sampling": self.sampling_inputs, "eval_batch_size": cfg.eval.batch_size, "seed": cfg.seed}

        def build(out: Path) -> None:
            tokenizer = self.task.build_tokenizer()
            model = build_causal_lm(cfg.model.pi_ref, tokenizer, cfg.seed)
            examples = []
            for p in self.task.problems("pretrain"):
                prompt = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
                target = tokenizer(self.task.target(p), add_special_tokens=False)["input_ids"]
                examples.append((prompt, target + [tokenizer.eos_token_id]))
            curve = pretrain(model, examples, cfg.pretrain, tokenizer.pad_token_id, self.hw, cfg.seed,
                             cfg.progress)
            metrics = {}
            for split in ("pretrain", "test"):
                problems = self.task.problems(split)[:1000]
                result, _ = evaluate(self.task, problems, model, tokenizer, None, self.spec, 1,
                                     cfg.eval.batch_size, self.hw, cfg.seed, f"pi_ref on {split}", cfg.progress)
                metrics[f"{split}_accuracy"] = result["accuracy"]
            log.info("pi_ref accuracy: on its pretraining graphs %.3f, on test graphs %.3f",
                     metrics["pretrain_accuracy"], metrics["test_accuracy"])
            model.save_pretrained(out / "model")
            tokenizer.save_pretrained(out / "model")
            _write_json(out / "pretrain_metrics.json", metrics)
            _write_jsonl(out / "curve.jsonl", curve)

        self.stages["pi_ref"] = run_stage(self.root, "pi_ref", inputs, build)
        path = self.stages["pi_ref"].path / "model"
        model = AutoModelForCausalLM.from_pretrained(path).to(self.hw.device).eval()
        return model, AutoTokenizer.from_pretrained(path)

    # -- Algorithm 1 ----------------------------------------------------------------------------
    def return_models(self, pi_ref, tokenizer, rounds: int) -> list[StageResult]:
        cfg = self.cfg
        guides: list[StageResult] = []
        rollout_stages: list[StageResult] = []
        for r in range(1, rounds + 1):
            previous = guides[-1] if guides else None
            collect_inputs = {
                "pi_ref": self.stages["pi_ref"].key, "roll_in_guide": previous.key if previous else None,
                "round": r, "collect": {k: v for k, v in as_dict(cfg.collect).items() if k != "rounds"},
                "top_k": cfg.algo.top_k, "sampling": self.sampling_inputs, "seed": cfg.seed,
                "num_train": cfg.task.num_train, "format": ROLLOUT_FORMAT,
            }

            def build_rollouts(out: Path, r=r, previous=previous) -> None:
                roll_in = None
                if previous is not None:
                    roll_in = Guidance(self._load_guide(previous.path), "qsharp", cfg.collect.eta, cfg.algo.top_k,
                                       cfg.algo.non_candidates == "mask")
                rollouts = collect(self.task, self.task.problems("train"), pi_ref, tokenizer, roll_in, cfg.collect,
                                   cfg.algo.top_k, self.spec, self.hw, cfg.seed + 1000 * r, cfg.progress)
                _write_jsonl(out / "rollouts.jsonl", (x.to_dict() for x in rollouts))
                mean = sum(x.reward for x in rollouts) / len(rollouts)
                _write_json(out / "summary.json", {"rollouts": len(rollouts), "mean_reward": mean})

            rollout_stages.append(run_stage(self.root, f"rollouts_round{r}", collect_inputs, build_rollouts))
            guide_inputs = {"rollouts": [s.key for s in rollout_stages], "guide": as_dict(cfg.model.guide),
                            "train": as_dict(cfg.guide_train), "seed": cfg.seed}

            def build_guide(out: Path, r=r) -> None:
                rollouts = [Rollout(**row) for s in rollout_stages for row in _read_jsonl(s.path / "rollouts.jsonl")]
                model = build_return_model(cfg.model.guide, tokenizer, cfg.seed + r)
                log.info("round %d: training the return model on %d rollouts (%d parameters)", r, len(rollouts),
                         sum(p.numel() for p in model.parameters()))
                curve = train_return_model(model, rollouts, cfg.guide_train, tokenizer.pad_token_id, self.hw,
                                           cfg.seed + r, cfg.progress)
                model.save(out / "model")
                _write_jsonl(out / "curve.jsonl", curve)
                plot_guide_curve(curve, out / "curve.png")

            guides.append(run_stage(self.root, f"return_model_round{r}", guide_inputs, build_guide))
            self.stages[f"rollouts_round{r}"] = rollout_stages[-1]
            self.stages[f"return_model_round{r}"] = guides[-1]
        return guides

    def _load_guide(self, path: Path) -> ReturnModel:
        return ReturnModel.load(path / "model", self.cfg.model.guide).to(self.hw.device).eval()

    # -- evaluation -----------------------------------------------------------------------------
    def guide_round(self) -> int:
        algo = self.cfg.algo
        if algo.guide_round is not None:
            return algo.guide_round
        return 1 if algo.name == "cd" else self.cfg.collect.rounds

    def evaluate(self) -> dict:
        cfg = self.cfg
        pi_ref, tokenizer = self.pi_ref()
        guide_stage = None
        if cfg.algo.name != "pi_ref":
            guide_stage = self.return_models(pi_ref, tokenizer, self.guide_round())[-1]
        algo_inputs = as_dict(cfg.algo) if guide_stage else {"name": "pi_ref"}
        inputs = {"pi_ref": self.stages["pi_ref"].key, "guide": guide_stage.key if guide_stage else None,
                  "algo": algo_inputs, "eval": as_dict(cfg.eval), "seed": cfg.seed}

        def build(out: Path) -> None:
            guide = None
            if guide_stage is not None:
                guide = Guidance(self._load_guide(guide_stage.path), cfg.algo.name, cfg.algo.eta, cfg.algo.top_k,
                                 cfg.algo.non_candidates == "mask")
            metrics, samples = evaluate(self.task, self.task.problems("test"), pi_ref, tokenizer, guide, self.spec,
                                        cfg.eval.num_samples, cfg.eval.batch_size, self.hw, cfg.seed,
                                        f"evaluate {cfg.algo.name}", cfg.progress)
            _write_json(out / "metrics.json", metrics)
            _write_jsonl(out / "samples.jsonl", samples)

        self.stages["evaluation"] = run_stage(self.root, "evaluation", inputs, build)
        path = self.stages["evaluation"].path
        metrics = json.loads((path / "metrics.json").read_text())
        pretrain_metrics = json.loads((self.stages["pi_ref"].path / "pretrain_metrics.json").read_text())
        result = {
            "task": cfg.task.name, "algo": cfg.algo.name,
            "eta": cfg.algo.eta if cfg.algo.name != "pi_ref" else None,
            "top_k": cfg.algo.top_k if cfg.algo.name != "pi_ref" else None,
            "guide_round": self.guide_round() if cfg.algo.name != "pi_ref" else None,
            **metrics,
            "pi_ref_pretrain_accuracy": pretrain_metrics["pretrain_accuracy"],
            "pi_ref_test_accuracy": pretrain_metrics["test_accuracy"],
        }
        for name, stage in self.stages.items():
            result[f"time_{name}_s"] = round(stage.seconds, 2)
            result[f"build_time_{name}_s"] = stage.build_seconds
            result[f"dir_{name}"] = str(stage.path)
        return result


def run(cfg: RunConfig, out_dir: Path) -> dict:
    hf_logging.disable_progress_bar()  # our own bars cover the long stages
    torch.manual_seed(cfg.seed)
    metrics = Run(cfg).evaluate()
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "metrics.json", metrics)
    samples = Path(metrics["dir_evaluation"]) / "samples.jsonl"
    (out_dir / "samples.jsonl").write_text(samples.read_text())
    print_summary(metrics)
    return metrics
