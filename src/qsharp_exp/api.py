"""The Python API (docs/api.md): what the command line does, from a notebook or a script.

    import qsharp_exp
    cfg = qsharp_exp.compose_config("+experiment=smoke", "algo=qsharp", "algo.eta=0.1")
    metrics = qsharp_exp.run(cfg, "outputs/notebook")
    pi_ref, tokenizer = qsharp_exp.load_pi_ref(metrics)
    guide = qsharp_exp.load_guide(metrics)
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp.compose import compose_config
from qsharp_exp.config import RunConfig
from qsharp_exp.models.lm import load_pretrained_lm, load_tokenizer
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.reporting.records import guide_folder, recorded_dir

__all__ = ["compose_config", "load_guide", "load_pi_ref", "run"]


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Run the pipeline of `cfg` (stages in cfg.cache_dir are reused) and return its metrics.json, also
    written into `out_dir` with samples.jsonl and config.json."""
    from qsharp_exp.pipeline import run as run_pipeline

    return run_pipeline(cfg, Path(out_dir))


def load_pi_ref(metrics: dict | str | Path, dtype: torch.dtype | None = None
                ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """pi_ref and its tokenizer: from a run's metrics (its pi_ref, pretrained here or not), or a model folder."""
    source = _pi_ref_source(metrics) if isinstance(metrics, dict) else str(metrics)
    return load_pretrained_lm(source, "pi_ref", dtype).eval(), load_tokenizer(source, "pi_ref")


def load_guide(source: dict | str | Path, dtype: torch.dtype | None = None) -> ReturnModel:
    """A trained return model (the guide): a run's metrics (its guiding round's model, the last one where it
    ranks only), a return model folder, or a hub id."""
    if isinstance(source, dict):
        source = guide_folder(source) / "model"
    return ReturnModel.from_pretrained(source, dtype=dtype).eval()


def _pi_ref_source(metrics: dict) -> str:
    if "dir_pi_ref" in metrics:
        return str(recorded_dir(metrics, "dir_pi_ref") / "model")
    raise ValueError("these metrics name no pi_ref folder: pi_ref was pretrained elsewhere; pass its hub id or path")
