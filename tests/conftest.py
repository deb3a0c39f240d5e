"""Shared fixtures: tiny random models and a star-graph tokenizer (no hub)."""

import pytest

from helpers import tiny_arch
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask


@pytest.fixture(scope="session")
def tiny_task():
    cfg = StarGraphConfig(degree=2, path_length=3, num_nodes=12, num_pretrain=50, num_train=20, num_test=10)
    return StarGraphTask(cfg)


@pytest.fixture(scope="session")
def tokenizer(tiny_task):
    return tiny_task.build_tokenizer()


@pytest.fixture(params=["gpt2", "llama"])
def arch(request):
    return request.param


@pytest.fixture
def pi_ref(tokenizer, arch):
    return build_causal_lm(tiny_arch(arch), tokenizer, seed=0).eval()
