"""Pretrained models from a local path (as from the hub): pi_ref, the guide's trunk, the tokenizer check."""

import pytest
import torch

from helpers import codec, tiny_arch
from qsharp_exp.config import ArchConfig, GuideConfig, RunConfig, UserError
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import build_return_model
from qsharp_exp.stages.return_model import check_tokenizer
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
