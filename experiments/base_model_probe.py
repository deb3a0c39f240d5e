"""Build only the base model of a configuration and print its held-out accuracy, overall and by kind of
question and number of hops: the capability a star-graph shape needs, measured in minutes before a run
spends an hour on it (docs/star_graph.md, "G(2,5)"). On star-graph it also prints
`first_choice_predicts_arm_end`: given a test graph's prompt and `source , choice`, how often the base
model's next-token prediction is the end of the choice's arm, the lookup a return model needs there.

    python experiments/base_model_probe.py +experiment=star_graph_g25 [override ...]

The model lands in the run's stage cache (cache_dir), so the run that follows reuses it.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.compose import load_run_config
from qsharp_exp.stages import base_model
from qsharp_exp.stages.context import RunContext
from qsharp_exp.tasks.star_graph import StarGraph


def main(overrides: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.disable_progress_bar()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = load_run_config(compose(config_name="config", overrides=overrides))
    ctx = RunContext.create(cfg)
    if not ctx.uses_base_model:
        sys.exit("error: this configuration uses no base model built here (model.base.pretrained or scratch inits)")
    start = time.perf_counter()
    base = base_model.load(ctx)
    stage = ctx.stages["base_model"]
    seconds = round(time.perf_counter() - start, 1)
    extra = {}
    if ctx.task.name == "star_graph":
        model = AutoModelForCausalLM.from_pretrained(base.source).to(ctx.hw.device)
        extra["first_choice_predicts_arm_end"] = first_choice_predicts_arm_end(
            model, ctx.task_tokenizer, ctx.task.graphs("test")[:300], ctx.hw.device)
    print(json.dumps({"overrides": overrides, "dir": str(stage.path), "reused": stage.reused,
                      "seconds": seconds, **base.metrics, **extra}, indent=1))
    return 0


@torch.no_grad()
def first_choice_predicts_arm_end(model, tokenizer, graphs: list[StarGraph], device) -> float:
    """Share of (graph, first choice) pairs, over every arm of each graph, where the model's top next token
    after `prompt source , choice` is the last label of that choice's arm."""
    hits = []
    for graph in graphs:
        follow = {u: v for u, v in graph.edges if u != graph.source}
        for choice in (v for u, v in graph.edges if u == graph.source):
            end = choice
            while end in follow:
                end = follow[end]
            text = f"{graph.prompt()}{graph.source},{choice}"
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            top = model(input_ids=ids).logits[0, -1].argmax().item()
            hits.append(tokenizer.convert_ids_to_tokens(top) == str(end))
    return sum(hits) / len(hits)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
