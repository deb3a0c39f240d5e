"""The base model (lookup corpus, stage), where pi_ref and the return model start, and pair-mode data."""

import json
import random
import re
from dataclasses import replace

import pytest
import torch

from helpers import sampler, tiny_arch
from qsharp_exp.config import ArchConfig, ConfigError, GuideConfig, load_run_config
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import return_model_from_lm
from qsharp_exp.models.stem import ConvGPT2LMHeadModel
from qsharp_exp.sampling.decoding import LMState
from qsharp_exp.stages import base_model, pi_ref, return_model
from qsharp_exp.stages.context import RunContext
from qsharp_exp.tasks.star_graph import sample_graph
from qsharp_exp.training.base_corpus import lookup_corpus
from qsharp_exp.training.collect import collect_pairs
from test_config import compose_cfg

STAR_GRAPH_PROMPT = re.compile(r"\d+,\d+(\|\d+,\d+)*/\d+,\d+=")
LABELS = [str(i) for i in range(50)]


def test_the_star_graph_pattern_recognises_star_graph_lines():
    rng = random.Random(0)
    for degree, length in ((2, 3), (2, 5), (5, 5), (3, 8)):
        graph = sample_graph(rng, degree, length, 50)
        assert STAR_GRAPH_PROMPT.fullmatch(graph.prompt())
        assert STAR_GRAPH_PROMPT.search(graph.prompt() + graph.answer())


def test_lookup_corpus_holds_no_star_graph_line_and_its_answers_follow_its_pairs():
    formats = set()
    for line in lookup_corpus(LABELS, 3000, 20, seed=0):
        assert not STAR_GRAPH_PROMPT.search((line.prompt + line.answer).replace(" ", "")), line
        edges, query = line.prompt.split(" / ")
        pairs = dict(pair.split(" , ") for pair in edges.split(" | "))
        chain, node = [], query.removesuffix(" =")
        while node in pairs:
            node = pairs[node]
            chain.append(node)
        # followed to the chain's end: no pair leaves its last label
        assert line.answer.replace(" , ", " ").split() == chain
        assert 1 <= len(pairs) <= 20
        formats.add("," in line.answer if len(chain) > 1 else None)
    assert {True, False} <= formats  # both answer formats occur


def test_lookup_corpus_is_deterministic_in_its_seed():
    assert lookup_corpus(LABELS, 50, 12, seed=1) == lookup_corpus(LABELS, 50, 12, seed=1)
    assert lookup_corpus(LABELS, 50, 12, seed=1) != lookup_corpus(LABELS, 50, 12, seed=2)


def test_cached_decoding_of_a_conv_stem_lm_matches_its_full_forward(tokenizer):
    model = build_causal_lm(replace(tiny_arch(), conv_width=4, initializer_range=0.2), tokenizer, seed=0).eval()
    assert isinstance(model, ConvGPT2LMHeadModel)
    torch.manual_seed(0)
    vocab = len(tokenizer)
    ids = torch.randint(7, vocab, (3, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = tokenizer.pad_token_id, 0  # a left-padded row
    state = LMState(model, ids, mask, capacity=20)
    for _ in range(4):
        token = torch.randint(7, vocab, (3,))
        state.advance(token, torch.ones(3, dtype=torch.bool))
        ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
        torch.testing.assert_close(state.logits, full[:, -1], atol=1e-5, rtol=1e-5)


def test_a_return_model_from_an_lm_keeps_its_trunk_and_stem_and_gets_a_fresh_head(tokenizer):
    lm = build_causal_lm(replace(tiny_arch(), conv_width=4), tokenizer, seed=0)
    guide = return_model_from_lm(GuideConfig(head="v"), lm, "somewhere", seed=3)
    trunk = guide.trunk.state_dict()
    for name, value in lm.transformer.state_dict().items():
        assert torch.equal(trunk[name], value), name
    assert torch.equal(guide.stem.conv.weight, lm.stem.conv.weight)
    assert guide.cfg.arch.pretrained == "somewhere" and guide.cfg.arch.conv_width == 4
    assert guide.head.weight.shape == (1, lm.config.n_embd)
    plain = return_model_from_lm(GuideConfig(head="v"), build_causal_lm(tiny_arch(), tokenizer, 0), "x", seed=3)
    assert plain.stem is None and plain.cfg.arch.conv_width == 0


def test_pair_mode_labels_the_reference_one_and_pi_refs_wrong_sample_zero(tiny_task, tokenizer):
    model = build_causal_lm(tiny_arch(), tokenizer, seed=0).eval()
    draw = sampler(model, tokenizer)
    problems = tiny_task.problems("train")[:8]
    rollouts, counts = collect_pairs(tiny_task, problems, draw, tries=3, seed=0)
    assert counts["pairs"] + counts["never_wrong"] == len(problems) and counts["pairs"] > 0
    by_problem = {}
    for r in rollouts:
        by_problem.setdefault(r.problem_id, []).append(r)
    answers = {p.id: p.answer for p in problems}
    for problem_id, (right, wrong) in by_problem.items():
        assert right.reward == 1.0 and right.switch == 0
        assert right.response == draw.codec.response_ids(answers[problem_id])
        assert wrong.reward == 0.0 and wrong.switch == 0 and wrong.response != right.response


def test_pair_mode_gives_no_pair_where_pi_ref_is_never_wrong(tiny_task, tokenizer):
    class AlwaysRight:  # every answer earns the reference's reward
        def __getattr__(self, name):
            return getattr(tiny_task, name)

        def reward(self, problem, response):
            return 1.0

    draw = sampler(build_causal_lm(tiny_arch(), tokenizer, seed=0).eval(), tokenizer)
    rollouts, counts = collect_pairs(AlwaysRight(), tiny_task.problems("train")[:4], draw, tries=2, seed=0)
    assert rollouts == [] and counts == {"pairs": 0, "never_wrong": 4, "sampling_passes": 2}


@pytest.mark.parametrize("override, key", [
    ("model.pi_ref_init=pi_ref", "model.pi_ref_init"),
    ("model.pi_ref.pretrained=gpt2", "model.pi_ref_init"),
    ("collect.mode=pairs", "collect.mode"),
    ("model.base.arch=llama", "model.base.conv_width"),
])
def test_an_inconsistent_init_or_collection_setting_names_its_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_run_config(compose_cfg(override))


# -- the stages, in process, on tiny settings -------------------------------------------------------

TINY = ["+experiment=smoke", "model.base.n_layer=2", "collect.rounds=1", "algo=cd"]


def context(tmp_path, *overrides) -> RunContext:
    cfg = load_run_config(compose_cfg(*TINY, f"cache_dir={tmp_path}", *overrides))
    return RunContext.create(cfg)


def return_model_config(ctx, reference) -> dict:
    base = base_model.load(ctx) if ctx.uses_base_model else None
    stage = return_model.train_rounds(ctx, reference, 1, base)[0]
    return json.loads((stage.path / "model" / "config.json").read_text())["guide"], stage


def test_each_init_choice_builds_the_model_it_names(tmp_path):
    ctx = context(tmp_path)  # the default: both from the base model (2 layers here; pi_ref's own arch has 1)
    base = base_model.load(ctx)
    assert 0.0 <= base.metrics["lookup_accuracy"] <= 1.0
    reference = pi_ref.load(ctx, base)
    assert not ctx.stages["base_model"].reused and ctx.stages["base_model"].build_seconds > 0
    assert isinstance(reference.model, ConvGPT2LMHeadModel) and reference.model.config.n_layer == 2
    guide, stage = return_model_config(ctx, reference)
    assert guide["arch"]["pretrained"] == base.source and guide["arch"]["conv_width"] == 6
    assert json.loads((stage.path / "inputs.json").read_text())["init"] == base.key

    ctx = context(tmp_path, "model.pi_ref_init=scratch", "model.guide.init=scratch")
    reference = pi_ref.load(ctx, None)
    assert type(reference.model).__name__ == "GPT2LMHeadModel" and reference.model.config.n_layer == 1
    guide, stage = return_model_config(ctx, reference)
    assert guide["arch"]["pretrained"] is None and guide["arch"]["n_layer"] == 1 and guide["arch"]["conv_width"] == 6
    assert json.loads((stage.path / "inputs.json").read_text())["init"] is None

    ctx = context(tmp_path, "model.pi_ref_init=scratch", "model.guide.init=pi_ref")
    reference = pi_ref.load(ctx, None)
    guide, stage = return_model_config(ctx, reference)
    assert guide["arch"]["pretrained"] == reference.source and guide["arch"]["conv_width"] == 0
    assert json.loads((stage.path / "inputs.json").read_text())["init"] == reference.key


def test_stage_keys_change_when_the_base_model_changes(tmp_path):
    keys = []
    for steps in (30, 31):
        ctx = context(tmp_path, f"base_pretrain.steps={steps}")
        reference = pi_ref.load(ctx, base_model.load(ctx))
        _, stage = return_model_config(ctx, reference)
        keys.append((base_model.load(ctx).key, reference.key, ctx.stages["rollouts_round1"].key, stage.key))
    assert all(a != b for a, b in zip(*keys, strict=True))
    # A shape over the same labels reuses the base model.
    other_shape = context(tmp_path, "base_pretrain.steps=31", "task.degree=3")
    assert base_model.load(other_shape).key == keys[1][0]
    assert other_shape.stages["base_model"].reused


def test_an_arch_of_the_base_model_is_its_own(tokenizer):
    assert isinstance(build_causal_lm(ArchConfig(conv_width=4), tokenizer, 0), ConvGPT2LMHeadModel)
    assert not isinstance(build_causal_lm(ArchConfig(), tokenizer, 0), ConvGPT2LMHeadModel)
