"""Build only the base model of a configuration and print its held-out accuracy, overall and by kind of
question and number of hops: the capability a star-graph shape needs, measured in minutes before a run
spends an hour on it (docs/star_graph.md, "G(2,5)").

    python experiments/base_model_probe.py +experiment=star_graph_g25 [override ...]

The model lands in the run's stage cache (cache_dir), so the run that follows reuses it.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from hydra import compose, initialize_config_dir
from transformers.utils import logging as hf_logging

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.config import load_run_config
from qsharp_exp.stages import base_model
from qsharp_exp.stages.context import RunContext


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
    print(json.dumps({"overrides": overrides, "dir": str(stage.path), "reused": stage.reused,
                      "seconds": round(time.perf_counter() - start, 1), **base.metrics}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
