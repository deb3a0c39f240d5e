"""The run, stage by stage: task data -> pi_ref -> rollouts -> return model -> guided decoding -> metrics.

Each stage's directory under `cache_dir` is named by its inputs (see stages.py), so changing only
`algo` or `algo.eta` reuses pi_ref and the return models, and a rerun repeats nothing.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from qsharp_exp.config import GUIDED_ALGOS, POLICY_ALGOS, RunConfig, UserError, as_dict
from qsharp_exp.decoding import Guidance, SamplingSpec
from qsharp_exp.evaluation import evaluate
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.lm import build_causal_lm, load_pretrained_lm, load_tokenizer
from qsharp_exp.models.return_model import ReturnModel, build_return_model
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.reporting import plot_guide_curve, print_summary
from qsharp_exp.stages import StageResult, run_stage, stage_key
from qsharp_exp.tasks import Task, build_task
from qsharp_exp.tracking import log_run
from qsharp_exp.training.collect import Rollout, collect
from qsharp_exp.training.engine import shard_for_inference
from qsharp_exp.training.policy import train_policy
from qsharp_exp.training.pretrain import pretrain
from qsharp_exp.training.train_guide import NoSignalError, train_return_model

log = logging.getLogger(__name__)

# Part of every stage's inputs. Bumped when code changes what a stage produces for the same config
# (a file layout, the random streams of sampling, the order of training batches), so that a cache
# filled by older code is never taken for this code's results. 3: finished rows leave sampling
# batches; length-grouped return-model batches. 4: sampling batches take prompts in order of length
# and keep KV caches in fixed windows; return-model batches run in length-sorted chunks.
PIPELINE_VERSION = 4


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
        self.spec = SamplingSpec(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens, cfg.eval.paper_compat)
        # What sampled text depends on (eval.num_samples only matters to the evaluation stage).
        self.sampling_inputs = as_dict(self.spec)
        # Pretrained models are loaded in bf16 when the hardware computes in bf16.
        self.dtype = torch.bfloat16 if cfg.hardware.bf16 else None
        self.stages: dict[str, StageResult] = {}
        self.pi_ref_key = ""
        self.pi_ref_source = ""  # hub id or directory of pi_ref's weights
        self.pi_ref_metrics: dict[str, float] = {}

    # -- pi_ref ---------------------------------------------------------------------------------
    def pi_ref(self) -> tuple[PreTrainedModel, PromptCodec]:
        """A pretrained pi_ref (hub id or path), or a random-init one pretrained here on the task."""
        cfg = self.cfg
        source = cfg.model.pi_ref.pretrained
        if source is not None:
            model = load_pretrained_lm(source, "model.pi_ref.pretrained", self.dtype)
            model = self._place_pi_ref(model)
            codec = self._codec(load_tokenizer(source, "model.pi_ref.pretrained"), model)
            self.pi_ref_key = stage_key({"pretrained": source})
            self.pi_ref_source = source
            return model, codec
        self._pretrain_pi_ref()
        path = self.stages["pi_ref"].path
        model = self._place_pi_ref(AutoModelForCausalLM.from_pretrained(path / "model"))
        self.pi_ref_key = self.stages["pi_ref"].key
        self.pi_ref_source = str(path / "model")
        self.pi_ref_metrics = json.loads((path / "pretrain_metrics.json").read_text())
        return model, self._codec(AutoTokenizer.from_pretrained(path / "model"), model)

    def _place_pi_ref(self, model: PreTrainedModel) -> PreTrainedModel:
        """On this rank's device: whole (replicated), or a ZeRO-3 shard of it (hardware.shard_pi_ref)."""
        if self.hw.cfg.shard_pi_ref and self.hw.dist.active:
            model = shard_for_inference(model.eval(), self.hw)
            log.info("pi_ref: sharded with ZeRO-3 across %d ranks (%d of %d parameters held here)",
                     self.hw.dist.world,
                     sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters()),
                     sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()))
            return model
        return model.to(self.hw.device).eval()

    def _task_inputs(self, *unused: str) -> dict:
        """The task's settings a stage depends on (problem counts of splits it does not read left out)."""
        return {k: v for k, v in as_dict(self.cfg.task).items() if k not in unused}

    def _codec(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> PromptCodec:
        """Prompts must also fit the context of a guide built here, in runs that use one."""
        codec = PromptCodec.for_model(tokenizer, model, self.cfg.task.chat_template)
        guide = self.cfg.model.guide
        if self._uses_guide() and guide.arch.pretrained is None and not guide.init_from_pi_ref and codec.max_positions:
            codec.max_positions = min(codec.max_positions, guide.arch.max_positions)
        return codec

    def _ranks_with_guide(self) -> bool:
        """Q# as a reward model ranks several samples per problem; with one there is nothing to rank."""
        return self.cfg.eval.reward_model and self.cfg.eval.num_samples > 1

    def _uses_guide(self) -> bool:
        return self.cfg.algo.name in GUIDED_ALGOS or self._ranks_with_guide()

    def _pretrain_pi_ref(self) -> None:
        cfg = self.cfg
        # pi_ref depends on the task's problems but not on the size of the post-training set.
        inputs = {"version": PIPELINE_VERSION, "task": self._task_inputs("num_train"),
                  "arch": as_dict(cfg.model.pi_ref), "pretrain": as_dict(cfg.pretrain),
                  "sampling": self.sampling_inputs, "eval_batch_size": cfg.eval.batch_size, "seed": cfg.seed}

        def build(out: Path) -> None:
            tokenizer = self.task.build_tokenizer()
            model = build_causal_lm(cfg.model.pi_ref, tokenizer, cfg.seed)
            codec = PromptCodec.for_model(tokenizer, model, cfg.task.chat_template)
            problems = self.task.problems("pretrain")
            prompts = codec.encode(problems, 0)
            examples = [(p, codec.response_ids(self.task.target(x))) for p, x in zip(prompts, problems, strict=True)]
            longest = max(len(p) + len(r) for p, r in examples)
            if codec.max_positions and longest > codec.max_positions:
                raise UserError(f"a pretraining example has {longest} tokens, more than model.pi_ref.max_positions="
                                f"{codec.max_positions}: raise it or use shorter problems.")
            curve = pretrain(model, examples, cfg.pretrain, codec.pad_id, self.hw, cfg.seed, cfg.progress)
            model.eval()
            metrics = {}
            for split in ("pretrain", "test"):
                result, _ = evaluate(self.task, self.task.problems(split)[: cfg.pretrain.eval_problems], model, codec,
                                     None, self.spec, 1, cfg.eval.batch_size, self.hw, cfg.seed,
                                     f"pi_ref on {split}", cfg.progress)
                metrics[f"{split}_accuracy"] = result["accuracy"]
            log.info("pi_ref accuracy: on its pretraining problems %.3f, on test problems %.3f",
                     metrics["pretrain_accuracy"], metrics["test_accuracy"])
            model.save_pretrained(out / "model")
            tokenizer.save_pretrained(out / "model")
            _write_json(out / "pretrain_metrics.json", metrics)
            _write_jsonl(out / "curve.jsonl", curve)

        self.stages["pi_ref"] = run_stage(self.root, "pi_ref", inputs, build, dist=self.hw.dist)

    # -- Algorithm 1 ----------------------------------------------------------------------------
    def _check_guide_tokenizer(self, codec: PromptCodec) -> None:
        source = self.cfg.model.guide.arch.pretrained
        if source is None:
            return  # built here on pi_ref's own tokenizer
        theirs = load_tokenizer(source, "model.guide.arch.pretrained").get_vocab()
        ours = codec.tokenizer.get_vocab()
        if theirs != ours:
            differ = len(set(theirs.items()) ^ set(ours.items()))
            raise UserError(
                f"model.guide.arch.pretrained={source} does not share pi_ref's tokenizer ({differ} vocabulary "
                f"entries differ, sizes {len(theirs)} vs {len(ours)}): pick a guide of the same family as "
                f"model.pi_ref.pretrained={self.cfg.model.pi_ref.pretrained}."
            )

    def return_models(self, pi_ref: PreTrainedModel, codec: PromptCodec, rounds: int) -> list[StageResult]:
        cfg = self.cfg
        self._check_guide_tokenizer(codec)
        guides: list[StageResult] = []
        rollout_stages: list[StageResult] = []
        for r in range(1, rounds + 1):
            previous = guides[-1] if guides else None
            collect_inputs = {
                "pi_ref": self.pi_ref_key, "roll_in_guide": previous.key if previous else None,
                "round": r, "collect": {k: v for k, v in as_dict(cfg.collect).items() if k != "rounds"},
                "top_k": cfg.algo.top_k, "sampling": self.sampling_inputs, "seed": cfg.seed,
                "task": self._task_inputs("num_test"), "version": PIPELINE_VERSION,
            }

            def build_rollouts(out: Path, resume: Path, r=r, previous=previous) -> None:
                roll_in = None
                if previous is not None:
                    roll_in = Guidance(self._load_guide(previous.path), "qsharp", cfg.collect.eta, cfg.algo.top_k,
                                       cfg.algo.non_candidates == "mask")
                rollouts = collect(self.task, self.task.problems("train"), pi_ref, codec, roll_in, cfg.collect,
                                   cfg.algo.top_k, self.spec, self.hw, cfg.seed + 1000 * r, cfg.progress, resume)
                _write_jsonl(out / "rollouts.jsonl", (x.to_dict() for x in rollouts))
                mean = sum(x.reward for x in rollouts) / len(rollouts)
                _write_json(out / "summary.json", {"rollouts": len(rollouts), "mean_reward": mean})

            rollout_stages.append(run_stage(self.root, f"rollouts_round{r}", collect_inputs, build_rollouts,
                                            resumable=True, dist=self.hw.dist))
            # How often checkpoints are written does not change the trained model.
            train_inputs = {k: v for k, v in as_dict(cfg.guide_train).items() if k != "checkpoint_every"}
            guide_inputs = {"version": PIPELINE_VERSION, "rollouts": [s.key for s in rollout_stages],
                            "guide": as_dict(cfg.model.guide),
                            "train": train_inputs, "seed": cfg.seed,
                            "init": self.pi_ref_key if cfg.model.guide.init_from_pi_ref else None}

            def build_guide(out: Path, resume: Path, r=r) -> None:
                rollouts = [Rollout(**row) for s in rollout_stages for row in _read_jsonl(s.path / "rollouts.jsonl")]
                guide_cfg = cfg.model.guide
                if guide_cfg.init_from_pi_ref:
                    guide_cfg = replace(guide_cfg, arch=replace(guide_cfg.arch, pretrained=self.pi_ref_source))
                # Trained in float32 under bf16 autocast: AdamW's small updates would round away in bf16 weights.
                model = build_return_model(guide_cfg, codec.tokenizer, cfg.seed + r)
                log.info("round %d: training the return model on %d rollouts (%d parameters)", r, len(rollouts),
                         sum(p.numel() for p in model.parameters()))
                resume.mkdir(parents=True, exist_ok=True)
                try:
                    model, curve, whole = train_return_model(model, rollouts, cfg.guide_train, codec.pad_id, self.hw,
                                                             cfg.seed + r, cfg.progress, resume)
                except NoSignalError as err:
                    raise NoSignalError(f"round {r}: {err}") from None
                with whole:  # under ZeRO-3 every rank takes part in gathering the parameters
                    model.save_pretrained(out / "model")
                _write_jsonl(out / "curve.jsonl", curve)
                plot_guide_curve(curve, out / "curve.png")

            guides.append(run_stage(self.root, f"return_model_round{r}", guide_inputs, build_guide, resumable=True,
                                      dist=self.hw.dist))
            self.stages[f"rollouts_round{r}"] = rollout_stages[-1]
            self.stages[f"return_model_round{r}"] = guides[-1]
        return guides

    def _load_guide(self, path: Path) -> ReturnModel:
        return ReturnModel.from_pretrained(path / "model", dtype=self.dtype).to(self.hw.device).eval()

    # -- policy-based baselines ---------------------------------------------------------------------
    def policy(self, pi_ref: PreTrainedModel, codec: PromptCodec) -> StageResult:
        """REINFORCE / DPO / RPO: a copy of pi_ref fine-tuned on the training problems."""
        cfg = self.cfg
        inputs = {"version": PIPELINE_VERSION, "pi_ref": self.pi_ref_key, "algo": cfg.algo.name,
                  "policy": as_dict(cfg.algo.policy),
                  "task": self._task_inputs("num_test"), "sampling": self.sampling_inputs, "seed": cfg.seed}

        def build(out: Path) -> None:
            policy = copy.deepcopy(pi_ref)
            curve = train_policy(cfg.algo.name, policy, pi_ref, self.task, codec, cfg.algo.policy, self.spec,
                                 self.hw, cfg.seed, cfg.progress)
            policy.save_pretrained(out / "model")
            codec.tokenizer.save_pretrained(out / "model")
            _write_jsonl(out / "curve.jsonl", curve)

        self.stages["policy"] = run_stage(self.root, f"policy_{cfg.algo.name}", inputs, build, dist=self.hw.dist)
        return self.stages["policy"]

    # -- evaluation -----------------------------------------------------------------------------
    def guide_round(self) -> int:
        algo = self.cfg.algo
        if algo.guide_round is not None:
            return algo.guide_round
        return 1 if algo.name == "cd" else self.cfg.collect.rounds

    def evaluate(self) -> dict:
        cfg = self.cfg
        pi_ref, codec = self.pi_ref()
        guided = cfg.algo.name in GUIDED_ALGOS
        ranking = self._ranks_with_guide()
        rounds = cfg.collect.rounds if ranking else self.guide_round() if guided else 0
        guides = self.return_models(pi_ref, codec, rounds) if rounds else []
        guide_stage = guides[self.guide_round() - 1] if guided else None
        rm_stage = guides[-1] if ranking else None
        policy_stage = self.policy(pi_ref, codec) if cfg.algo.name in POLICY_ALGOS else None
        if guided:
            algo_inputs = as_dict(cfg.algo)
            algo_inputs.pop("policy")
        else:
            algo_inputs = {"name": cfg.algo.name}
        inputs = {"version": PIPELINE_VERSION, "pi_ref": self.pi_ref_key,
                  "guide": guide_stage.key if guide_stage else None,
                  "policy": policy_stage.key if policy_stage else None,
                  "reward_model": rm_stage.key if rm_stage else None,
                  "algo": algo_inputs, "eval": as_dict(cfg.eval), "seed": cfg.seed,
                  "task": self._task_inputs("num_train", "num_pretrain")}

        def build(out: Path, resume: Path) -> None:
            guide = None
            if guide_stage is not None:
                guide = Guidance(self._load_guide(guide_stage.path), cfg.algo.name, cfg.algo.eta, cfg.algo.top_k,
                                 cfg.algo.non_candidates == "mask")
            reward_model = self._load_guide(rm_stage.path) if rm_stage is not None else None
            policy = None
            if policy_stage is not None:
                policy = AutoModelForCausalLM.from_pretrained(policy_stage.path / "model").to(self.hw.device).eval()
            metrics, samples = evaluate(self.task, self.task.problems("test"), pi_ref, codec, guide, self.spec,
                                        cfg.eval.num_samples, cfg.eval.batch_size, self.hw, cfg.seed,
                                        f"evaluate {cfg.algo.name}", cfg.progress, resume, reward_model, policy)
            _write_json(out / "metrics.json", metrics)
            _write_jsonl(out / "samples.jsonl", samples)

        self.stages["evaluation"] = run_stage(self.root, "evaluation", inputs, build, resumable=True,
                                               dist=self.hw.dist)
        metrics = json.loads((self.stages["evaluation"].path / "metrics.json").read_text())
        result = {
            "task": cfg.task.name, "model": cfg.model.name, "algo": cfg.algo.name,
            **({"graph": f"G({cfg.task.degree},{cfg.task.path_length})", "degree": cfg.task.degree}
               if cfg.task.name == "star_graph" else {}),
            "eta": cfg.algo.eta if guided else None,
            "top_k": cfg.algo.top_k if guided else None,
            "guide_round": self.guide_round() if guided else None,
            "paper_compat": cfg.eval.paper_compat,
            **metrics,
            **{f"pi_ref_{k}": v for k, v in self.pi_ref_metrics.items()},
        }
        for name, stage in self.stages.items():
            result[f"time_{name}_s"] = round(stage.seconds, 2)
            result[f"build_time_{name}_s"] = stage.build_seconds
            result[f"dir_{name}"] = str(stage.path)
            if stage.peak_gpu_gib is not None:
                result[f"peak_gpu_gib_{name}"] = stage.peak_gpu_gib
        return result


def run(cfg: RunConfig, out_dir: Path, tracker_group: str | None = None) -> dict:
    hf_logging.disable_progress_bar()  # our own bars cover the long stages
    torch.manual_seed(cfg.seed)
    runner = Run(cfg)
    out_dir = runner.hw.dist.broadcast(out_dir)  # every rank resolved Hydra's ${now}; rank 0's dir is the run's
    metrics = runner.evaluate()
    if not runner.hw.dist.is_main:
        return metrics  # rank 0 owns the run directory and the tracker
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "metrics.json", metrics)
    samples = Path(metrics["dir_evaluation"]) / "samples.jsonl"
    (out_dir / "samples.jsonl").write_text(samples.read_text())
    print_summary(metrics)
    log_run(cfg, metrics, out_dir, tracker_group)
    return metrics
