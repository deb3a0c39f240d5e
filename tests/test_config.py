"""Config composition and validation: bad values stop the run before any work, naming key and fix."""

import pytest
from hydra import compose, initialize_config_dir

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.config import ConfigError, load_run_config


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_defaults_are_star_graph_qsharp_on_cpu_with_paper_eta():
    cfg = load_run_config(compose_cfg())
    assert (cfg.task.name, cfg.algo.name, cfg.hardware.device) == ("star_graph", "qsharp", "cpu")
    assert cfg.algo.eta == 0.1 and cfg.algo.top_k == 10


@pytest.mark.parametrize("algo", ["qsharp", "cd", "pi_ref"])
@pytest.mark.parametrize("hardware", ["cpu", "gpu"])
def test_every_algo_and_hardware_composes(algo, hardware):
    cfg = load_run_config(compose_cfg(f"algo={algo}", f"hardware={hardware}"))
    assert cfg.algo.name == algo


@pytest.mark.parametrize(
    "override,key",
    [
        ("algo.eta=-0.1", "algo.eta"),
        ("algo.eta=0", "algo.eta"),
        ("algo.top_k=0", "algo.top_k"),
        ("task.degree=1", "task.degree"),
        ("task.num_nodes=4", "task.num_nodes"),
        ("model.guide.head=w", "model.guide.head"),
        ("eval.top_p=0", "eval.top_p"),
        ("algo.guide_round=3", "algo.guide_round"),
        ("collect.explore_prob=2", "collect.explore_prob"),
    ],
)
def test_bad_values_raise_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(compose_cfg(override))


def test_unknown_key_is_rejected_with_its_name():
    from omegaconf import OmegaConf

    cfg = compose_cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.algo.temprature = 0.5
    with pytest.raises(ConfigError, match="temprature"):
        load_run_config(cfg)


def test_wrong_type_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match="degree"):
        load_run_config(compose_cfg("task.degree=two"))
