"""The sampling loop: cached equals uncached, V-type candidate scoring, left padding, KL."""

import math
from dataclasses import replace

import pytest
import torch

from helpers import make_guide, sampler, stops, tiny_arch
from qsharp_exp import guidance as G
from qsharp_exp.guidance import RULES, Guidance
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.padding import left_pad
from qsharp_exp.sampling import DecodeOptions, Draw, PromptBatch, SamplingSpec, Steering, Stops, generate
from qsharp_exp.sampling.decoding import VGuideState


def prompts(tokenizer, task, n):
    return [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in task.problems("test")[:n]]


def ragged(tokenizer, task, n):
    """Prompts of different lengths, so that left padding is exercised."""
    return [p[: len(p) - 2 * (i % 3)] for i, p in enumerate(prompts(tokenizer, task, n))]


def uncached_guided_logprobs(pi_ref, guide, prompt, response, spec, top_k, eta, algo, mask_non_candidates):
    """The guided distribution at every step, recomputed from scratch without any cache."""
    out = []
    for t in range(len(response)):
        seq = torch.tensor([prompt + response[:t]])
        ones = torch.ones_like(seq)
        ref_logp = G.sampler_logprobs(pi_ref(input_ids=seq).logits[:, -1], spec.temperature, spec.top_p)
        if guide is None:
            out.append(ref_logp)
            continue
        cands = ref_logp.topk(top_k, -1).indices
        if guide.cfg.head == "q":
            values = guide(seq, ones)[0, -1][cands[0]].unsqueeze(0)
        else:
            values = torch.stack([guide(torch.cat([seq, c.view(1, 1)], 1), torch.ones(1, seq.shape[1] + 1))[0, -1]
                                  for c in cands[0]]).unsqueeze(0)
        offsets = RULES[algo].offset(guide.distribution, values, eta)
        out.append(G.guided_logprobs(ref_logp, cands, offsets, mask_non_candidates))
    return out


@pytest.mark.parametrize("head", ["q", "v"])
@pytest.mark.parametrize("algo,distribution", [("qsharp", "bernoulli"), ("cd", "bernoulli"), ("qsharp", "histogram")])
def test_cached_batched_guided_decoding_equals_uncached_recomputation(pi_ref, tokenizer, tiny_task, arch, head, algo,
                                                                      distribution):
    guide = make_guide(tokenizer, arch=arch, head=head, distribution=distribution)
    spec = SamplingSpec(temperature=0.9, top_p=0.95, max_new_tokens=6)
    rows = ragged(tokenizer, tiny_task, 4)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    guidance = Guidance(guide, RULES[algo], eta=0.5, top_k=5)
    gen = generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)), spec, torch.Generator().manual_seed(0),
                   Steering(guide=guidance))
    for i, prompt in enumerate(rows):
        response = gen.tokens[i, : gen.lengths[i]].tolist()
        steps = uncached_guided_logprobs(pi_ref, guide, prompt, response, spec, 5, 0.5, algo, False)
        ref_steps = uncached_guided_logprobs(pi_ref, None, prompt, response, spec, 5, 0.5, algo, False)
        kl = sum(G.kl_divergence(lp, rp).item() for lp, rp in zip(steps, ref_steps, strict=True))
        assert gen.kl[i].item() == pytest.approx(kl, rel=1e-4, abs=1e-5)


def test_guided_kl_is_the_hand_computed_kl_of_a_constant_offset_on_the_top_k(pi_ref, tokenizer, tiny_task):
    """A rule that adds the same offset o to every candidate: at a step where pi_ref's sampler gives the top-k
    mass m, pi = pi_ref e^o / z on the top-k and pi_ref / z elsewhere (z = m e^o + 1 - m), so
    KL(pi || pi_ref) = (m e^o / z) o - ln z; the response's KL is the sum over its steps."""
    o, top_k = 1.5, 3
    rule = G.GuidanceRule("constant", "constant", lambda dist, out, eta: torch.full(out.shape[:-1], o))
    spec = SamplingSpec(temperature=0.9, top_p=0.95, max_new_tokens=6)
    rows = ragged(tokenizer, tiny_task, 4)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    gen = generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)), spec, torch.Generator().manual_seed(0),
                   Steering(guide=Guidance(make_guide(tokenizer), rule, 1.0, top_k)))
    assert gen.kl.min().item() > 0.0
    for i, prompt in enumerate(rows):
        response = gen.tokens[i, : gen.lengths[i]].tolist()
        expected = 0.0
        for t in range(len(response)):
            with torch.no_grad():
                logits = pi_ref(input_ids=torch.tensor([prompt + response[:t]])).logits[0, -1]
            m = G.sampler_logprobs(logits[None], spec.temperature, spec.top_p).exp().topk(top_k).values.sum().item()
            z = m * math.exp(o) + 1 - m  # pi gives the top-k the mass m e^o / z
            expected += m * math.exp(o) / z * o - math.log(z)
        assert gen.kl[i].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_unguided_batched_decoding_matches_one_by_one(tokenizer, tiny_task, arch):
    # A large init spreads the logits, so near-greedy decoding is not decided by float noise.
    pi_ref = build_causal_lm(replace(tiny_arch(arch), initializer_range=0.5), tokenizer, seed=0).eval()
    rows = ragged(tokenizer, tiny_task, 5)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    # Greedy-like sampling (tiny temperature) makes the batch and one-by-one runs comparable token for token.
    cold = SamplingSpec(temperature=1e-4, top_p=1.0, max_new_tokens=8)
    batched = generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)), cold, torch.Generator().manual_seed(3))
    for i, row in enumerate(rows):
        one_ids, one_mask = left_pad([row], tokenizer.pad_token_id)
        single = generate(pi_ref, PromptBatch(one_ids, one_mask, stops(tokenizer)), cold,
                          torch.Generator().manual_seed(3))
        assert batched.tokens[i, : batched.lengths[i]].tolist() == single.tokens[0, : single.lengths[0]].tolist()


@pytest.mark.parametrize("conv_width", [0, 4])
def test_v_type_scores_k_candidates_in_one_pass_like_k_forwards_and_restores_cache(tokenizer, tiny_task, arch,
                                                                                   conv_width):
    guide = make_guide(tokenizer, arch=arch, head="v", conv_width=conv_width)
    rows = ragged(tokenizer, tiny_task, 3)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    state = VGuideState(guide, ids, mask, capacity=ids.shape[1] + 5)
    length = state.window.length
    before = [(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone())
              for layer in state.window.cache.layers]
    candidates = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [5, 9, 13, 4]])
    passes = state.passes
    values = state.values(candidates)
    assert state.passes == passes + 1 and state.window.length == length
    for layer, (k, v) in zip(state.window.cache.layers, before, strict=True):
        assert int(layer.cumulative_length) == length  # the candidates' columns are given back
        assert torch.equal(layer.keys[:, :, :length], k) and torch.equal(layer.values[:, :, :length], v)
    with torch.no_grad():
        for i, row in enumerate(rows):
            for j, c in enumerate(candidates[i].tolist()):
                seq = torch.tensor([row + [c]])
                expected = guide(seq, torch.ones_like(seq))[0, -1]
                torch.testing.assert_close(values[i, j], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["q", "v"])
@pytest.mark.parametrize("mask_non_candidates", [False, True])
def test_guide_makes_one_pass_per_decoding_step(pi_ref, tokenizer, tiny_task, head, mask_non_candidates):
    guide = make_guide(tokenizer, head=head)
    rows = prompts(tokenizer, tiny_task, 4)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    spec = SamplingSpec(max_new_tokens=5)
    never_stop = torch.tensor([-1])  # every row runs all 5 steps
    gen = generate(pi_ref, PromptBatch(ids, mask, Stops(never_stop, tokenizer.pad_token_id)), spec,
                   torch.Generator().manual_seed(0),
                   Steering(guide=Guidance(guide, RULES["qsharp"], 0.1, 5, mask_non_candidates)))
    # the prefill, then one pass per step: V-type scores each step's candidates (taking in the token
    # sampled before them in the same pass); Q-type takes in each sampled token but the last, which
    # nothing is sampled after (the prefill already scored the first step's candidates)
    assert gen.tokens.shape[1] == 5 and gen.guide_passes == 1 + (5 if head == "v" else 4)


def test_explore_draws_first_token_from_top_k(pi_ref, tokenizer, tiny_task):
    rows = prompts(tokenizer, tiny_task, 6)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    explore = torch.tensor([True, False] * 3)
    spec = SamplingSpec(max_new_tokens=2)
    gen = generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)), spec, torch.Generator().manual_seed(0),
                   Steering(explore=explore, explore_top_k=3))
    with torch.no_grad():
        top3 = pi_ref(input_ids=ids, attention_mask=mask).logits[:, -1].topk(3, -1).indices
    for i in range(0, 6, 2):
        assert gen.tokens[i, 0].item() in top3[i].tolist()


@pytest.mark.parametrize("top_p,zero", [(1.0, True), (0.8, False)])
def test_paper_compat_decoding_unguided_kl_is_zero_only_without_top_p(pi_ref, tokenizer, tiny_task, top_p, zero):
    rows = ragged(tokenizer, tiny_task, 4)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    spec = SamplingSpec(temperature=0.8, top_p=top_p, max_new_tokens=6, paper_compat=True)
    gen = generate(pi_ref, PromptBatch(ids, mask, stops(tokenizer)), spec, torch.Generator().manual_seed(0))
    if zero:
        assert gen.kl.abs().max().item() < 1e-5
    else:
        assert gen.kl.min().item() > 0.0


def test_rows_that_stop_early_leave_the_batch_without_changing_any_row(tokenizer, tiny_task, arch):
    """Many stop tokens make rows finish at different steps, so finished rows are dropped mid-generation;
    every row must still match its own one-by-one run, and guided KL its uncached recomputation."""
    pi_ref = build_causal_lm(replace(tiny_arch(arch), initializer_range=0.5), tokenizer, seed=0).eval()
    many_stops = Stops(torch.arange(5, len(tokenizer), 3), tokenizer.pad_token_id)
    rows = ragged(tokenizer, tiny_task, 6)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    cold = SamplingSpec(temperature=1e-4, top_p=1.0, max_new_tokens=10)
    batched = generate(pi_ref, PromptBatch(ids, mask, many_stops), cold, torch.Generator().manual_seed(3))
    assert len(set(batched.lengths.tolist())) > 1  # rows did stop at different steps
    for i, row in enumerate(rows):
        one_ids, one_mask = left_pad([row], tokenizer.pad_token_id)
        single = generate(pi_ref, PromptBatch(one_ids, one_mask, many_stops), cold, torch.Generator().manual_seed(3))
        assert batched.tokens[i, : batched.lengths[i]].tolist() == single.tokens[0, : single.lengths[0]].tolist()
    for head in ("q", "v"):
        guide = make_guide(tokenizer, arch=arch, head=head)
        spec = SamplingSpec(temperature=0.9, max_new_tokens=10)
        gen = generate(pi_ref, PromptBatch(ids, mask, many_stops), spec, torch.Generator().manual_seed(1),
                       Steering(guide=Guidance(guide, RULES["qsharp"], 0.5, 5)))
        assert len(set(gen.lengths.tolist())) > 1
        for i, prompt in enumerate(rows):
            response = gen.tokens[i, : gen.lengths[i]].tolist()
            steps = uncached_guided_logprobs(pi_ref, guide, prompt, response, spec, 5, 0.5, "qsharp", False)
            ref_steps = uncached_guided_logprobs(pi_ref, None, prompt, response, spec, 5, 0.5, "qsharp", False)
            kl = sum(G.kl_divergence(lp, rp).item() for lp, rp in zip(steps, ref_steps, strict=True))
            assert gen.kl[i].item() == pytest.approx(kl, rel=1e-4, abs=1e-5)


def test_sampling_batches_prompts_by_length_and_returns_samples_in_the_callers_order(tokenizer, tiny_task, arch):
    from qsharp_exp.prompts import PromptCodec
    from qsharp_exp.sampling import PaddingStats

    pi_ref = build_causal_lm(replace(tiny_arch(arch), initializer_range=0.5), tokenizer, seed=0).eval()
    full = prompts(tokenizer, tiny_task, 3)
    rows = [full[0], full[1][:-4], full[2], full[0][:-4], full[1], full[2][:-4]]  # long, short, long, ...
    cold = SamplingSpec(temperature=1e-4, top_p=1.0, max_new_tokens=6)
    many_stops = list(range(5, len(tokenizer), 3))
    stats = PaddingStats()
    stopping = PromptCodec(tokenizer, chat_template=False, stop_ids=many_stops, max_positions=None)
    sampled = sampler(pi_ref, tokenizer, cold, batch_size=3, prompt_codec=stopping).sample(rows, Draw(0), stats=stats)
    lengths = sorted(len(r) for r in rows)
    assert stats.prompt_slots == 3 * lengths[2] + 3 * lengths[5]  # the three short prompts share a batch
    for row, sample in zip(rows, sampled, strict=True):
        one_ids, one_mask = left_pad([row], tokenizer.pad_token_id)
        single = generate(pi_ref,
                          PromptBatch(one_ids, one_mask, Stops(torch.tensor(many_stops), tokenizer.pad_token_id)), cold,
                          torch.Generator().manual_seed(0))
        assert sample.response == single.tokens[0, : single.lengths[0]].tolist()


def _cold_guided_runs(pi_ref, tokenizer, tiny_task, arch, cuda_graphs, device="cpu", compile_steps=False):
    many_stops = Stops(torch.arange(5, len(tokenizer), 3), tokenizer.pad_token_id)
    ids, mask = left_pad(ragged(tokenizer, tiny_task, 6), tokenizer.pad_token_id)
    cold = SamplingSpec(temperature=1e-4, top_p=1.0, max_new_tokens=10)
    runs = []
    guides = {head: Guidance(make_guide(tokenizer, arch=arch, head=head).to(device), RULES["qsharp"], 0.5, 5)
              for head in ("q", "v")}
    for guide in (guides["q"], guides["v"], guides["v"]):  # the second V-type run reuses pooled windows
        runs.append(generate(pi_ref, PromptBatch(ids.to(device), mask.to(device), many_stops), cold,
                             torch.Generator(device=device).manual_seed(1), Steering(guide=guide),
                             DecodeOptions(cuda_graphs, compile_steps)))
    return runs


def test_pooled_windows_for_cuda_graphs_sample_what_fresh_windows_sample(tokenizer, tiny_task, arch):
    """With cuda_graphs the KV windows are kept per model and shape and reused by later calls, and rows
    stay in the batch; on CPU nothing is captured, so this checks the reuse: stale columns are masked."""
    pi_ref = build_causal_lm(replace(tiny_arch(arch), initializer_range=0.5), tokenizer, seed=0).eval()
    fresh = _cold_guided_runs(pi_ref, tokenizer, tiny_task, arch, cuda_graphs=False)
    pooled = _cold_guided_runs(pi_ref, tokenizer, tiny_task, arch, cuda_graphs=True)
    assert len(set(fresh[0].lengths.tolist())) > 1  # rows stopped at different steps
    for a, b in zip(fresh, pooled, strict=True):
        assert torch.equal(a.lengths, b.lengths) and torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.kl, b.kl, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_samples_what_eager_decoding_samples(tokenizer, tiny_task, arch):
    pi_ref = build_causal_lm(replace(tiny_arch(arch), initializer_range=0.5), tokenizer, seed=0).eval().cuda()
    eager = _cold_guided_runs(pi_ref, tokenizer, tiny_task, arch, cuda_graphs=False, device="cuda")
    graphed = _cold_guided_runs(pi_ref, tokenizer, tiny_task, arch, cuda_graphs=True, device="cuda")
    for a, b in zip(eager, graphed, strict=True):
        assert torch.equal(a.lengths, b.lengths) and torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.kl, b.kl, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_compiled_decoding_steps_sample_what_eager_steps_sample(tokenizer, tiny_task, device):
    """torch.compile of the step forwards (with CUDA graphs on CUDA); about a minute of compiling."""
    pi_ref = build_causal_lm(replace(tiny_arch("llama"), initializer_range=0.5), tokenizer, seed=0).eval().to(device)
    eager = _cold_guided_runs(pi_ref, tokenizer, tiny_task, "llama", cuda_graphs=False, device=device)
    fast = _cold_guided_runs(pi_ref, tokenizer, tiny_task, "llama", cuda_graphs=True, device=device, compile_steps=True)
    for a, b in zip(eager, fast, strict=True):
        assert torch.equal(a.lengths, b.lengths) and torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.kl, b.kl, rtol=1e-3, atol=1e-5)
