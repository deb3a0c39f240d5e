"""Shared fixtures: tiny random models and a star-graph tokenizer (no hub)."""

import os
import tempfile

import pytest

from helpers import tiny_arch
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask


def pytest_configure(config):
    # The cache secret (sealing.py) of the tests' jobs, CLI subprocesses included, lives in a scratch directory
    # rather than the user's ~/.config.
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="qsharp_exp_tests_config_")


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
