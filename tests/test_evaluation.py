"""Evaluation metrics (pass@1, maj1@k, pass@k, KL) and resumable sampling."""

import pytest

import qsharp_exp.metrics as metrics_module
import qsharp_exp.sampling.batched as batched
from helpers import codec, make_guide, sampler
from qsharp_exp.config import CollectConfig
from qsharp_exp.guidance import RULES, Guidance
from qsharp_exp.sampling import Draw, Sampled, Sampler, SamplingSpec, Steering
from qsharp_exp.tasks import build_task
from qsharp_exp.tasks.arithmetic import ArithmeticConfig
from qsharp_exp.training import collect as collect_module


def fake_sampler(monkeypatch, pi_ref, fake_codec, samples):
    """A sampler whose samples are `samples(prompts)` instead of pi_ref's."""
    monkeypatch.setattr(Sampler, "sample", lambda self, prompts, draw, **kwargs: samples(prompts))
    return sampler(pi_ref, None, batch_size=8, prompt_codec=fake_codec)


def test_metrics_count_single_samples_majorities_and_any_correct(monkeypatch, tokenizer, pi_ref):
    task = build_task(ArithmeticConfig(name="arithmetic", num_pretrain=20, num_train=2, num_test=3))
    problems = task.problems("test")
    gold = [p.answer for p in problems]
    wrong = [str(int(g) + 1) for g in gold]
    answers = [
        [gold[0], gold[0], wrong[0], None],  # majority right, 2 of 4 right
        [wrong[1], wrong[1], gold[1], f"{gold[1]}.0"],  # tie 2-2: the group seen first (wrong) wins
        [None, None, None, None],  # nothing answered
    ]
    texts = [f"\\boxed{{{a}}}" if a is not None else "no box" for row in answers for a in row]
    lookup = {i: t for i, t in enumerate(texts)}

    fake_codec = codec(tokenizer, pi_ref)
    fake_codec.decode = lambda ids: lookup[ids[0]]
    fake_codec.encode = lambda jobs, n: [[0]] * len(jobs)
    fake = fake_sampler(monkeypatch, pi_ref, fake_codec,
                        lambda prompts: [Sampled(response=[i], kl=0.5 * (i % 2)) for i in range(len(prompts))])
    metrics, samples = metrics_module.evaluate(task, problems, fake, 4, Draw(0))
    assert metrics["pass@1"] == pytest.approx(4 / 12)
    assert metrics["maj1@4"] == pytest.approx(1 / 3)
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    assert metrics["kl_mean"] == pytest.approx(0.25)
    assert metrics["answered"] == pytest.approx(7 / 12)
    # Standard errors over problems, by hand: per-problem pass@1 (0.5, 0.5, 0) has sample variance 1/12,
    # so SE = sqrt(1/12 / 3) = 1/6; maj1@4 (1, 0, 0) and pass@4 (1, 1, 0) have variance 1/3, SE 1/3; every
    # problem's mean KL is 0.25, SE 0.
    assert metrics["pass@1_se"] == pytest.approx(1 / 6)
    assert metrics["accuracy_se"] == pytest.approx(1 / 6)
    assert metrics["maj1@4_se"] == pytest.approx(1 / 3)
    assert metrics["pass@4_se"] == pytest.approx(1 / 3)
    assert metrics["kl_mean_se"] == pytest.approx(0.0)
    assert samples[0] == {"problem_id": problems[0].id, "sample": 0, "response": texts[0], "answer": gold[0],
                          "correct": 1.0, "kl": 0.0}
    assert samples[3]["answer"] is None and samples[3]["correct"] == 0.0


class Interrupt(Exception):
    pass


def test_standard_error_of_one_problem_is_not_defined():
    assert metrics_module.mean_and_se([0.75]) == (0.75, None)
    assert metrics_module.mean_and_se([1.0, 0.0, 1.0, 1.0]) == (0.75, pytest.approx((0.25 / 4) ** 0.5))


def test_killed_collection_resumes_to_the_result_of_an_uninterrupted_run(monkeypatch, tiny_task, pi_ref, tokenizer,
                                                                         tmp_path):
    cfg = CollectConfig(samples_per_problem=3, explore_prob=0.5, batch_size=4, top_k=4)
    roll_in = Guidance(make_guide(tokenizer), RULES["qsharp"], 0.1, 4)
    args = (tiny_task, tiny_task.problems("train")[:6], sampler(pi_ref, tokenizer, SamplingSpec(max_new_tokens=8), 4),
            cfg)
    steering = Steering(guide=roll_in)
    uninterrupted = collect_module.collect(*args, Draw(7, steering))
    real_generate, calls = batched.generate, {"n": 0}

    def dies_on_the_seventh_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # 5 roll-in batches done, one roll-out batch done
            raise Interrupt
        return real_generate(*a, **k)

    monkeypatch.setattr(batched, "generate", dies_on_the_seventh_batch)
    with pytest.raises(Interrupt):
        collect_module.collect(*args, Draw(7, steering, tmp_path))
    assert len(list((tmp_path / "roll_in").glob("batch*.json"))) == 5
    assert len(list((tmp_path / "roll_out").glob("batch*.json"))) == 1
    calls["n"] = -100
    resumed = collect_module.collect(*args, Draw(7, steering, tmp_path))
    assert calls["n"] == -100 + 4  # only the unfinished roll-out batches ran
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in uninterrupted]


def test_killed_evaluation_resumes_to_the_same_samples(monkeypatch, tiny_task, pi_ref, tokenizer, tmp_path):
    args = (tiny_task, tiny_task.problems("test")[:6], sampler(pi_ref, tokenizer, SamplingSpec(max_new_tokens=8), 4),
            2)
    uninterrupted = metrics_module.evaluate(*args, Draw(3))
    real_generate, calls = batched.generate, {"n": 0}

    def dies_on_the_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_generate(*a, **k)

    monkeypatch.setattr(batched, "generate", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        metrics_module.evaluate(*args, Draw(3, checkpoint=tmp_path))
    assert metrics_module.evaluate(*args, Draw(3, checkpoint=tmp_path)) == uninterrupted


@pytest.mark.parametrize("head", ["q", "v"])
def test_reward_model_score_is_the_guides_value_at_the_final_token(tokenizer, pi_ref, head):
    guide = make_guide(tokenizer, head=head)
    c = codec(tokenizer, pi_ref)
    prompts = [[5, 6, 7], [8, 9]]
    sampled = [Sampled([10, 11, c.eos_id], 0.0), Sampled([12, 13], 0.0)]  # the second was cut: EOS appended
    scores = metrics_module.final_values(guide, prompts, sampled, sampler(pi_ref, tokenizer, batch_size=2))
    import torch

    for prompt, s, score in zip(prompts, sampled, scores, strict=True):
        response = s.response if s.response[-1] == c.eos_id else [*s.response, c.eos_id]
        seq = torch.tensor([prompt + response])
        with torch.no_grad():
            out = guide(seq, torch.ones_like(seq))[0]
        value = out[-1] if head == "v" else out[-2, c.eos_id]
        assert score == pytest.approx(guide.distribution.mean(value).item(), abs=1e-5)


def test_reward_model_metrics_pick_the_best_scored_sample_and_the_heaviest_answer(monkeypatch, tokenizer, pi_ref):
    task = build_task(ArithmeticConfig(name="arithmetic", num_pretrain=20, num_train=2, num_test=2))
    problems = task.problems("test")
    g0, g1 = problems[0].answer, problems[1].answer
    w0, w1 = str(int(g0) + 1), str(int(g1) + 1)
    answers = [g0, w0, w0, w0, w1, w1, g1, None]
    rm = [0.9, 0.3, 0.2, 0.2, 0.1, 0.1, 0.5, 0.99]
    # problem 0: best-scored sample right (0.9), weighted vote right (0.9 vs 0.7); majority wrong.
    # problem 1: best-scored sample has no answer (wrong); weighted vote right (0.5 vs 0.2); majority wrong.
    texts = {i: f"\\boxed{{{a}}}" if a else "none" for i, a in enumerate(answers)}
    monkeypatch.setattr(metrics_module, "final_values", lambda *a, **k: rm)
    fake_codec = codec(tokenizer, pi_ref)
    fake_codec.decode = lambda ids: texts[ids[0]]
    fake_codec.encode = lambda jobs, n: [[0]] * len(jobs)
    fake = fake_sampler(monkeypatch, pi_ref, fake_codec,
                        lambda prompts: [Sampled([i], 0.0) for i in range(len(prompts))])
    metrics, samples = metrics_module.evaluate(task, problems, fake, 4, Draw(0), reward_model=object())
    assert metrics["maj1@4"] == 0.0
    assert metrics["rm_best_of_4"] == 0.5
    assert metrics["rm_maj1@4"] == 1.0
    assert metrics["rm_best_of_4_se"] == pytest.approx(0.5)  # (1, 0): variance 1/2, SE sqrt(1/4)
    assert metrics["rm_maj1@4_se"] == pytest.approx(0.0)
    assert samples[0]["rm_score"] == 0.9


@pytest.mark.parametrize("damage", ['[{"response": [1, 2], "kl":', "[]", "\xff\xfe"])
def test_a_damaged_resume_batch_is_sampled_again(tiny_task, pi_ref, tokenizer, tmp_path, damage):
    args = (tiny_task, tiny_task.problems("test")[:6], sampler(pi_ref, tokenizer, SamplingSpec(max_new_tokens=8), 4),
            2)
    uninterrupted = metrics_module.evaluate(*args, Draw(3, checkpoint=tmp_path))
    (tmp_path / "batch000001.json").write_bytes(damage.encode("latin-1"))
    assert metrics_module.evaluate(*args, Draw(3, checkpoint=tmp_path)) == uninterrupted
