"""Config composition and validation: bad values stop the run before any work, naming key and fix."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.compose import load_run_config
from qsharp_exp.config import ConfigError


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
        ("model.pi_ref.n_kv_head=3", "model.pi_ref.n_kv_head"),  # gpt2 has no grouped-query attention
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


@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_math_tasks_carry_the_papers_protocol(task):
    cfg = load_run_config(compose_cfg(f"task={task}"))
    assert cfg.task.name == task and cfg.task.chat_template
    assert cfg.model.pi_ref.pretrained == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert cfg.model.guide.arch.pretrained == "meta-llama/Llama-3.2-1B-Instruct"
    assert (cfg.model.guide.head, cfg.model.guide.distribution) == ("v", "bernoulli")
    assert (cfg.algo.eta, cfg.algo.top_k) == (0.1, 20)
    assert (cfg.collect.rounds, cfg.collect.samples_per_problem, cfg.collect.explore_prob) == (2, 16, 0.0)
    assert (cfg.guide_train.lr, cfg.guide_train.weight_decay, cfg.guide_train.epochs) == (2e-5, 0.01, 5)
    assert (cfg.eval.num_samples, cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens) == (8, 0.8, 0.9, 1024)
    assert cfg.hardware.bf16 and not cfg.eval.paper_compat
    assert (cfg.task.num_train, cfg.task.num_test) == (None, None)  # all of them


MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_with_every_task(model):
    for task in ("star_graph", "gsm8k", "arithmetic"):
        assert load_run_config(compose_cfg(f"task={task}", f"model={model}")).model.name == model


@pytest.mark.parametrize(
    "override,key",
    [("task.num_train=null", "task.num_train"), ("model.guide.distribution=l2", "model.guide.distribution"),
     ("guide_train.epochs=0", "guide_train.epochs"), ("task.max_ops=0", "task.max_ops")],
)
def test_bad_arithmetic_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(compose_cfg("task=arithmetic", override))


@pytest.mark.parametrize("hardware", ["gpu", "zero2"])
def test_gpu_hardware_declares_cuda_graphs_and_compiled_decoding_off_so_plain_overrides_work(hardware):
    assert not load_run_config(compose_cfg(f"hardware={hardware}")).hardware.cuda_graphs
    # A plain override (no '+') is accepted only for keys the composed YAML declares.
    cfg = load_run_config(compose_cfg(f"hardware={hardware}", "hardware.cuda_graphs=true",
                                      "hardware.compile_decoding=true"))
    assert cfg.hardware.cuda_graphs and cfg.hardware.compile_decoding


@pytest.mark.parametrize(
    "override,key",
    [("pretrain.lr=nan", "pretrain.lr"), ("guide_train.lr=nan", "guide_train.lr"),
     ("algo.policy.lr=inf", "algo.policy.lr"), ("pretrain.weight_decay=-1", "pretrain.weight_decay"),
     ("hardware.num_threads=-1", "hardware.num_threads"), ("guide_train.val_fraction=2", "guide_train.val_fraction"),
     ("cache_dir=", "cache_dir"), ("algo.eta=inf", "algo.eta"), ("collect.eta=nan", "collect.eta"),
     ("guide_train.checkpoint_every=-5", "guide_train.checkpoint_every"),
     ("guide_train.keep_checkpoints=0", "guide_train.keep_checkpoints"),
     ("seed=18446744073709551615", "seed"), ("seed=-1", "seed"), ("task.seed=2147483648", "task.seed"),
     ("base_pretrain.seed=-3", "base_pretrain.seed")],
)
def test_values_that_would_fail_later_or_write_non_json_stop_at_once(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(compose_cfg(override))


@pytest.mark.parametrize("task", ["star_graph", "gsm8k", "math", "arithmetic"])
def test_every_key_of_the_schema_is_in_the_composed_config_so_plain_overrides_work(task):
    from omegaconf import OmegaConf

    from qsharp_exp.config import as_dict

    def keys(tree, prefix=""):
        return {f"{prefix}{k}" for k, v in tree.items()} | {
            key for k, v in tree.items() if isinstance(v, dict) for key in keys(v, f"{prefix}{k}.")}

    composed = compose_cfg(f"task={task}")
    schema = keys(as_dict(load_run_config(composed)))
    assert schema <= keys(OmegaConf.to_container(composed, resolve=False))
    cfg = load_run_config(compose_cfg(f"task={task}", "eval.reward_model=false", "guide_train.checkpoint_every=7"))
    assert not cfg.eval.reward_model and cfg.guide_train.checkpoint_every == 7


def test_collection_samples_as_eval_unless_its_own_sampling_is_set(tmp_path):
    from qsharp_exp.stages.context import RunContext

    ctx = RunContext.create(load_run_config(compose_cfg(f"cache_dir={tmp_path}", "eval.temperature=0.7")))
    assert ctx.collect_spec == ctx.spec and ctx.collect_spec.temperature == 0.7
    own = RunContext.create(load_run_config(compose_cfg(f"cache_dir={tmp_path}", "collect.max_new_tokens=9",
                                                        "collect.top_p=0.5")))
    assert (own.collect_spec.max_new_tokens, own.collect_spec.top_p) == (9, 0.5)
    assert own.collect_spec.temperature == own.spec.temperature and own.spec.max_new_tokens != 9


@pytest.mark.parametrize("override,key", [("collect.top_k=0", "collect.top_k"), ("collect.top_p=0", "collect.top_p"),
                                          ("collect.temperature=0", "collect.temperature"),
                                          ("collect.non_candidates=drop", "collect.non_candidates")])
def test_bad_collection_sampling_names_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(compose_cfg(override))


@pytest.mark.parametrize("override, message", [
    ("algo.eta=1e-300", "algo.eta=1e-300 must lie in [1e-06, 1e+06]"),
    ("collect.eta=1e7", "collect.eta=10000000.0 must lie in [1e-06, 1e+06]"),
    ("eval.temperature=1e-9", "eval.temperature=1e-09 must lie in [0.001, 1000]"),
    ("model.guide.v_max=inf", "model.guide.v_max=inf must lie in [-1e+06, 1e+06]"),
    ("model.pi_ref_init=scratch model.pi_ref.n_head=0", "model.pi_ref.n_head=0 must be >= 1"),
    ("model.base.dropout=2", "model.base.dropout=2.0 must lie in [0, 1)"),
    ("model.base.initializer_range=-1", "model.base.initializer_range=-1.0 must lie in [1e-06, 1]"),
    ("model.guide.arch.max_positions=0", "model.guide.arch.max_positions=0 must be >= 1"),
])
def test_values_beyond_what_the_numerics_survive_are_rejected_naming_key_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(compose_cfg(*override.split()))
    assert message in str(err.value)
