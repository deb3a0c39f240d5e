"""The star-graph planning task (Bachmann & Nagarajan 2024; Q# paper section 3.1).

G(d, l): `degree` arms leave a source; the answer path has `path_length` nodes, source and goal
included. A line is `u,v|u,v|.../source,goal=n1,n2,...,nl` with the edges shuffled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qsharp_exp.config import SPLIT_SIZES, FieldError, TaskConfig, at_least
from qsharp_exp.tasks.base import Problem, register_task
from qsharp_exp.tasks.splits import draw_distinct_splits

SEPARATORS = (",", "|", "/", "=")
BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


@dataclass
class StarGraphConfig(TaskConfig):
    """G(degree, path_length) over num_nodes labels; path_length counts the nodes of the answer path,
    source and goal included (Bachmann & Nagarajan's convention)."""

    degree: int = 2
    path_length: int = 3
    num_nodes: int = 20
    generates_problems: ClassVar[bool] = True
    draw_order: ClassVar[tuple[str, ...]] = ("test", "pretrain", "train")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "degree", 2, " (a star needs at least two arms)")
        at_least(self, "path_length", 2)
        needed = 1 + self.degree * (self.path_length - 1)
        if self.num_nodes < needed:
            raise FieldError("num_nodes", f"{{key}}={self.num_nodes} is too small for G({self.degree},"
                                          f"{self.path_length}), which has {needed} nodes: set {{key}}>={needed}.")


@dataclass(frozen=True)
class StarGraph:
    edges: tuple[tuple[int, int], ...]  # shuffled
    source: int
    goal: int
    path: tuple[int, ...]  # source ... goal

    def prompt(self) -> str:
        edges = "|".join(f"{u},{v}" for u, v in self.edges)
        return f"{edges}/{self.source},{self.goal}="

    def answer(self) -> str:
        return ",".join(map(str, self.path))


def sample_graph(rng: random.Random, degree: int, path_length: int, num_nodes: int) -> StarGraph:
    nodes = rng.sample(range(num_nodes), 1 + degree * (path_length - 1))
    source, rest = nodes[0], nodes[1:]
    arms = [rest[i * (path_length - 1) : (i + 1) * (path_length - 1)] for i in range(degree)]
    edges = [(a, b) for arm in arms for a, b in zip([source, *arm[:-1]], arm, strict=True)]
    rng.shuffle(edges)
    goal_arm = arms[rng.randrange(degree)]
    return StarGraph(tuple(edges), source, goal_arm[-1], (source, *goal_arm))


def generate_splits(cfg: StarGraphConfig) -> dict[str, list[StarGraph]]:
    """Deterministic by `cfg.seed`; no graph (edge set with source and goal) is in two splits.

    Drawn in the order test, pretrain, train: the test set depends on nothing but the seed and its size,
    and pi_ref's data does not depend on the post-training set's size.
    """
    return draw_distinct_splits(
        {split: getattr(cfg, SPLIT_SIZES[split]) for split in cfg.draw_order},
        stream=lambda split: f"{cfg.seed}-{split}",
        draw=lambda rng: sample_graph(rng, cfg.degree, cfg.path_length, cfg.num_nodes),
        key=lambda graph: (frozenset(graph.edges), graph.goal),
        hint=f"G({cfg.degree},{cfg.path_length}) over {cfg.num_nodes} labels has too few distinct graphs: raise "
             "task.num_nodes or lower the sizes.",
    )


def parse_path(response: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(tok) for tok in response.replace(" ", "").split(","))
    except ValueError:
        return None


@register_task("star_graph", StarGraphConfig)
class StarGraphTask:
    name = "star_graph"
    reward_metric = "accuracy"

    def __init__(self, cfg: StarGraphConfig) -> None:
        self.cfg = cfg
        self._splits = generate_splits(cfg)

    def graphs(self, split: str) -> list[StarGraph]:
        """The split's graphs themselves (problems() gives their text), for probes that need the arms."""
        return self._splits[split]

    def problems(self, split: str) -> list[Problem]:
        return [
            Problem(id=f"{split}-{i}", prompt=g.prompt(), answer=g.answer())
            for i, g in enumerate(self._splits[split])
        ]

    def answer_of(self, response: str) -> str | None:
        path = parse_path(response)
        return ",".join(map(str, path)) if path is not None else None

    def same_answer(self, a: str, b: str) -> bool:
        return a == b

    def lookup_labels(self) -> list[str]:
        """The node labels: the base model's lookup corpus is written over them (training/base_corpus.py)."""
        return [str(label) for label in range(self.cfg.num_nodes)]

    def describe(self) -> dict:
        return {"graph": f"G({self.cfg.degree},{self.cfg.path_length})", "degree": self.cfg.degree}

    def reward(self, problem: Problem, response: str) -> float:
        return float(parse_path(response) == parse_path(problem.answer))

    def target(self, problem: Problem) -> str:
        return problem.answer

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """One token per node label and per separator, so the model sees the graph's structure."""
        vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, *SEPARATORS])}
        for label in range(self.cfg.num_nodes):
            vocab[str(label)] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(individual_digits=False)]
        )
        tok.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
        )
