"""GuidanceLogitsProcessor: transformers' own `generate`, guided, samples from the distribution the framework's
sampler samples from (recomputed here from scratch, without caches), with left padding and early stops."""

import json
from dataclasses import replace

import pytest
import torch

from helpers import make_guide, tiny_arch
from qsharp_exp import GuidanceLogitsProcessor, GuidanceSettings
from qsharp_exp import guidance as G
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.padding import left_pad
from qsharp_exp.sampling import SamplingSpec
from test_decoding import ragged, uncached_guided_logprobs

SPEC = SamplingSpec(temperature=0.9, top_p=0.95, max_new_tokens=6)


@pytest.fixture(params=["gpt2", "llama", "gpt2_conv_stem"])
def lm(request, tokenizer):
    """pi_ref as `generate` runs it: its own KV cache, one new token per step (the conv stem needs the tokens
    before it, models/stem.py)."""
    arch, _, stem = request.param.partition("_conv_")
    return build_causal_lm(replace(tiny_arch(arch), conv_width=4 if stem else 0), tokenizer, seed=0).eval()


def guided_generate(pi_ref, tokenizer, processor, rows, **kwargs):
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    kwargs = {"max_new_tokens": SPEC.max_new_tokens, "eos_token_id": tokenizer.eos_token_id,
              **processor.generate_kwargs(), **kwargs}
    return pi_ref.generate(input_ids=ids, attention_mask=mask, pad_token_id=tokenizer.pad_token_id,
                           output_scores=True, return_dict_in_generate=True, **kwargs)


def processor_for(guide, tokenizer, rule, mask_non_candidates=False):
    settings = GuidanceSettings(rule, eta=0.5, top_k=5, non_candidates="mask" if mask_non_candidates else "keep")
    return GuidanceLogitsProcessor(guide, settings, tokenizer=tokenizer, spec=SPEC)


@pytest.mark.parametrize("head", ["q", "v"])
@pytest.mark.parametrize("rule", ["qsharp", "cd"])
def test_generate_with_the_processor_samples_the_frameworks_guided_distribution(lm, tokenizer, tiny_task, head,
                                                                                 rule):
    pi_ref = lm
    guide = make_guide(tokenizer, arch="gpt2", head=head)
    processor = processor_for(guide, tokenizer, rule)
    rows = ragged(tokenizer, tiny_task, 4)
    torch.manual_seed(0)
    out = guided_generate(pi_ref, tokenizer, processor, rows)
    width = max(map(len, rows))
    for i, prompt in enumerate(rows):
        response = out.sequences[i, width:].tolist()
        length = response.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in response else len(response)
        expected = uncached_guided_logprobs(pi_ref, guide, prompt, response[:length], SPEC, 5, 0.5, rule, False)
        for step, logp in enumerate(expected):
            got = out.scores[step][i : i + 1]
            assert torch.equal(torch.isinf(got), torch.isinf(logp)), (i, step)
            finite = torch.isfinite(logp)
            assert torch.allclose(got[finite], logp[finite], atol=1e-4), (i, step)
        reference = uncached_guided_logprobs(pi_ref, None, prompt, response[:length], SPEC, 5, 0.5, rule, False)
        kl = sum(G.kl_divergence(lp, rp).item() for lp, rp in zip(expected, reference, strict=True))
        assert processor.kl[i].item() == pytest.approx(kl, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("head", ["q", "v"])
def test_a_left_padded_batch_generates_what_each_prompt_generates_alone(lm, tokenizer, tiny_task, head):
    """Greedy on the guided distribution: the same tokens and distributions with and without padding."""
    pi_ref = lm
    guide = make_guide(tokenizer, arch="gpt2", head=head)
    processor = processor_for(guide, tokenizer, "qsharp", mask_non_candidates=True)
    rows = ragged(tokenizer, tiny_task, 3)
    batch = guided_generate(pi_ref, tokenizer, processor, rows, do_sample=False)
    width = max(map(len, rows))
    for i, prompt in enumerate(rows):
        alone = guided_generate(pi_ref, tokenizer, processor, [prompt], do_sample=False)
        steps = alone.sequences.shape[1] - len(prompt)
        assert batch.sequences[i, width : width + steps].tolist() == alone.sequences[0, len(prompt):].tolist()
        for step in range(steps):
            assert torch.allclose(batch.scores[step][i], alone.scores[step][0], atol=1e-4)


def test_bad_settings_are_refused_naming_them(tokenizer):
    guide = make_guide(tokenizer)
    with pytest.raises(ValueError, match="eta=0"):
        GuidanceLogitsProcessor(guide, GuidanceSettings(eta=0))
    with pytest.raises(ValueError, match="non_candidates='drop'"):
        GuidanceLogitsProcessor(guide, GuidanceSettings(non_candidates="drop"))


def test_the_generate_command_prints_each_guided_completion_with_its_kl(pi_ref, tokenizer, tiny_task, tmp_path,
                                                                        capsys):
    from qsharp_exp.cli.generate import main

    pi_ref.save_pretrained(tmp_path / "pi_ref")
    tokenizer.save_pretrained(tmp_path / "pi_ref")
    make_guide(tokenizer).save_pretrained(tmp_path / "guide")
    prompts = [p.prompt for p in tiny_task.problems("test")[:2]]
    args = ["--pi-ref", str(tmp_path / "pi_ref"), "--guide", str(tmp_path / "guide"), "--eta", "0.5",
            "--top-k", "5", "--max-new-tokens", "6", "--samples", "2", *(a for p in prompts for a in ("--prompt", p))]
    capsys.readouterr()  # what saving the models printed
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # stdout holds the JSON lines only
    assert [r["prompt"] for r in rows] == [prompts[0]] * 2 + [prompts[1]] * 2
    # Each printed KL, recomputed from scratch over the printed completion's tokens.
    guide, spec = make_guide(tokenizer), SamplingSpec(max_new_tokens=6)  # the guide saved above (same seed)
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        response = row["completion_ids"]
        assert tokenizer.decode(response, skip_special_tokens=True) == row["completion"]
        guided = uncached_guided_logprobs(pi_ref, guide, prompt, response, spec, 5, 0.5, "qsharp", False)
        plain = uncached_guided_logprobs(pi_ref, None, prompt, response, spec, 5, 0.5, "qsharp", False)
        kl = sum(G.kl_divergence(g, p).item() for g, p in zip(guided, plain, strict=True))
        assert row["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-5), row


def test_the_generate_command_refuses_a_guide_of_another_vocabulary(pi_ref, tokenizer, tmp_path, capsys):
    from qsharp_exp.cli.generate import main

    pi_ref.save_pretrained(tmp_path / "pi_ref")
    tokenizer.save_pretrained(tmp_path / "pi_ref")
    from qsharp_exp.tasks.star_graph import StarGraphConfig, StarGraphTask

    other = StarGraphTask(StarGraphConfig(num_nodes=20, num_pretrain=1, num_train=1, num_test=1)).build_tokenizer()
    make_guide(other).save_pretrained(tmp_path / "guide")
    assert main(["--pi-ref", str(tmp_path / "pi_ref"), "--guide", str(tmp_path / "guide"), "--prompt", "x"]) == 1
    assert "use the guide trained with this pi_ref" in capsys.readouterr().err


def test_a_processor_reused_for_a_wider_batch_guides_it_as_a_fresh_one_does(tokenizer, tiny_task):
    """The second call's prompts are exactly one token wider than the first call's last input: only the prompt
    tells the two calls apart."""
    pi_ref = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=0).eval()
    guide = make_guide(tokenizer)
    reused = processor_for(guide, tokenizer, "qsharp")
    rows = [p[:6] for p in ragged(tokenizer, tiny_task, 3)]
    guided_generate(pi_ref, tokenizer, reused, rows, do_sample=False)
    wider = [p[: 6 + SPEC.max_new_tokens] for p in ragged(tokenizer, tiny_task, 6)[3:]]
    torch.manual_seed(1)
    again = guided_generate(pi_ref, tokenizer, reused, wider)
    torch.manual_seed(1)
    fresh = guided_generate(pi_ref, tokenizer, processor_for(guide, tokenizer, "qsharp"), wider)
    assert torch.equal(again.sequences, fresh.sequences)
    for a, b in zip(again.scores, fresh.scores, strict=True):
        assert torch.equal(a, b)


def test_beam_search_is_refused_in_one_line(tokenizer, tiny_task):
    pi_ref = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=0).eval()
    processor = processor_for(make_guide(tokenizer), tokenizer, "qsharp")
    with pytest.raises(ValueError, match="beam search"):
        guided_generate(pi_ref, tokenizer, processor, ragged(tokenizer, tiny_task, 4), num_beams=2, do_sample=False)


def test_several_return_sequences_per_prompt_are_guided_and_each_has_its_kl(tokenizer, tiny_task):
    pi_ref = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=0).eval()
    guide = make_guide(tokenizer)
    rows = ragged(tokenizer, tiny_task, 2)
    processor = processor_for(guide, tokenizer, "qsharp")
    torch.manual_seed(2)
    out = guided_generate(pi_ref, tokenizer, processor, rows, num_return_sequences=3)
    repeated = processor_for(guide, tokenizer, "qsharp")
    torch.manual_seed(2)
    same = guided_generate(pi_ref, tokenizer, repeated, [r for r in rows for _ in range(3)])
    assert out.sequences.shape[0] == processor.kl.shape[0] == 6
    assert torch.equal(out.sequences, same.sequences) and torch.equal(processor.kl, repeated.kl)


def test_right_padded_prompts_are_refused(tokenizer, tiny_task):
    pi_ref = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=0).eval()
    processor = processor_for(make_guide(tokenizer), tokenizer, "qsharp")
    rows = ragged(tokenizer, tiny_task, 3)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    with pytest.raises(ValueError, match="left-padded"):
        pi_ref.generate(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), max_new_tokens=3,
                        pad_token_id=tokenizer.pad_token_id, **processor.generate_kwargs())


def test_generate_sampling_beyond_the_processors_spec_is_refused_naming_it(tokenizer, tiny_task):
    pi_ref = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=0).eval()
    processor = GuidanceLogitsProcessor(make_guide(tokenizer), GuidanceSettings(top_k=5), tokenizer=tokenizer,
                                        spec=SamplingSpec(max_new_tokens=2))
    with pytest.raises(ValueError, match="spec.max_new_tokens=2"):
        guided_generate(pi_ref, tokenizer, processor, ragged(tokenizer, tiny_task, 2), max_new_tokens=12,
                        eos_token_id=None)


def test_assisted_decoding_is_refused_in_one_line(tokenizer, tiny_task):
    pi_ref = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=0).eval()
    assistant = build_causal_lm(tiny_arch("gpt2"), tokenizer, seed=5).eval()
    processor = processor_for(make_guide(tokenizer), tokenizer, "qsharp")
    with pytest.raises(ValueError, match="assisted"):
        guided_generate(pi_ref, tokenizer, processor, ragged(tokenizer, tiny_task, 1)[:1], assistant_model=assistant,
                        do_sample=False, eos_token_id=None)


@pytest.fixture
def saved(pi_ref, tokenizer, tmp_path):
    """pi_ref and a guide saved as the generate command reads them; the guide also inside a stage directory."""
    pi_ref.save_pretrained(tmp_path / "pi_ref")
    tokenizer.save_pretrained(tmp_path / "pi_ref")
    make_guide(tokenizer).save_pretrained(tmp_path / "stage" / "model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    return tmp_path


@pytest.mark.parametrize(("change", "named"), [
    ({"--samples": "0"}, "--samples 0 must be at least 1"),
    ({"--top-k": "0"}, "--top-k 0 must be at least 1"),
    ({"--top-k": "500"}, "--top-k=500 is more than pi_ref's vocabulary"),
    ({"--eta": "nan"}, "--eta nan must lie in"),
    ({"--top-p": "0"}, "--top-p 0.0 must lie in (0, 1]"),
    ({"--rule": "qhash"}, "--rule qhash is not a guidance rule"),
    ({"--guide": "{dir}/missing"}, "--guide={dir}/missing does not exist"),
    ({"--guide": "{dir}/a_file"}, "is a file, not a model folder"),
    ({"--guide": "{dir}/empty"}, "holds no saved return model (no config.json)"),
    ({"--guide": "{dir}/stage"}, "it is a stage directory: use {dir}/stage/model"),
    ({"--pi-ref": "{dir}/missing"}, "--pi-ref={dir}/missing does not exist"),
    ({"--prompt": "1,5|1,2|2,99|5,9/1,11="}, "pi_ref: its tokenizer cannot represent the task's text (lost: 1,5|"),
    ({"--prompt": "1,5|1,2|2,11|5,9/1,11=" * 10}, "exceeds the models' context of 128 positions"),
    ({"--device": "cuda"}, "--device cuda needs a CUDA device and none is visible: use --device cpu"),
])
def test_the_generate_command_stops_a_bad_input_with_one_line_naming_it(saved, capsys, change, named):
    from qsharp_exp.cli.generate import main

    if change.get("--device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = {"--pi-ref": str(saved / "pi_ref"), "--guide": str(saved / "stage" / "model"),
            "--prompt": "1,5|1,2|2,11|5,9/1,11=", "--max-new-tokens": "6", "--top-k": "5",
            **{k: v.format(dir=saved) for k, v in change.items()}}
    assert main([a for pair in args.items() for a in pair]) == 1
    err = capsys.readouterr().err  # (besides transformers' progress bars while loading)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named.format(dir=saved) in errors[0] and "Traceback" not in err, err
