"""Every experiment preset composes and validates."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qsharp_exp.__main__ import CONF_DIR
from qsharp_exp.compose import load_run_config
from test_config import compose_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import reproduce  # noqa: E402

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset):
    cfg = load_run_config(compose_cfg(f"+experiment={preset}"))
    expected_task = "star_graph" if preset.startswith(("star_graph", "smoke")) else preset.rsplit("_", 1)[-1]
    assert cfg.task.name == expected_task


def test_paper_presets_match_the_published_star_graph_code():
    g25 = load_run_config(compose_cfg("+experiment=star_graph_g25_paper"))
    assert (g25.task.degree, g25.task.path_length, g25.task.num_nodes) == (2, 5, 50)
    assert (g25.task.num_pretrain, g25.task.num_train, g25.task.num_test) == (200_000, 200_000, 20_000)
    # pi_ref = hub GPT-2 fine-tuned; the return model = GPT-2's trunk (not pi_ref's) with a scalar head per position.
    assert g25.model.base.pretrained == "gpt2" and g25.model.pi_ref_init == "base" and g25.model.guide.init == "base"
    assert g25.model.guide.head == "v" and g25.model.guide.distribution == "bernoulli"
    assert g25.algo.eta == 0.1 and g25.algo.top_k == 10 and g25.eval.temperature == 1.0
    assert g25.pretrain.lr == 2.5e-4 and g25.pretrain.batch_size == 256 and g25.pretrain.steps == 7813
    assert (g25.collect.mode, g25.collect.pair_tries, g25.collect.rounds) == ("pairs", 1024, 1)
    train = g25.guide_train
    assert (train.epochs, train.batch_size, train.lr, train.weight_decay) == (10, 512, 2.5e-4, 0.1)
    assert (train.warmup_fraction, train.warmup_steps) == (0.1, 100) and g25.hardware.bf16
    g38 = load_run_config(compose_cfg("+experiment=star_graph_g38_paper"))
    assert g38.model.base.pretrained == "gpt2-medium" and g38.model.base.n_layer == 24
    assert g38.hardware.device == "cuda"
    # Without the hub the same preset pretrains its base model here.
    offline = load_run_config(compose_cfg("+experiment=star_graph_g25_paper", "model.base.pretrained=null"))
    assert offline.model.base.pretrained is None and offline.model.base.n_layer == 12


def test_reproduce_table2_dry_run_lists_the_twelve_jobs_and_checks_them(capsys):
    assert reproduce.main(["table2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = [line for line in out.splitlines() if line.startswith("[")]
    assert len(jobs) == 12
    assert sum("pi_ref=meta-llama/Meta-Llama-3-8B-Instruct" in j for j in jobs) == 6
    assert sum("task=math" in j for j in jobs) == 6 and all("guide=meta-llama/Llama-3.2-1B-Instruct" in j for j in jobs)
    assert "all checked settings match the paper's" in out


def test_reproduce_qwen_dry_run_lists_the_aime_job_with_its_guide_trained_on_math(capsys):
    assert reproduce.main(["qwen", "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = [line for line in out.splitlines() if line.startswith("[")]
    assert len(jobs) == 9 and all("pi_ref=Qwen/Qwen2.5-7B-Instruct guide=Qwen/Qwen2.5-1.5B-Instruct" in j for j in jobs)
    aime = [j for j in jobs if "task=aime24 (trains on math)" in j]
    assert len(aime) == 3 and all("eta=0.1 top_k=20" in j and "eval_samples=8" in j for j in aime)
    assert "all checked settings match the paper's" in out
    aime_preset = [preset for preset in reproduce.qwen_presets() if preset.name == "qwen25_7b_aime24"]
    assert reproduce.dry_run(aime_preset, ("qsharp",), ["task.train_from=gsm8k"]) == 1
    assert "MISMATCH task.train_from: 'gsm8k', the paper's is 'math'" in capsys.readouterr().out


def test_reproduce_dry_run_flags_a_setting_that_differs_from_the_paper(capsys):
    assert reproduce.main(["table2", "--dry-run", "eval.top_p=1.0"]) == 1
    assert "MISMATCH eval.top_p: 1.0, the paper's is 0.9" in capsys.readouterr().out


def test_reproduce_star_graph_at_paper_scale_checks_the_three_graphs(capsys):
    assert reproduce.main(["star-graph", "--paper-scale", "--dry-run"]) == 0
    jobs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(jobs) == 18 and all("data=pairs" in j for j in jobs)
    assert sum("pi_ref=gpt2-medium fine-tuned guide=from base gpt2-medium" in j for j in jobs) == 6


def test_reproduce_star_graph_dry_run_flags_a_departure_from_the_published_code(capsys):
    assert reproduce.main(["star-graph", "--paper-scale", "--dry-run", "collect.mode=algorithm1",
                           "collect.rounds=1"]) == 1
    assert "MISMATCH collect.mode" in capsys.readouterr().out


def test_reproduce_star_graph_names_its_sweep_directory_after_an_added_experiment(monkeypatch):
    commands = []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda command, cwd: commands.append(command) or SimpleNamespace(returncode=0))
    assert reproduce.main(["star-graph", "+experiment=star_graph_g25"]) == 0
    root = reproduce.REPO / "multirun" / "reproduce_star_graph"
    assert f"hydra.sweep.dir={root / 'star_graph_g25'}" in commands[0]
    assert f"algo={','.join(reproduce.STAR_GRAPH_ALGOS)}" in commands[0]
    assert commands[1][-1] == str(root)  # the report over every preset's sweep


PLANNED_GPUS = {"gpu": 1, "zero2": 8, "zero3": 8, "zero3_offload": 8}  # the multi-GPU presets say 8 x 80 GB


def _planned(preset: str) -> bool:
    """A preset of one of the memory planner's model pairs (its `override /model:` line names one)."""
    from qsharp_exp.cli.memory import PAIRS

    text = (Path(CONF_DIR) / "experiment" / f"{preset}.yaml").read_text()
    return any(f"override /model: {name}\n" in text for name in PAIRS)


@pytest.mark.parametrize("preset", [p for p in PRESETS if _planned(p)])
def test_a_preset_of_the_papers_model_pairs_fits_its_gpus_by_the_memory_planner(preset):
    from qsharp_exp.cli.memory import PAIRS, SIZES, estimate

    cfg = load_run_config(compose_cfg(f"+experiment={preset}"))
    pi_ref, guide = PAIRS[cfg.model.name]
    batch = max(cfg.eval.batch_size, cfg.collect.batch_size)
    tokens = 512 + max(cfg.eval.max_new_tokens, cfg.collect.max_new_tokens or 0)  # a MATH prompt: < 512 tokens
    gpus = PLANNED_GPUS[cfg.hardware.name]
    peak = estimate(SIZES[pi_ref], SIZES[guide], cfg.hardware.name, gpus, batch, tokens)["peak"]
    assert peak + 4 <= 80, f"{preset}: {peak:.1f} GiB per GPU on {gpus} x 80 GB (hardware={cfg.hardware.name})"
