"""The guidance formulas against their closed forms (docs/method.md, section 1)."""

import math

import pytest
import torch

from qsharp_exp import guidance as G


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.1, 0.5, 0.9, 1 - 1e-6])
@pytest.mark.parametrize("eta", [0.05, 0.1, 1.0, 10.0])
def test_bernoulli_offset_equals_log_of_expected_exponentiated_return(p, eta):
    logit = torch.logit(torch.tensor(p, dtype=torch.float64)) if 0 < p < 1 else torch.tensor(-1e4)
    expected = math.log((1 - p) + p * math.exp(1 / eta))
    assert G.bernoulli_qsharp_offset(logit, eta).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_offsets_vanish_as_eta_grows_so_guidance_returns_pi_ref():
    logits = torch.linspace(-8, 8, 17)
    atoms = torch.linspace(0, 1, 5)
    for eta in (1e3, 1e5):
        assert G.bernoulli_qsharp_offset(logits, eta).abs().max() < 1.1 / eta
        assert G.cd_offset(G.bernoulli_mean(logits), eta).abs().max() <= 1 / eta
        hist = G.histogram_qsharp_offset(torch.randn(17, 5), atoms, eta)
        assert hist.abs().max() < 1.1 / eta
    ref = torch.log_softmax(torch.randn(3, 12), -1)
    cands = ref.topk(4, -1).indices
    guided = G.guided_logprobs(ref, cands, G.bernoulli_qsharp_offset(torch.randn(3, 4), 1e7), False)
    torch.testing.assert_close(guided, ref, atol=1e-6, rtol=0)


def test_cd_offset_is_mean_return_over_eta():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(G.cd_offset(G.bernoulli_mean(logits), 0.1), torch.sigmoid(logits) / 0.1)
    atoms = torch.tensor([0.0, 0.5, 1.0])
    atom_logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    assert G.histogram_mean(atom_logits, atoms).item() == pytest.approx(0.3 * 0.5 + 0.5)


def test_histogram_offset_is_log_expectation_of_exp_atoms_over_eta():
    atoms = torch.tensor([-1.0, 0.0, 2.0])
    q = torch.tensor([0.2, 0.5, 0.3])
    eta = 0.5
    expected = math.log(sum(qa * math.exp(z / eta) for qa, z in zip(q.tolist(), atoms.tolist(), strict=True)))
    assert G.histogram_qsharp_offset(torch.log(q), atoms, eta).item() == pytest.approx(expected, rel=1e-6)


def test_histogram_with_two_atoms_matches_bernoulli():
    logit = torch.tensor([-3.0, 0.2, 4.0])
    atom_logits = torch.stack([torch.zeros(3), logit], -1)  # q1 = sigmoid(logit)
    torch.testing.assert_close(
        G.histogram_qsharp_offset(atom_logits, torch.tensor([0.0, 1.0]), 0.1), G.bernoulli_qsharp_offset(logit, 0.1)
    )


@pytest.mark.parametrize("eta", [1e-3, 1e3])
def test_offsets_are_finite_in_float32_at_extreme_eta(eta):
    logits = torch.tensor([-1e4, -50.0, -5.0, 0.0, 5.0, 50.0, 1e4], dtype=torch.bfloat16)
    for off in (
        G.bernoulli_qsharp_offset(logits, eta),
        G.cd_offset(G.bernoulli_mean(logits), eta),
        G.histogram_qsharp_offset(torch.randn(7, 11) * 50, torch.linspace(0, 1, 11), eta),
    ):
        assert off.dtype == torch.float32
        assert torch.isfinite(off).all()
    # At eta=1e-3 a sure success is worth exactly 1/eta more than a sure failure.
    sure = G.bernoulli_qsharp_offset(torch.tensor([1e4, -1e4]), eta)
    assert (sure[0] - sure[1]).item() == pytest.approx(1 / eta, rel=1e-4)


def test_guided_distribution_is_pi_ref_times_multiplier_renormalised():
    torch.manual_seed(0)
    ref = torch.log_softmax(torch.randn(4, 30), -1)
    cands = ref.topk(5, -1).indices
    offsets = torch.randn(4, 5)
    mult = torch.ones(4, 30).scatter(-1, cands, offsets.exp())
    expected = ref.exp() * mult
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(G.guided_logprobs(ref, cands, offsets, False).exp(), expected)
    masked = torch.zeros(4, 30).scatter(-1, cands, 1.0) * ref.exp() * mult
    masked = masked / masked.sum(-1, keepdim=True)
    torch.testing.assert_close(G.guided_logprobs(ref, cands, offsets, True).exp(), masked)


def test_kl_is_exact_and_tokens_without_mass_under_pi_contribute_nothing():
    torch.manual_seed(1)
    ref = torch.log_softmax(torch.randn(3, 8), -1)
    pi = torch.log_softmax(torch.randn(3, 8), -1)
    expected = (pi.exp() * (pi - ref)).sum(-1)
    torch.testing.assert_close(G.kl_divergence(pi, ref), expected)
    # By hand: pi = (1/2, 1/2, 0), pi_ref = (1/4, 1/4, 1/2): KL = ln 2; the masked third token adds nothing.
    pi_masked = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    ref_masked = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert G.kl_divergence(pi_masked, ref_masked).item() == pytest.approx(math.log(2))
    # Where both give a token no mass (-inf - -inf = nan), it still adds nothing.
    both = torch.log(torch.tensor([[0.5, 0.0, 0.5]]))
    assert G.kl_divergence(both, torch.log(torch.tensor([[0.25, 0.0, 0.75]]))).item() == pytest.approx(
        0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))


def test_sampler_logprobs_applies_temperature_then_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(G.sampler_logprobs(logits, 1.0, 1.0).exp(), logits.exp())
    nucleus = G.sampler_logprobs(logits, 1.0, 0.8).exp()
    torch.testing.assert_close(nucleus, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    hot = G.sampler_logprobs(logits, 2.0, 1.0).exp()
    expected = logits.exp() ** 0.5 / (logits.exp() ** 0.5).sum()
    torch.testing.assert_close(hot, expected)


def test_a_vanishing_top_p_keeps_the_most_likely_token_alone():
    """Rounding leaves the top token with a mass before it of ~1e-8: top_p below that kept no token at all."""
    logits = torch.tensor([[0.3, 2.0, -1.0, 0.7]] * 3) + torch.randn(3, 4) * 1e-3
    kept = G.sampler_logprobs(logits, 1.0, 1e-300).exp()
    assert torch.equal(kept, torch.nn.functional.one_hot(logits.argmax(-1), 4).float())


def test_paper_compat_adds_the_offset_before_the_temperature_and_top_p_after_guidance():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    cands, offsets = torch.tensor([[2]]), torch.tensor([[3.0]])
    logp, ref = G.paper_compat_logprobs(logits, 2.0, 1.0, cands, offsets, False)
    # The published ordering: (logits + offset) / T, so the multiplier is exp(offset / T).
    expected = torch.log_softmax((logits + torch.tensor([[0.0, 0.0, 3.0, 0.0]])) / 2.0, -1)
    torch.testing.assert_close(logp, expected)
    torch.testing.assert_close(ref, torch.log_softmax(logits / 2.0, -1))
    # top-p after guidance: the boosted token is now inside the nucleus, the others may fall out.
    logp, _ = G.paper_compat_logprobs(logits, 1.0, 0.5, cands, torch.tensor([[5.0]]), False)
    assert logp[0, 2].exp().item() == 1.0


def test_paper_compat_kl_is_zero_unguided_only_without_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    logp, ref = G.paper_compat_logprobs(logits, 0.8, 1.0, None, None, False)
    assert G.kl_divergence(logp, ref).item() == pytest.approx(0.0, abs=1e-7)
    # The published KL compares the top-p sampler with pi_ref without top-p: > 0 even unguided.
    logp, ref = G.paper_compat_logprobs(logits, 0.8, 0.9, None, None, False)
    assert G.kl_divergence(logp, ref).item() > 0.01
    # Ours compares like with like, the guided sampler with pi_ref's sampler, both inside the nucleus: zero
    # offsets give KL 0, and an offset ln 3 on token 1 gives the hand-computed KL over the nucleus {0, 1}.
    ours = G.sampler_logprobs(logits, 1.0, 0.8)  # (0.625, 0.375, 0, 0)
    cands = torch.tensor([[0, 1]])
    unguided = G.guided_logprobs(ours, cands, torch.zeros(1, 2), False)
    assert G.kl_divergence(unguided, ours).item() == pytest.approx(0.0, abs=1e-7)
    guided = G.guided_logprobs(ours, cands, torch.tensor([[0.0, math.log(3)]]), False)
    p0, p1 = 0.625 / 1.75, 1.125 / 1.75
    assert G.kl_divergence(guided, ours).item() == pytest.approx(p0 * math.log(p0 / 0.625) + p1 * math.log(p1 / 0.375))


def test_mse_ablation_offset_reads_the_mean_as_a_two_point_return():
    mean = torch.tensor([0.0, 0.3, 1.0])
    expected = torch.log((1 - mean) + mean * math.exp(1 / 0.1))
    torch.testing.assert_close(G.two_point_qsharp_offset(mean, 0.0, 1.0, 0.1), expected)


# -- the numerics survive every accepted value (config.ETA_RANGE, TEMPERATURE_RANGE, ATOM_LIMIT) -----------


@pytest.mark.parametrize("distribution", ["bernoulli", "histogram", "mse"])
@pytest.mark.parametrize("eta_at", [0, 1])
@pytest.mark.parametrize("rule", ["qsharp", "cd"])
def test_guided_sampling_stays_finite_at_the_bounds_of_eta_and_of_the_atoms(distribution, eta_at, rule):
    from qsharp_exp.config import ATOM_LIMIT, ETA_RANGE, TEMPERATURE_RANGE, GuideConfig
    from qsharp_exp.guidance import RULES, guided_logprobs, kl_divergence, sampler_logprobs
    from qsharp_exp.models.distributions import return_distribution

    bounded = distribution != "bernoulli"
    dist = return_distribution(GuideConfig(distribution=distribution, num_atoms=5,
                                           v_min=-ATOM_LIMIT if bounded else 0.0, v_max=ATOM_LIMIT if bounded else 1.0))
    torch.manual_seed(0)
    out = torch.randn(3, 4, dist.size) * 30  # saturated heads too
    offsets = RULES[rule].offset(dist, out, ETA_RANGE[eta_at])
    logits = torch.randn(3, 20) * 20
    for temperature in TEMPERATURE_RANGE:
        ref = sampler_logprobs(logits, temperature, 0.9)
        candidates = ref.topk(4, dim=-1).indices
        for mask in (False, True):
            logp = guided_logprobs(ref, candidates, offsets, mask)
            assert torch.isfinite(offsets).all() and not torch.isnan(logp).any()
            assert torch.allclose(logp.exp().sum(-1), torch.ones(3))
            assert torch.isfinite(kl_divergence(logp, ref)).all()
            torch.multinomial(logp.exp(), 1)  # what failed on inf/nan before the bounds
