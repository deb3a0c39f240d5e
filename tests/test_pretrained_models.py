"""Pretrained models from a local path (as from the hub): pi_ref, the guide's trunk, the tokenizer check."""

import pytest
import torch

from helpers import codec, tiny_arch
from qsharp_exp.config import ArchConfig, GuideConfig, RunConfig, UserError
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import build_return_model
from qsharp_exp.stages.return_model_rounds import check_tokenizer
from qsharp_exp.tasks import build_task
from qsharp_exp.tasks.arithmetic import ArithmeticConfig


@pytest.fixture(scope="module")
def arithmetic():
    return build_task(ArithmeticConfig(name="arithmetic", num_pretrain=40, num_train=4, num_test=4))


@pytest.fixture(scope="module")
def saved_lm(arithmetic, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm")
    tokenizer = arithmetic.build_tokenizer()
    model = build_causal_lm(tiny_arch("llama"), tokenizer, 0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def test_guide_trunk_loads_pretrained_weights_from_a_path(saved_lm):
    path, model, tokenizer = saved_lm
    guide = build_return_model(GuideConfig(arch=ArchConfig(pretrained=str(path)), head="v"), tokenizer, 0)
    torch.testing.assert_close(guide.trunk.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_guide_with_another_tokenizer_is_one_clear_error(saved_lm, tokenizer):
    path, model, arithmetic_tokenizer = saved_lm
    cfg = RunConfig()
    cfg.model.guide = GuideConfig(arch=ArchConfig(pretrained=str(path)), head="v")
    star_pi_ref = build_causal_lm(tiny_arch("llama"), tokenizer, 0)
    with pytest.raises(UserError, match="does not share pi_ref's tokenizer"):
        check_tokenizer(cfg, codec(tokenizer, star_pi_ref))
    check_tokenizer(cfg, codec(arithmetic_tokenizer, model))  # the same tokenizer passes


def test_truncated_pretrained_weights_or_missing_tokenizer_files_are_one_clear_error(saved_lm, tmp_path):
    import shutil

    from qsharp_exp.models.lm import load_pretrained_lm, load_tokenizer

    path, _, _ = saved_lm
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="model.pi_ref.pretrained=.* could not be loaded .*SafetensorError"):
        load_pretrained_lm(str(broken), "model.pi_ref.pretrained", None)
    # A GPT-2 directory without tokenizer files: transformers would return an empty tokenizer.
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="has no tokenizer files"):
        load_tokenizer(str(tmp_path / "gpt2"), "model.pi_ref.pretrained")


def test_a_local_model_is_keyed_by_its_files_not_its_path(saved_lm, tmp_path):
    import shutil

    from qsharp_exp.models.identity import model_identity

    path, _, _ = saved_lm
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert model_identity(str(copy), "k") == model_identity(str(path), "k")  # moved or copied: the same model
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"vocab_size"', '"tie_word_embeddings": true, "vocab_size"'))
    assert config.read_text() != (path / "config.json").read_text()
    assert model_identity(str(copy), "k") != model_identity(str(path), "k")  # rewritten in place: another model


def test_a_hub_model_is_keyed_by_the_commit_its_id_resolves_to(tmp_path, monkeypatch):
    from qsharp_exp.models.identity import model_identity

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--tiny"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    keys = []
    for commit in ("a" * 40, "b" * 40):  # the hub repository was updated: main moved
        (repo / "refs" / "main").write_text(commit)
        keys.append(model_identity("org/tiny", "model.pi_ref.pretrained"))
    assert keys == [{"hub_id": "org/tiny", "revision": "a" * 40}, {"hub_id": "org/tiny", "revision": "b" * 40}]
    with pytest.raises(UserError, match="model.pi_ref.pretrained=org/missing: its revision"):
        model_identity("org/missing", "model.pi_ref.pretrained")


@pytest.mark.parametrize("kind", ["encoder", "trunk"])
def test_a_checkpoint_that_is_not_a_causal_lm_is_refused_naming_what_it_is(tmp_path, kind):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    from qsharp_exp.config import UserError
    from qsharp_exp.models.lm import load_pretrained_lm

    if kind == "encoder":
        model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, vocab_size=50))
    else:
        model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    model.save_pretrained(tmp_path)
    with pytest.raises(UserError, match=f"is a {type(model).__name__}, not a causal LM"):
        load_pretrained_lm(str(tmp_path), "model.pi_ref.pretrained", None)


def test_a_pi_ref_whose_tokenizer_lacks_the_tasks_labels_stops_before_any_work(tmp_path):
    from qsharp_exp.tasks.star_graph import StarGraphConfig
    from test_cli import cli

    small = build_task(StarGraphConfig(num_nodes=12, num_pretrain=1, num_train=1, num_test=1))
    tokenizer = small.build_tokenizer()
    build_causal_lm(tiny_arch(), tokenizer, 0).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    result = cli("+experiment=smoke", "task.num_nodes=16", "model.pi_ref_init=scratch", "model.guide.init=scratch",
                 f"model.pi_ref.pretrained={tmp_path / 'lm'}",
                 f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"model.pi_ref.pretrained={tmp_path / 'lm'}: its tokenizer cannot represent the task's text" in result.stderr
    assert not (tmp_path / "c" / "rollouts_round1").exists()
