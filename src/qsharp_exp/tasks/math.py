"""Math word problems (GSM8K, MATH, AIME 2024, and the synthetic `arithmetic` stand-in): docs/method.md,
section 3.

What they share lives here: the paper's zero-shot prompt, the reward (last `\\boxed{}` of the
response vs the gold answer under math-verify), answer extraction and equivalence for majority
votes, and the reference response used when a small pi_ref is trained here. They differ only in
where their records come from (`MathRecord` lists per split). AIME has test problems only: its training
problems are another dataset's (`task.train_from`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from qsharp_exp.config import FieldError, TaskConfig, UserError
from qsharp_exp.tasks.answers import equivalent, gsm8k_gold, last_boxed
from qsharp_exp.tasks.base import Problem, register_task
from qsharp_exp.tasks.splits import reference_split
from qsharp_exp.tasks.tokenizer import train_bpe_tokenizer

logger = logging.getLogger(__name__)

PROMPT = "Problem:\n\n{question} Write your answer inside \\boxed{{}}.\n\nSolution:"
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass
class MathConfig(TaskConfig):
    """What the math tasks share: answer checking, and the tokenizer trained here for tiny models."""

    # Seconds allowed per answer-equivalence check (math-verify).
    verify_timeout_s: int = 5
    # Vocabulary of the BPE tokenizer trained here for random-init models.
    tokenizer_vocab_size: int = 600


@dataclass
class MathDatasetConfig(MathConfig):
    # A local directory of JSONL files instead of the hub.
    data_dir: str | None = None

    @property
    def trains_on(self) -> str:
        """The dataset whose train split gives this task's training problems: its own."""
        return self.name


@dataclass
class EvalOnlyDatasetConfig(MathDatasetConfig):
    """A dataset with test problems only (AIME 2024): the guide's training problems, and a random-init pi_ref's,
    are those of another dataset's train split."""

    # The dataset whose train split stands in for this one's (gsm8k or math).
    train_from: str = "math"

    def __post_init__(self) -> None:
        super().__post_init__()
        trainable = sorted(name for name, source in SOURCES.items() if source.hub_train is not None)
        if self.train_from not in trainable:
            raise FieldError("train_from", f"{{key}}={self.train_from}: task={self.name} has no training problems "
                                           f"of its own; take them from one of {trainable}, e.g. {{key}}=math.")

    @property
    def trains_on(self) -> str:
        return self.train_from


@dataclass(frozen=True)
class MathRecord:
    id: str
    question: str
    solution: str  # a worked solution ending in \boxed{answer} (pretraining target)
    answer: str  # the gold answer (content of a \boxed{})


class MathTask:
    """A task over `MathRecord`s per split (`pretrain`, `train`, `validation`, `test`)."""

    reward_metric = "pass@1"

    def __init__(self, cfg: MathConfig, records: dict[str, list[MathRecord]]) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._records = records
        self._by_id = {r.id: r for rows in records.values() for r in rows}

    def problems(self, split: str) -> list[Problem]:
        return [Problem(id=r.id, prompt=PROMPT.format(question=r.question), answer=r.answer)
                for r in self._records[split]]

    def target(self, problem: Problem) -> str:
        return self._by_id[problem.id].solution

    def answer_of(self, response: str) -> str | None:
        return last_boxed(response)

    def same_answer(self, a: str, b: str) -> bool:
        return equivalent(a, b, self.cfg.verify_timeout_s)

    def reward(self, problem: Problem, response: str) -> float:
        return float(equivalent(problem.answer, last_boxed(response), self.cfg.verify_timeout_s))

    def describe(self) -> dict:
        return {}

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A BPE tokenizer (with a chat template) trained on this task's pretraining text, for tiny models."""
        texts = [f"{p.prompt} {self.target(p)}" for p in self.problems("pretrain")]
        return train_bpe_tokenizer(texts, self.cfg.tokenizer_vocab_size)


# -- GSM8K and MATH: records from the hub or from a local JSONL directory --------------------------


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's splits live on the hub and in a local directory."""

    hub_train: tuple[str, str | None, str] | None  # (path, config name, split); None: test problems only
    hub_test: tuple[str, str | None, str]
    local_train: str | None
    local_test: str
    integer_answers: bool = False  # a gold answer that is not a whole number is a data error
    # GSM8K's layout: a worked answer ending in '#### <number>' (or a solution and a numeric answer), whose gold
    # is that number; otherwise the gold is `answer` or the solution's last boxed expression (MATH's).
    worked_numeric_answers: bool = False


SOURCES = {
    "gsm8k": DatasetSource(("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test"),
                           "gsm8k_train.jsonl", "gsm8k_test.jsonl", worked_numeric_answers=True),
    "math": DatasetSource(("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
                          ("HuggingFaceH4/MATH-500", None, "test"), "math_train.jsonl", "math500_test.jsonl"),
    # The 30 problems of AIME 2024 I and II (fields id, problem, solution, answer, url, year), one split.
    "aime24": DatasetSource(None, ("HuggingFaceH4/aime_2024", None, "train"), None, "aime24_test.jsonl",
                            integer_answers=True),
}


@dataclass(frozen=True)
class Row:
    fields: dict
    where: str  # "<file>, line N" or "<hub dataset> <split> row N", for messages


_NUMBER = re.compile(r"-?\d+(\.\d+)?(/\d+)?")


def _record(task: str, split: str, index: int, row: Row) -> MathRecord:
    """One dataset row -> MathRecord. GSM8K's gold is the number after '####' (or its `answer` field);
    MATH's is the last boxed expression of the solution."""
    fields = row.fields

    def bad(what: str) -> UserError:
        return UserError(f"{row.where}: {what}: fix the row or remove it.")

    question = fields.get("problem") or fields.get("question")
    if not isinstance(question, str):
        raise bad("no 'problem' (or 'question') text")
    if SOURCES[task].worked_numeric_answers:
        answer = fields.get("answer")
        if answer is None:
            raise bad("no 'answer'")
        if "####" in str(answer) and not fields.get("solution"):  # hub layout
            solution, gold = str(answer).split("####")[0].strip(), gsm8k_gold(str(answer))
        elif isinstance(fields.get("solution"), str):
            solution, gold = fields["solution"], gsm8k_gold(str(answer))
        else:
            raise bad("no 'solution', and no worked answer ending in '#### <number>'")
        if not _NUMBER.fullmatch(gold):  # math-verify would read letters as a product of symbols
            raise bad(f"the answer {gold!r} is not a number (GSM8K's answers are numbers)")
        solution = _CALCULATOR.sub("", solution).strip() + f"\nThe answer is \\boxed{{{gold}}}."
    else:
        solution = fields.get("solution")
        if not isinstance(solution, str):
            raise bad("no 'solution'")
        gold = fields.get("answer") or last_boxed(solution)
        if gold is None:
            raise bad("no 'answer' and no \\boxed{} in its solution")
        if SOURCES[task].integer_answers and not str(gold).strip().isdigit():
            raise bad(f"the answer {gold!r} is not a whole number (task={task}'s answers are)")
    return MathRecord(f"{split}-{index}", question, solution, str(gold))


def read_jsonl_rows(path: Path) -> list[Row]:
    """The rows of a JSON-lines file; a line that is not UTF-8 or not a JSON object is an error naming it."""
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}, line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{where}: not UTF-8 text (byte {err.start + 1}): save the file as UTF-8.") from None
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg}, column {err.colno}): fix the line.") from None
        if not isinstance(fields, dict):
            raise UserError(f"{where}: a JSON object with fields problem, solution, answer is expected.")
        rows.append(Row(fields, where))
    if not rows:
        raise UserError(f"{path} holds no rows: add JSON lines with fields problem, solution, answer.")
    return rows


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _no_hub_message(task: str, local_file: str, why: str) -> str:
    return (f"task={task}: cannot load {why} from the Hugging Face hub; set task.data_dir=<dir> to a directory "
            f"with {local_file} (fields problem, solution, answer).")


def _load_rows(dataset: str, split: str, cfg: MathDatasetConfig) -> list[Row]:
    """`dataset`'s train or test rows: from `task.data_dir` when set, else from the hub."""
    source = SOURCES[dataset]
    local_file = source.local_train if split == "train" else source.local_test
    if cfg.data_dir is not None:
        path = Path(cfg.data_dir) / local_file
        if not path.exists():
            raise UserError(f"task.data_dir={cfg.data_dir} has no {path.name} ({dataset} {split}): add it (JSONL "
                            "with fields problem, solution, answer) or unset task.data_dir to use the hub.")
        return read_jsonl_rows(path)
    hub_path, name, hub_split = source.hub_train if split == "train" else source.hub_test
    if _hub_offline():
        raise UserError(_no_hub_message(cfg.name, local_file, f"{hub_path} (the hub is marked offline)"))
    import datasets

    try:
        rows = datasets.load_dataset(hub_path, name, split=hub_split)
        return [Row(dict(fields), f"{hub_path} {hub_split} row {i}") for i, fields in enumerate(rows)]
    except Exception as err:  # no network, no such dataset, no access: all end the same way for the user
        raise UserError(_no_hub_message(cfg.name, local_file, f"{hub_path} ({type(err).__name__})")) from None


def _first(rows: list, count: int | None) -> list:
    return rows if count is None else rows[:count]


def dataset_records(cfg: MathDatasetConfig) -> dict[str, list[MathRecord]]:
    """Train/validation by the published seed-47 split of the full training set (of `train_from`'s for a
    test-only dataset); test as published."""
    trains_on = cfg.trains_on
    if trains_on != cfg.name:
        logger.info("task=%s has test problems only: training problems come from task.train_from=%s",
                    cfg.name, trains_on)
    train_rows = _load_rows(trains_on, "train", cfg)
    test_rows = _load_rows(cfg.name, "test", cfg)
    train_idx, val_idx = reference_split(len(train_rows))
    train = [_record(trains_on, "train", i, train_rows[i]) for i in train_idx]
    return {
        "pretrain": _first(train, cfg.num_pretrain),
        "train": _first(train, cfg.num_train),
        "validation": [_record(trains_on, "train", i, train_rows[i]) for i in val_idx],
        "test": _first([_record(cfg.name, "test", i, row) for i, row in enumerate(test_rows)], cfg.num_test),
    }


@register_task("gsm8k", MathDatasetConfig)
@register_task("math", MathDatasetConfig)
@register_task("aime24", EvalOnlyDatasetConfig)
def build_dataset_task(cfg: MathDatasetConfig) -> MathTask:
    return MathTask(cfg, dataset_records(cfg))
