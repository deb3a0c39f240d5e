"""The base model (lookup corpus, stage), where pi_ref and the return model start, and pair-mode data."""

import json
import random
import re
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import sampler, tiny_arch
from qsharp_exp.compose import load_run_config
from qsharp_exp.config import ArchConfig, BaseCorpusKind, ConfigError, GuideConfig
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.models.return_model import return_model_from_lm
from qsharp_exp.models.stem import ConvGPT2LMHeadModel
from qsharp_exp.sampling import Draw
from qsharp_exp.sampling.decoding import LMState
from qsharp_exp.stages import base_model, pi_ref, return_model_rounds
from qsharp_exp.stages.context import RunContext
from qsharp_exp.tasks.star_graph import StarGraph, sample_graph
from qsharp_exp.training.base_corpus import CORPORA, lookup_corpus, settings_of
from qsharp_exp.training.collect import collect_pairs
from qsharp_exp.training.pretrain import pretrain
from test_config import compose_cfg

STAR_GRAPH_PROMPT = re.compile(r"\d+,\d+(\|\d+,\d+)*/\d+,\d+=")
LABELS = [str(i) for i in range(50)]


def test_the_star_graph_pattern_recognises_star_graph_lines():
    rng = random.Random(0)
    for degree, length in ((2, 3), (2, 5), (5, 5), (3, 8)):
        graph = sample_graph(rng, degree, length, 50)
        assert STAR_GRAPH_PROMPT.fullmatch(graph.prompt())
        assert STAR_GRAPH_PROMPT.search(graph.prompt() + graph.answer())


def follow(pairs: dict[str, str], node: str, hops: int | None = None) -> list[str]:
    """The labels reached from `node` by following pairs (`hops` of them, or to the chain's end)."""
    chain = []
    while node in pairs and (hops is None or len(chain) < hops):
        node = pairs[node]
        chain.append(node)
    return chain


def test_lookup_corpus_holds_no_star_graph_line_and_its_answers_follow_its_pairs():
    formats, hops = set(), {"follow": [], "chain_end": []}
    for line in lookup_corpus(LABELS, 4000, 20, seed=0, chain_end_fraction=0.5):
        assert not STAR_GRAPH_PROMPT.search((line.prompt + line.answer).replace(" ", "")), line
        if line.kind == "follow":
            edges, query = line.prompt.split(" / ")
            query = query.removesuffix(" =")
        else:
            edges, named_pair = line.prompt.split(" = ")
            before, query = named_pair.split(" , ")  # a pair of a chain: the question starts from its second
        pairs = dict(pair.split(" , ") for pair in edges.split(" | "))
        assert 1 <= len(pairs) <= 20
        if line.kind == "chain_end":
            assert pairs[before] == query
        chain = follow(pairs, query)  # followed to the chain's end: no pair leaves its last label
        assert len(chain) == line.hops
        if line.kind == "follow":
            assert line.answer.replace(" , ", " ").split() == chain
            formats.add("," in line.answer if len(chain) > 1 else None)
        else:
            assert line.answer == chain[-1] and follow(pairs, query, line.hops)[-1] == line.answer
        hops[line.kind].append(line.hops)
    assert {True, False} <= formats  # both answer formats occur
    assert 1800 < len(hops["chain_end"]) < 2200
    counts = [hops["chain_end"].count(h) for h in (1, 2, 3, 4)]  # uniform over one to four hops
    assert all(abs(c - len(hops["chain_end"]) / 4) < 100 for c in counts), counts
    assert set(hops["follow"]) == {1, 2, 3, 4}


def test_lookup_corpus_without_chain_end_questions_draws_the_same_lines_as_before_they_existed():
    lines = lookup_corpus(LABELS, 200, 12, seed=3)
    assert {x.kind for x in lines} == {"follow"}
    assert lookup_corpus(LABELS, 200, 12, seed=3, chain_end_fraction=0.0) == lines
    # The first line of seed 3, as drawn before chain-end questions were added.
    assert (lines[0].prompt, lines[0].answer) == ('0 , 28 | 26 , 19 | 40 , 26 / 0 =', '28')


def test_lookup_corpus_is_deterministic_in_its_seed():
    assert lookup_corpus(LABELS, 50, 12, seed=1) == lookup_corpus(LABELS, 50, 12, seed=1)
    assert lookup_corpus(LABELS, 50, 12, seed=1) != lookup_corpus(LABELS, 50, 12, seed=2)
    assert lookup_corpus(LABELS, 50, 12, 1, 0.5) == lookup_corpus(LABELS, 50, 12, 1, 0.5)


class NextLabel(torch.nn.Module):
    """A stand-in LM whose top prediction after token t is always t + 1."""

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": torch.nn.functional.one_hot((input_ids + 1) % 32, 32).float()})()


def test_held_out_accuracy_by_hops_counts_each_group_on_a_hand_built_corpus():
    from qsharp_exp.config import HardwareConfig
    from qsharp_exp.hardware import Hardware
    from qsharp_exp.training.base_corpus import CorpusLine
    from qsharp_exp.training.pretrain import exact_matches

    eos = 31  # NextLabel predicts 31 after 30: a response ending 30, 31 is right to its end
    lines = [
        CorpusLine([1, 2], [3, 9, eos], group="follow_hops_2"),  # wrong at 9
        CorpusLine([4, 5], [6, 7, eos], group="follow_hops_2"),  # wrong at the end (after 7 comes 8)
        CorpusLine([28, 29], [30, eos], group="follow_hops_2"),  # right
        CorpusLine([10, 11], [12, eos], scored=[0], group="chain_end_hops_3"),  # right where scored
        CorpusLine([10, 11], [13, eos], scored=[0], group="chain_end_hops_3"),  # wrong
        CorpusLine([20], [21, eos], scored=[0], group="chain_end_hops_1"),  # right
    ]
    hits = exact_matches(NextLabel(), [(x.prompt, x.response) for x in lines], 0, Hardware(HardwareConfig()),
                         batch_size=4, scored=[x.scored for x in lines])
    assert hits == [False, False, True, True, False, True]
    metrics = base_model.held_out_accuracy("lookup_accuracy", hits, [x.group for x in lines])
    assert metrics == {"lookup_accuracy": 0.5, "lookup_accuracy_chain_end_hops_1": 1.0,
                       "lookup_accuracy_chain_end_hops_3": 0.5, "lookup_accuracy_follow_hops_2": 1 / 3}
    assert base_model.held_out_accuracy("result_accuracy", [True, False], ["", ""]) == {"result_accuracy": 0.5}


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
    pi_ref_sampler = sampler(model, tokenizer)
    problems = tiny_task.problems("train")[:8]
    rollouts, counts = collect_pairs(tiny_task, problems, pi_ref_sampler, 3, Draw(0))
    assert counts["pairs"] + counts["never_wrong"] == len(problems) and counts["pairs"] > 0
    by_problem = {}
    for r in rollouts:
        by_problem.setdefault(r.problem_id, []).append(r)
    answers = {p.id: p.answer for p in problems}
    for problem_id, (right, wrong) in by_problem.items():
        assert right.reward == 1.0 and right.switch == 0
        assert right.response == pi_ref_sampler.codec.response_ids(answers[problem_id])
        assert wrong.reward == 0.0 and wrong.switch == 0 and wrong.response != right.response


def test_pair_mode_gives_no_pair_where_pi_ref_is_never_wrong(tiny_task, tokenizer):
    class AlwaysRight:  # every answer earns the reference's reward
        def __getattr__(self, name):
            return getattr(tiny_task, name)

        def reward(self, problem, response):
            return 1.0

    pi_ref_sampler = sampler(build_causal_lm(tiny_arch(), tokenizer, seed=0).eval(), tokenizer)
    rollouts, counts = collect_pairs(AlwaysRight(), tiny_task.problems("train")[:4], pi_ref_sampler, 2, Draw(0))
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
    stage = return_model_rounds.train_rounds(ctx, reference, 1, base)[0]
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


def test_the_chain_end_curriculum_trains_on_follow_lines_first_then_on_the_chain_end_mix(tmp_path, monkeypatch):
    phases = []

    def recording_pretrain(model, examples, cfg, *args, **kwargs):
        equals = ctx.task_tokenizer.convert_tokens_to_ids("=")
        phases.append((cfg.steps, sum(prompt[-1] != equals for prompt, _ in examples.pairs) / len(examples.pairs)))
        return pretrain(model, examples, cfg, *args, **kwargs)

    monkeypatch.setattr(base_model, "pretrain", recording_pretrain)
    ctx = context(tmp_path, "base_pretrain.steps=4", "base_pretrain.chain_end_steps=3",
                  "base_pretrain.chain_end_fraction=0.5")
    base = base_model.load(ctx)
    # A chain-end prompt ends in the queried label (`= q`), a follow prompt in `=` (`/ q =`).
    assert phases[0] == (4, 0.0)
    assert phases[1][0] == 3 and 0.4 < phases[1][1] < 0.6
    # Scored on the second phase's held-out lines, so chain-end questions are measured too.
    assert any(k.startswith("lookup_accuracy_chain_end_hops_") for k in base.metrics)
    steps = [json.loads(line)["step"] for line in (ctx.stages["base_model"].path / "curve.jsonl").open()]
    assert steps == sorted(steps) and steps[-1] == 4 + 3 - 1


def test_chain_end_steps_are_part_of_a_lookup_base_models_inputs_only():
    cfg = load_run_config(compose_cfg("base_pretrain.chain_end_fraction=0.5", "base_pretrain.chain_end_steps=7"))
    assert settings_of(cfg.base_pretrain)["chain_end_steps"] == 7
    arithmetic = replace(cfg.base_pretrain, corpus=BaseCorpusKind.arithmetic)
    assert "chain_end_steps" not in settings_of(arithmetic) and "chain_end_fraction" not in settings_of(arithmetic)


def test_chain_end_steps_without_chain_end_questions_names_the_fix():
    with pytest.raises(ConfigError, match=r"base_pretrain\.chain_end_steps.*chain_end_fraction above 0"):
        load_run_config(compose_cfg("base_pretrain.chain_end_steps=5"))


def test_chain_end_questions_with_one_pair_per_line_name_the_fix():
    with pytest.raises(ConfigError, match=r"base_pretrain\.max_pairs=1 .*base_pretrain\.max_pairs>=2"):
        load_run_config(compose_cfg("base_pretrain.chain_end_fraction=0.5", "base_pretrain.max_pairs=1"))


def test_a_new_revision_of_the_corpus_gives_the_base_model_a_new_key(tmp_path, monkeypatch):
    first = base_model.load(context(tmp_path)).key
    lookup = CORPORA["lookup"]
    monkeypatch.setitem(CORPORA, "lookup", replace(lookup, revision=lookup.revision + 1))
    ctx = context(tmp_path)
    assert base_model.load(ctx).key != first and not ctx.stages["base_model"].reused


def test_the_first_choice_probe_counts_the_arms_whose_end_the_model_names(tokenizer):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from base_model_probe import first_choice_predicts_arm_end

    names_label_2 = SimpleNamespace(vocab_size=len(tokenizer), target=tokenizer.convert_tokens_to_ids("2"))

    def model(input_ids):  # a stand-in that always names label 2
        logits = torch.zeros(1, input_ids.shape[1], names_label_2.vocab_size)
        logits[0, -1, names_label_2.target] = 1.0
        return SimpleNamespace(logits=logits)

    # Arms 0 -> 1 -> 2 and 0 -> 3 -> 4: label 2 ends the first arm only.
    graph = StarGraph(edges=((0, 1), (3, 4), (1, 2), (0, 3)), source=0, goal=2, path=(0, 1, 2))
    assert first_choice_predicts_arm_end(model, tokenizer, [graph], "cpu") == 0.5


def test_an_arch_of_the_base_model_is_its_own(tokenizer):
    assert isinstance(build_causal_lm(ArchConfig(conv_width=4), tokenizer, 0), ConvGPT2LMHeadModel)
    assert not isinstance(build_causal_lm(ArchConfig(), tokenizer, 0), ConvGPT2LMHeadModel)


# -- the math base model: the arithmetic corpus and its stage ---------------------------------------

ARITHMETIC_TEMPLATE_WORDS = re.compile(r"[A-Za-z\\{}]")  # names, items, sentences, \boxed{}: none in the corpus
EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")


def test_arithmetic_corpus_holds_only_right_calculations_and_no_word_problem():
    from qsharp_exp.tasks.arithmetic import ITEMS, NAMES
    from qsharp_exp.training.arithmetic_corpus import calculation_lines

    steps = set()
    for text, results in calculation_lines(2000, 99, 3, seed=0):
        assert not ARITHMETIC_TEMPLATE_WORDS.search(text), text
        assert not any(word in text for word in ITEMS + [n for n, _ in NAMES])
        equations = EQUATION.findall(text)
        assert " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in equations) == text  # nothing else on the line
        previous = None
        for a, op, b, c in equations:
            assert eval(f"{a} {op} {b}") == int(c) and int(c) >= 1
            assert previous is None or a == previous  # a chain: each equation starts from the last result
            previous = c
        assert [text[s:e] for s, e in results] == [c for *_, c in equations]
        steps.add(len(equations))
    assert steps == {1, 2, 3}


def test_arithmetic_corpus_lines_score_exactly_the_results_tokens():
    from qsharp_exp.config import BasePretrainConfig
    from qsharp_exp.tasks import build_task
    from qsharp_exp.tasks.arithmetic import ArithmeticConfig
    from qsharp_exp.training.base_corpus import CORPORA

    task = build_task(ArithmeticConfig(name="arithmetic", num_pretrain=200, num_train=4, num_test=4))
    tok = task.build_tokenizer()
    cfg = BasePretrainConfig(corpus="arithmetic", corpus_lines=40, eval_lines=10)
    lines = CORPORA["arithmetic"].lines(task, tok, cfg, 0)
    assert len(lines) == 50 and lines == CORPORA["arithmetic"].lines(task, tok, cfg, 0)
    for line in lines:
        text = tok.decode(line.prompt + line.response, skip_special_tokens=True)
        assert line.response[-1] == tok.eos_token_id
        assert "".join(tok.decode([line.response[i]]) for i in line.scored) == "".join(c for *_, c in
                                                                                        EQUATION.findall(text))


ARITHMETIC_TINY = [
    "task=arithmetic", "task.num_pretrain=60", "task.num_train=8", "task.num_test=4", "base_pretrain.steps=5",
    "base_pretrain.corpus_lines=200", "base_pretrain.eval_lines=20", "base_pretrain.warmup_steps=1",
    "model.base.n_layer=1", "model.base.n_embd=32", "model.base.n_head=2", "pretrain.steps=3",
    "pretrain.warmup_steps=1", "pretrain.eval_problems=4", "collect.rounds=1", "eval.max_new_tokens=16", "algo=cd",
    "progress=false",
]


def test_math_base_model_is_keyed_by_its_corpus_and_architecture_and_pi_ref_and_the_guide_start_from_it(tmp_path):
    def ctx_of(*overrides):
        return RunContext.create(load_run_config(compose_cfg(*ARITHMETIC_TINY, f"cache_dir={tmp_path}", *overrides)))

    ctx = ctx_of()
    assert ctx.uses_base_model
    base = base_model.load(ctx)
    assert 0.0 <= base.metrics["result_accuracy"] <= 1.0
    inputs = json.loads((ctx.stages["base_model"].path / "inputs.json").read_text())
    assert inputs["config"]["base_pretrain.corpus"] == "arithmetic" and "labels" not in inputs
    assert "base_pretrain.max_pairs" not in inputs["config"]  # the lookup corpus's setting is not this model's input
    reference = pi_ref.load(ctx, base)
    assert type(reference.model).__name__ == "LlamaForCausalLM" and reference.model.config.hidden_size == 32
    assert json.loads((ctx.stages["pi_ref"].path / "inputs.json").read_text())["init"] == base.key
    # The return model starts from pi_ref (the default) or from the base model itself.
    assert return_model_rounds._start(ctx, reference, base) == (reference.source, reference.key)
    guide_from_base = ctx_of("model.guide.init=base")
    assert return_model_rounds._start(guide_from_base, reference, base) == (base.source, base.key)

    keys = {"default": (base.key, reference.key)}
    for name, override in (("corpus", "base_pretrain.max_operand=50"), ("arch", "model.base.n_embd=64")):
        other = ctx_of(override)
        other_base = base_model.load(other)
        keys[name] = (other_base.key, pi_ref.load(other, other_base).key)
    assert len({k[0] for k in keys.values()}) == 3 and len({k[1] for k in keys.values()}) == 3
    # The task's post-training problems are not part of the base model's inputs: another count reuses it.
    assert base_model.load(ctx_of("task.num_train=9")).key == base.key
    assert base_model.load(ctx_of("base_pretrain.max_pairs=5")).key == base.key


def test_a_warm_started_round_begins_with_the_last_rounds_model_and_leaves_round_one_as_it_was(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    started = []
    real = return_model_rounds.train_return_model

    def recording(model, rollouts, cfg, *args, **kwargs):
        started.append(({k: v.clone() for k, v in model.state_dict().items()}, cfg.epochs))
        return real(model, rollouts, cfg, *args, **kwargs)

    monkeypatch.setattr(return_model_rounds, "train_return_model", recording)
    rounds = {}
    for name, epochs in (("fresh", "null"), ("warm", "1")):  # star-graph's default warm-starts: fresh is set
        extra = [f"guide_train.warm_start_epochs={epochs}"]
        ctx = context(tmp_path, "collect.rounds=2", *extra)
        base = base_model.load(ctx)
        rounds[name] = return_model_rounds.train_rounds(ctx, pi_ref.load(ctx, base), 2, base)
    fresh, warm = rounds["fresh"], rounds["warm"]
    assert warm[0].key == fresh[0].key and warm[1].key != fresh[1].key  # the setting is read by rounds >= 2 only
    inputs = json.loads((warm[1].path / "inputs.json").read_text())
    assert inputs["init"] == warm[0].key and inputs["config"]["guide_train.warm_start_epochs"] == 1
    assert "guide_train.epochs" not in inputs["config"]  # a warm round trains for warm_start_epochs
    # Round 2 of the warm run started from round 1's saved weights, for one epoch.
    (weights, epochs) = started[-1]
    saved = load_file(warm[0].path / "model" / "model.safetensors")
    assert epochs == 1 and torch.equal(weights["head.weight"], saved["head.weight"])
    assert not torch.equal(started[1][0]["head.weight"], saved["head.weight"])  # the fresh run's round 2 did not
