"""Every experiment preset composes and validates."""

from pathlib import Path

import pytest

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.config import load_run_config
from test_config import compose_cfg

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset):
    cfg = load_run_config(compose_cfg(f"+experiment={preset}"))
    assert cfg.task.name == "star_graph"


def test_paper_presets_carry_the_papers_settings():
    g25 = load_run_config(compose_cfg("+experiment=star_graph_g25_paper"))
    assert (g25.task.degree, g25.task.path_length, g25.task.num_nodes) == (2, 5, 50)
    assert (g25.task.num_pretrain, g25.task.num_train, g25.task.num_test) == (200_000, 200_000, 20_000)
    assert g25.model.pi_ref.n_layer == 12 and g25.model.pi_ref.n_embd == 768
    assert g25.algo.eta == 0.1 and g25.algo.top_k == 10 and g25.eval.temperature == 1.0
    assert g25.pretrain.lr == 2.5e-4 and g25.guide_train.lr == 1e-4 and g25.pretrain.batch_size == 256
    g38 = load_run_config(compose_cfg("+experiment=star_graph_g38_paper"))
    assert g38.model.pi_ref.n_layer == 24 and g38.model.pi_ref.n_embd == 1024
    assert g38.hardware.device == "cuda"
