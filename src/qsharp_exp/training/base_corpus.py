"""The base model's corpora: what a small LM is pretrained on here before pi_ref and the return model start
from it (`base_pretrain.corpus`): `lookup` (star-graph, below) or `arithmetic` (math, arithmetic_corpus.py).
Each turns its text into (prompt ids, response ids, scored positions) lines with the task's tokenizer, and
names the held-out accuracy it reports.

`lookup`: generic in-context lookup over a task's label vocabulary.

The CPU analogue of language pretraining (docs/method.md, section 4). A line lists a few shuffled pairs
`a , b` that chain labels into disjoint paths, then asks for the path that continues from one label:
`7 , 3 | 12 , 5 | 3 , 9 / 7 = 3 , 9`. Predicting the answer means finding, in context, the pair that
starts with the label just seen and copying its second element, hop after hop: the lookup and pointer
following that induction and copy heads give a language-pretrained GPT-2. Half the answers separate
their labels by commas, half list them back to back (`3 9`), so that the lookup is made at a label's
own position as well as at the separator after it. A share of lines (`chain_end_fraction`) asks instead
where a chain ends, in one prediction: `7 , 3 | 12 , 5 | 3 , 9 | 9 , 4 = 7 , 3` is answered by `4`, two
pairs on from `3`. That is the multi-hop lookup a return model makes when it judges a path's first choice
by whether that choice's chain ends at the goal, and it is asked where the return model needs it: at a
label that follows another after `=`, as a path's first choice follows its source. (Asked after a single
label, `= 7` answered by `9`, the lookup was learned but not made at the first choice: docs/star_graph.md.)
A line is never a star-graph problem (a follow query names one label, `/ q =`; a chain-end question names a
pair after `=` with no `/`, where a star-graph prompt is `/ source , goal =`), and its answer follows a
chain from where the query starts, not from a shared source to a goal: the corpus gives the capability,
not the task.

Lines are written as tokens separated by spaces (`tokens`): a label is one token of the task's tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from qsharp_exp.config import BasePretrainConfig, UserError, as_dict
from qsharp_exp.tasks.base import Task
from qsharp_exp.training.arithmetic_corpus import calculation_lines

MAX_CHAIN = 5  # labels per chain: up to four hops of following


@dataclass(frozen=True)
class LookupLine:
    prompt: str
    answer: str
    kind: str  # `follow` (the chain, label by label) or `chain_end` (its last label, in one prediction)
    hops: int  # pairs followed from the query to the answer's last label


def lookup_line(rng: random.Random, labels: Sequence[str], max_pairs: int, chain_end_fraction: float = 0.0
                ) -> LookupLine:
    """One line: 1..max_pairs pairs forming disjoint chains of 2..MAX_CHAIN labels, and a query.

    A `chain_end` line (a `chain_end_fraction` share) names a pair `p , q` of a chain and asks where the
    chain ends, `pairs = p , q` answered by `e`, `hops` (uniform in 1..4) pairs on from `q`: the model must
    chain its lookups within one position, at a label that follows another, as a return model must at a
    path's first choice (`source , choice`)."""
    chain_end = chain_end_fraction > 0 and rng.random() < chain_end_fraction  # no draw: old corpora stay
    hops = rng.randint(1, min(MAX_CHAIN - 1, max_pairs - 1, len(labels) - 2)) if chain_end else 1
    target = rng.randint(hops + 1 if chain_end else 1, max_pairs)
    pool = rng.sample(list(labels), len(labels))
    chains: list[list[str]] = []
    used = pairs = 0
    while pairs < target and len(pool) - used >= 2:
        # The first chain is long enough for the query: a pair before the hops for a chain-end question.
        shortest = (hops + 2 if chain_end else hops + 1) if not chains else 2
        n = min(rng.randint(shortest, MAX_CHAIN + chain_end), target - pairs + 1, len(pool) - used)
        chains.append(pool[used : used + n])
        used += n
        pairs += n - 1
    edges = [(a, b) for chain in chains for a, b in zip(chain[:-1], chain[1:], strict=True)]
    rng.shuffle(edges)
    listed = " | ".join(f"{a} , {b}" for a, b in edges)
    if chain_end:
        chain = rng.choice([c for c in chains if len(c) > hops + 1])
        return LookupLine(f"{listed} = {chain[-2 - hops]} , {chain[-1 - hops]}", chain[-1], "chain_end", hops)
    chain = rng.choice(chains)
    start = rng.randrange(len(chain) - 1)
    separator = rng.choice((" , ", " "))
    return LookupLine(f"{listed} / {chain[start]} =", separator.join(chain[start + 1 :]), "follow",
                      len(chain) - 1 - start)


def tokens(text: str) -> list[str]:
    return text.split()


def lookup_corpus(labels: Sequence[str], lines: int, max_pairs: int, seed: int | str,
                  chain_end_fraction: float = 0.0) -> list[LookupLine]:
    """`lines` lines, deterministic in `seed`."""
    if len(labels) < 2:
        raise ValueError(f"a lookup corpus needs at least two labels, got {len(labels)}")
    rng = random.Random(f"lookup-corpus-{seed}")
    return [lookup_line(rng, labels, max_pairs, chain_end_fraction) for _ in range(lines)]


# -- corpora as token lines ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusLine:
    prompt: list[int]
    response: list[int]  # ends in EOS; the loss is taken on it
    scored: list[int] | None = None  # response positions the held-out accuracy checks (None: all)
    group: str = ""  # the held-out accuracy is also reported per group (lookup: kind and hops)


@dataclass(frozen=True)
class BaseCorpus:
    metric: str  # the held-out accuracy's name in the base model's metrics
    settings: tuple[str, ...]  # the fields of base_pretrain only this corpus reads
    # What of the task the corpus depends on (part of the base model's stage key).
    task_inputs: Callable[[Task], dict[str, Any]]
    # (task, tokenizer, settings, seed) -> corpus_lines + eval_lines lines
    lines: Callable[[Task, PreTrainedTokenizerBase, BasePretrainConfig, int], list[CorpusLine]]
    # Raised whenever the same settings come to give other lines (part of the base model's stage key).
    revision: int = 1


def _labels(task: Task) -> list[str]:
    labels = getattr(task, "lookup_labels", None)
    if labels is None:
        raise UserError(f"task={task.name} has no label vocabulary for the lookup corpus: set base_pretrain.corpus "
                        "to another corpus, model.base.pretrained to a pretrained LM, or model.pi_ref_init=scratch "
                        "and model.guide.init=scratch (or pi_ref).")
    return list(labels())


def _label_ids(vocab: dict[str, int], text: str) -> list[int]:
    """The lookup corpus's tokens as ids: each label and separator is one token of the task's tokenizer."""
    missing = sorted({t for t in tokens(text) if t not in vocab})
    if missing:
        raise UserError(f"the task's tokenizer has no token for {', '.join(missing)}: the lookup corpus needs every "
                        "label and separator as one token; use model.base.pretrained for other tokenizers.")
    return [vocab[t] for t in tokens(text)]


def _lookup_lines(task: Task, tokenizer: PreTrainedTokenizerBase, cfg: BasePretrainConfig, seed: int
                  ) -> list[CorpusLine]:
    vocab = tokenizer.get_vocab()
    lines = lookup_corpus(_labels(task), cfg.corpus_lines + cfg.eval_lines, cfg.max_pairs, seed,
                          cfg.chain_end_fraction)
    return [CorpusLine(_label_ids(vocab, x.prompt), _label_ids(vocab, x.answer) + [tokenizer.eos_token_id],
                       group=f"{x.kind}_hops_{x.hops}") for x in lines]


def _arithmetic_lines(task: Task, tokenizer: PreTrainedTokenizerBase, cfg: BasePretrainConfig, seed: int
                      ) -> list[CorpusLine]:
    """The first number is the prompt; the loss covers the rest; held-out lines score the results' tokens."""
    out = []
    for text, results in calculation_lines(cfg.corpus_lines + cfg.eval_lines, cfg.max_operand, cfg.max_steps, seed):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        cut = next(i for i, (start, _) in enumerate(offsets) if start >= text.index(" "))
        scored = [i - cut for i, (start, end) in enumerate(offsets)
                  if i >= cut and any(a <= start and end <= b for a, b in results)]
        out.append(CorpusLine(ids[:cut], ids[cut:] + [tokenizer.eos_token_id], scored))
    return out


CORPORA: dict[str, BaseCorpus] = {
    "lookup": BaseCorpus("lookup_accuracy", ("max_pairs", "chain_end_fraction", "chain_end_steps"),
                         lambda task: {"labels": _labels(task)}, _lookup_lines,
                         revision=2),  # 2: a chain-end question names a pair of the chain (`= p , q`)
    "arithmetic": BaseCorpus("result_accuracy", ("max_operand", "max_steps"), lambda task: {}, _arithmetic_lines),
}


def settings_of(cfg: BasePretrainConfig) -> dict[str, Any]:
    """`cfg` as a dict without the settings of corpora other than the chosen one (a base model's inputs)."""
    others = {name for kind, corpus in CORPORA.items() if kind != cfg.corpus.value for name in corpus.settings}
    return {k: v for k, v in as_dict(cfg).items() if k not in others}
