"""The base model's corpus: generic in-context lookup over a task's label vocabulary.

The CPU analogue of language pretraining (docs/method.md, section 4). A line lists a few shuffled pairs
`a , b` that chain labels into disjoint paths, then asks for the path that continues from one label:
`7 , 3 | 12 , 5 | 3 , 9 / 7 = 3 , 9`. Predicting the answer means finding, in context, the pair that
starts with the label just seen and copying its second element, hop after hop: the lookup and pointer
following that induction and copy heads give a language-pretrained GPT-2. Half the answers separate
their labels by commas, half list them back to back (`3 9`), so that the lookup is made at a label's
own position as well as at the separator after it. A line is never a star-graph problem (the query names
one label, `/ q =`, where a star-graph prompt names two, `/ source , goal =`), and its answer follows a
chain from where the query starts, not from a shared source to a goal: the corpus gives the capability,
not the task.

Lines are written as tokens separated by spaces (`tokens`): a label is one token of the task's tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from qsharp_exp.tasks.base import Problem

MAX_CHAIN = 5  # labels per chain: up to four hops of following


def lookup_line(rng: random.Random, labels: Sequence[str], max_pairs: int) -> Problem:
    """One line: 1..max_pairs pairs forming disjoint chains of 2..MAX_CHAIN labels, and a query."""
    target = rng.randint(1, max_pairs)
    pool = rng.sample(list(labels), len(labels))
    chains: list[list[str]] = []
    used = pairs = 0
    while pairs < target and len(pool) - used >= 2:
        n = min(rng.randint(2, MAX_CHAIN), target - pairs + 1, len(pool) - used)
        chains.append(pool[used : used + n])
        used += n
        pairs += n - 1
    edges = [(a, b) for chain in chains for a, b in zip(chain[:-1], chain[1:], strict=True)]
    rng.shuffle(edges)
    chain = rng.choice(chains)
    start = rng.randrange(len(chain) - 1)
    prompt = " | ".join(f"{a} , {b}" for a, b in edges) + f" / {chain[start]} ="
    separator = rng.choice((" , ", " "))
    return Problem(id="", prompt=prompt, answer=separator.join(chain[start + 1 :]))


def tokens(text: str) -> list[str]:
    return text.split()


def lookup_corpus(labels: Sequence[str], lines: int, max_pairs: int, seed: int | str) -> list[Problem]:
    """`lines` lines, deterministic in `seed`; ids number them."""
    if len(labels) < 2:
        raise ValueError(f"a lookup corpus needs at least two labels, got {len(labels)}")
    rng = random.Random(f"lookup-corpus-{seed}")
    out = []
    for i in range(lines):
        line = lookup_line(rng, labels, max_pairs)
        out.append(Problem(id=f"lookup-{i}", prompt=line.prompt, answer=line.answer))
    return out
