"""A new guidance rule and a new task are each one registration plus one YAML, a new head kind is one class plus
its decoding state, a new stage one registered function: each is registered here, in this test file alone (the
rule and task with their YAMLs in a config directory of the test's own), and run through the real CLI entry
point (in this process, so that it sees the registrations; they are removed afterwards, so that other tests see
the built-in registries only)."""

import json
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qsharp_exp.cli import report
from qsharp_exp.config import TaskConfig
from qsharp_exp.guidance import RULES, register_guidance
from qsharp_exp.models.heads import HEADS, QHead
from qsharp_exp.sampling.decoding import GUIDE_STATES, QGuideState, register_guide_state
from qsharp_exp.stages.extra import EXTRA_STAGES, register_stage
from qsharp_exp.tasks import TASKS, Problem, register_task
from qsharp_exp.tasks.splits import draw_distinct_splits

CALLS = {"toy_rule": 0, "toy_head": 0, "toy_stage": 0}


def toy_rule(distribution, out, eta):
    """Twice CD's offset: a rule no built-in has, so that its use is visible."""
    CALLS["toy_rule"] += 1
    return 2 * distribution.mean(out) / eta


@dataclass
class CopyConfig(TaskConfig):
    length: int = 3  # digits to copy
    generates_problems: ClassVar[bool] = True


class CopyTask:
    """Copy a list of digits: `3,1,4=` -> `3,1,4`; the reward is the share of digits copied right."""

    name = "toy_copy"
    reward_metric = "accuracy"

    def __init__(self, cfg: CopyConfig) -> None:
        self.cfg = cfg
        self.splits = draw_distinct_splits(
            {"test": cfg.num_test, "pretrain": cfg.num_pretrain, "train": cfg.num_train},
            stream=lambda split: f"{cfg.seed}-copy-{split}",
            draw=lambda rng: ",".join(str(rng.randrange(10)) for _ in range(cfg.length)),
            key=lambda digits: digits, hint="lower the split sizes")

    def problems(self, split):
        return [Problem(f"{split}-{i}", f"{digits}=", digits) for i, digits in enumerate(self.splits[split])]

    def answer_of(self, response):
        return response.replace(" ", "") or None

    def same_answer(self, a, b):
        return a == b

    def reward(self, problem, response):
        digits, gold = response.replace(" ", "").split(","), problem.answer.split(",")
        return sum(a == b for a, b in zip(digits, gold, strict=False))  # a response may be short or long / len(gold)

    def target(self, problem):
        return problem.answer

    def describe(self):
        return {"copy_length": self.cfg.length}

    def build_tokenizer(self):
        vocab = {tok: i for i, tok in enumerate(["<pad>", "<bos>", "<eos>", ",", "=", *map(str, range(10))])}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(individual_digits=True)])
        tok.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                       padding_side="left")


TASK_YAML = """# @package _global_
task:
  name: toy_copy
  length: 3
  num_pretrain: 300
  num_train: 40
  num_test: 20
pretrain: {steps: 60, batch_size: 32, lr: 3.0e-3, warmup_steps: 5, eval_problems: 20}
collect: {samples_per_problem: 4, batch_size: 64}
guide_train: {steps: 10, batch_size: 16, warmup_steps: 2, eval_every: 5}
eval: {max_new_tokens: 8, batch_size: 64}
model:  # no lookup vocabulary for a base model: both start from random init
  pi_ref_init: scratch
  pi_ref: {n_layer: 1, n_embd: 32, n_head: 2}
  guide:
    init: scratch
    arch: {n_layer: 1, n_embd: 32, n_head: 2}
progress: false
"""
ALGO_YAML = "name: toy_rule\neta: 0.5\ntop_k: 5\nnon_candidates: keep\nguide_round: null\n"


def run_cli(monkeypatch, *args):
    from qsharp_exp.__main__ import main

    monkeypatch.setattr(sys, "argv", ["qsharp_exp", *args])
    main()


@pytest.fixture
def user_conf(tmp_path):
    """The toy rule and task registered, and their YAMLs in a config directory of the test's own."""
    register_guidance("toy_rule", label="Toy")(toy_rule)
    register_task("toy_copy", CopyConfig)(CopyTask)
    conf = tmp_path / "conf"
    (conf / "task").mkdir(parents=True)
    (conf / "algo").mkdir()
    (conf / "task" / "toy_copy.yaml").write_text(TASK_YAML)
    (conf / "algo" / "toy_rule.yaml").write_text(ALGO_YAML)
    yield conf
    RULES.remove("toy_rule")
    TASKS.remove("toy_copy")


def test_a_rule_and_a_task_registered_outside_the_package_run_through_the_cli(monkeypatch, user_conf, tmp_path):
    common = [f"hydra.searchpath=[file://{user_conf}]", "task=toy_copy", f"cache_dir={tmp_path / 'cache'}"]
    run_cli(monkeypatch, *common, "algo=toy_rule", f"hydra.run.dir={tmp_path / 'toy'}")
    metrics = json.loads((tmp_path / "toy" / "metrics.json").read_text())
    assert (metrics["task"], metrics["algo"], metrics["eta"]) == ("toy_copy", "toy_rule", 0.5)
    assert metrics["copy_length"] == 3  # the task's own config key, and its own line in metrics.json
    assert metrics["num_problems"] == 20 and metrics["kl_mean"] > 0  # guided: it moved away from pi_ref
    assert CALLS["toy_rule"] > 0 and "toy_rule" in RULES

    run_cli(monkeypatch, *common, "algo=pi_ref", f"hydra.run.dir={tmp_path / 'ref'}")
    assert report.main([str(tmp_path / "toy"), str(tmp_path / "ref")]) == 0
    table = (tmp_path / "toy" / "report.md").read_text()
    assert "## star_graph_tiny / toy_copy" in table and "| Toy | 0.5 | " in table and "| pi_ref | - | " in table


def test_an_unknown_task_names_the_registered_ones(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(monkeypatch, "task.name=nope", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'x'}")
    assert "task.name='nope' is not supported" in str(stop.value) and "star_graph" in str(stop.value)


class ToyQHead(QHead):
    """Q's head under a name no code of the package knows, counting the actions it reads values for."""

    name = "toy_q"

    def pick(self, outputs, actions):
        CALLS["toy_head"] += 1
        return super().pick(outputs, actions)


@pytest.fixture
def toy_head():
    HEADS.add("toy_q", ToyQHead())
    register_guide_state("toy_q")(QGuideState)
    yield
    HEADS.remove("toy_q")
    GUIDE_STATES.remove("toy_q")


def _measured(run_dir):
    """metrics.json without what differs between two runs of the same numbers (times, directories)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith(("time_", "build_time_", "dir_"))}


def test_a_head_kind_registered_outside_the_package_trains_and_guides_through_the_cli(monkeypatch, user_conf,
                                                                                        toy_head, tmp_path):
    """The toy kind is Q's head under another name: the run that uses it trains through its methods and
    decodes with the state registered for it, and measures exactly what the built-in q head measures."""
    common = [f"hydra.searchpath=[file://{user_conf}]", "task=toy_copy", f"cache_dir={tmp_path / 'cache'}"]
    run_cli(monkeypatch, *common, "model.guide.head=toy_q", f"hydra.run.dir={tmp_path / 'toy'}")
    assert CALLS["toy_head"] > 0
    run_cli(monkeypatch, *common, "model.guide.head=q", f"hydra.run.dir={tmp_path / 'q'}")
    toy, q = _measured(tmp_path / "toy"), _measured(tmp_path / "q")
    assert toy["kl_mean"] > 0 and toy == q
    assert (tmp_path / "toy" / "samples.jsonl").read_bytes() == (tmp_path / "q" / "samples.jsonl").read_bytes()


def toy_response_lengths(ctx, built):
    """A stage after the evaluation: the mean length of the responses, in characters."""

    def build(cfg, out):
        CALLS["toy_stage"] += 1
        samples = [json.loads(line) for line in (built.evaluation.path / "samples.jsonl").read_text().splitlines()]
        (out / "lengths.json").write_text(json.dumps({"mean_chars": sum(len(s["response"]) for s in samples)
                                                      / len(samples)}))

    stage = ctx.stage("toy_lengths", [], build, after={"evaluation": built.evaluation.key})
    return json.loads((stage.path / "lengths.json").read_text())


@pytest.fixture
def toy_stage():
    register_stage("toy_lengths")(toy_response_lengths)
    yield
    EXTRA_STAGES.remove("toy_lengths")


def test_a_stage_registered_outside_the_package_runs_after_the_evaluation_and_is_cached(monkeypatch, user_conf,
                                                                                         toy_stage, tmp_path):
    common = [f"hydra.searchpath=[file://{user_conf}]", "task=toy_copy", "algo=pi_ref", f"cache_dir={tmp_path / 'c'}",
              "extra_stages=[toy_lengths]"]
    run_cli(monkeypatch, *common, f"hydra.run.dir={tmp_path / 'first'}")
    metrics = json.loads((tmp_path / "first" / "metrics.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "first" / "samples.jsonl").read_text().splitlines()]
    assert metrics["toy_lengths_mean_chars"] == sum(len(s["response"]) for s in samples) / len(samples)
    assert metrics["dir_toy_lengths"].startswith(str(tmp_path / "c" / "toy_lengths"))
    run_cli(monkeypatch, *common, f"hydra.run.dir={tmp_path / 'again'}")
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert CALLS["toy_stage"] == 1 and again["dir_toy_lengths"] == metrics["dir_toy_lengths"]  # reused


def test_an_unknown_added_stage_names_the_registered_ones_before_any_work(monkeypatch, toy_stage, tmp_path):
    with pytest.raises(SystemExit) as stop:
        run_cli(monkeypatch, "extra_stages=[nope]", f"cache_dir={tmp_path / 'cache'}",
                f"hydra.run.dir={tmp_path / 'x'}")
    assert "extra_stages='nope' is not supported (no such stage): use one of toy_lengths" in str(stop.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
