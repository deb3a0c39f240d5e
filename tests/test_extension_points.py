"""A new guidance rule and a new task are each one registration plus one YAML: both are registered here,
in this test file alone, with their YAMLs in a config directory of the test's own, and run through the
real CLI entry point (in this process, so that it sees the registrations; they are removed afterwards,
so that other tests see the built-in registries only)."""

import json
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qsharp_exp import report
from qsharp_exp.config import TaskConfig
from qsharp_exp.guidance import RULES, register_guidance
from qsharp_exp.tasks import TASKS, Problem, register_task
from qsharp_exp.tasks.splits import draw_distinct_splits

CALLS = {"toy_rule": 0}


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
