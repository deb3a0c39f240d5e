"""The math tasks: data sources and their errors, the prompt and chat template, arithmetic generation."""

import json
import math
import random
import re
from pathlib import Path

import pytest

from helpers import real_data
from qsharp_exp.config import ConfigError, UserError
from qsharp_exp.models.lm import build_causal_lm, load_pretrained_lm
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.tasks import build_task
from qsharp_exp.tasks.answers import last_boxed
from qsharp_exp.tasks.arithmetic import ArithmeticConfig, generate_records, word_problem
from qsharp_exp.tasks.math import PROMPT, EvalOnlyDatasetConfig, MathDatasetConfig


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def gsm8k_dir(tmp_path):
    rows = [{"problem": f"Tom has {i} apples and buys 2 more. How many?",
             "solution": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}", "answer": f"{i + 2:,}"} for i in range(998, 1018)]
    write_jsonl(tmp_path / "gsm8k_train.jsonl", rows)
    write_jsonl(tmp_path / "gsm8k_test.jsonl", rows[:5])
    return tmp_path


def test_local_gsm8k_uses_the_published_split_and_numeric_gold(gsm8k_dir):
    task = build_task(MathDatasetConfig(name="gsm8k", data_dir=str(gsm8k_dir), num_pretrain=None, num_train=None,
                                 num_test=None))
    train, test = task.problems("train"), task.problems("test")
    assert len(train) == 18 and len(task.problems("validation")) == 2 and len(test) == 5
    assert {p.id for p in train}.isdisjoint(p.id for p in task.problems("validation"))
    first = test[0]
    assert first.prompt == PROMPT.format(question="Tom has 998 apples and buys 2 more. How many?")
    assert first.answer == "1000"  # thousands separator removed
    target = task.target(task.problems("pretrain")[0])
    assert "<<" not in target and target.endswith("\\boxed{" + task.problems("pretrain")[0].answer + "}.")
    assert task.reward(first, "so \\boxed{1,000}") == 1.0
    assert task.reward(first, "1000 without a box") == 0.0


def test_gsm8k_rows_in_the_hub_layout_are_read_too(tmp_path):
    rows = [{"question": "Anna has 3 pens and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}] * 3
    write_jsonl(tmp_path / "gsm8k_train.jsonl", rows)
    write_jsonl(tmp_path / "gsm8k_test.jsonl", rows)
    task = build_task(MathDatasetConfig(name="gsm8k", data_dir=str(tmp_path), num_pretrain=None))
    problem = task.problems("test")[0]
    assert problem.answer == "7" and "Anna has 3 pens" in problem.prompt
    assert task.target(task.problems("pretrain")[0]) == "3 + 4 = 7\nThe answer is \\boxed{7}."


def test_missing_local_file_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="gsm8k_train.jsonl"):
        build_task(MathDatasetConfig(name="gsm8k", data_dir=str(tmp_path)))


def test_offline_hub_without_data_dir_fails_at_once_naming_the_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="task.data_dir"):
        build_task(MathDatasetConfig(name="math"))


def test_offline_hub_model_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="model.pi_ref.pretrained"):
        load_pretrained_lm("meta-llama/Meta-Llama-3-8B-Instruct", "model.pi_ref.pretrained", None)


def test_real_gsm8k_and_math500_test_sets_load_with_their_gold_answers(tmp_path):
    data = real_data("gsm8k_test.jsonl", "math500_test.jsonl")
    for name in ("gsm8k_test.jsonl", "math500_test.jsonl"):
        (tmp_path / name).symlink_to(data / name)
        # No real training files: the test set stands in, to check loading only.
        (tmp_path / name.replace("500_test", "_train").replace("_test", "_train")).symlink_to(data / name)
    gsm8k = build_task(MathDatasetConfig(name="gsm8k", data_dir=str(tmp_path), num_test=None))
    test = gsm8k.problems("test")
    assert len(test) == 1319 and test[0].answer == "18"
    rows = [json.loads(line) for line in (data / "gsm8k_test.jsonl").read_text().splitlines()[:3]]
    assert [p.prompt for p in test[:3]] == [r["prompt"] for r in rows]  # the paper's prompt, verbatim
    math = build_task(MathDatasetConfig(name="math", data_dir=str(tmp_path), num_test=None))
    test = math.problems("test")
    assert len(test) == 500 and test[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math.reward(test[0], "so $(r, \\theta) = \\boxed{(3, \\frac{\\pi}{2})}$") == 1.0
    assert len(math.problems("train")) == 450  # the seed-47 90% of 500


def aime_dir(path: Path, answers=("204", "25", "809")) -> Path:
    rows = [{"id": f"2024-I-{i + 1}", "problem": f"Find the number {a}.", "solution": f"\\boxed{{{a}}}", "answer": a}
            for i, a in enumerate(answers)]
    write_jsonl(path / "aime24_test.jsonl", rows)
    write_jsonl(path / "math_train.jsonl", [{"problem": f"What is {i} + 1?", "solution": f"$\\boxed{{{i + 1}}}$"}
                                            for i in range(20)])
    return path


def test_aime24_has_test_problems_only_and_says_that_it_trains_on_maths(tmp_path, caplog):
    cfg = EvalOnlyDatasetConfig(name="aime24", data_dir=str(aime_dir(tmp_path)), num_pretrain=None, num_train=None,
                                num_test=None)
    with caplog.at_level("INFO"):
        task = build_task(cfg)
    assert "training problems come from task.train_from=math" in caplog.text
    test, train = task.problems("test"), task.problems("train")
    assert [p.answer for p in test] == ["204", "25", "809"]
    assert test[0].prompt == PROMPT.format(question="Find the number 204.")
    assert len(train) == 18 and len(task.problems("validation")) == 2 and "+ 1?" in train[0].prompt
    assert task.reward(test[0], "so $t$ is \\boxed{204}") == 1.0 and task.reward(test[0], "\\boxed{205}") == 0.0
    assert task.same_answer("204", "204.0")


def test_aime24_data_and_settings_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"train_from=aime24: .* one of \['gsm8k', 'math'\]"):
        EvalOnlyDatasetConfig(name="aime24", train_from="aime24")
    (tmp_path / "no_train").mkdir()
    aime_dir(tmp_path / "no_train")
    (tmp_path / "no_train" / "math_train.jsonl").unlink()
    with pytest.raises(UserError, match=r"has no math_train.jsonl \(math train\)"):
        build_task(EvalOnlyDatasetConfig(name="aime24", data_dir=str(tmp_path / "no_train")))
    (tmp_path / "fraction").mkdir()
    with pytest.raises(UserError, match="aime24_test.jsonl, line 2: the answer '1/2' is not a whole number"):
        build_task(EvalOnlyDatasetConfig(name="aime24", data_dir=str(aime_dir(tmp_path / "fraction", ("3", "1/2")))))


def test_real_aime24_file_loads_its_30_problems_with_the_papers_prompt(tmp_path):
    data = real_data("aime24_test.jsonl", "math500_test.jsonl")
    (tmp_path / "aime24_test.jsonl").symlink_to(data / "aime24_test.jsonl")
    (tmp_path / "math_train.jsonl").symlink_to(data / "math500_test.jsonl")  # no real MATH train file: stands in
    task = build_task(EvalOnlyDatasetConfig(name="aime24", data_dir=str(tmp_path), num_test=None))
    test = task.problems("test")
    rows = [json.loads(line) for line in (data / "aime24_test.jsonl").read_text().splitlines()]
    assert len(test) == 30 and [p.answer for p in test] == [r["answer"] for r in rows]
    assert [p.prompt for p in test] == [r["prompt"] for r in rows]  # the paper's prompt, verbatim
    assert all(p.answer.isdigit() for p in test) and test[0].answer == "204"
    assert task.reward(test[0], "The walk takes \\boxed{204} minutes.") == 1.0


def test_arithmetic_problems_are_deterministic_disjoint_and_their_solutions_are_right():
    cfg = ArithmeticConfig(name="arithmetic", num_pretrain=300, num_train=100, num_test=50, max_ops=3)
    records = generate_records(cfg)
    assert records == generate_records(cfg)
    questions = [{r.question for r in records[s]} for s in ("pretrain", "train", "test")]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])
    task = build_task(cfg)
    for problem in task.problems("pretrain"):
        solution = task.target(problem)
        for a, op, b, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", solution):
            assert eval(f"{a} {op} {b}") == int(result)
        assert task.reward(problem, solution) == 1.0
        assert problem.prompt.startswith("Problem:\n\n") and problem.prompt.endswith("\\boxed{}.\n\nSolution:")


def test_chat_template_switch_wraps_the_prompt_or_not():
    task = build_task(ArithmeticConfig(name="arithmetic", num_pretrain=50, num_train=5, num_test=5))
    tokenizer = task.build_tokenizer()
    from helpers import tiny_arch

    model = build_causal_lm(tiny_arch("llama"), tokenizer, 0)
    problem = task.problems("test")[0]
    chat = PromptCodec.for_model(tokenizer, model, chat_template=True)
    bare = PromptCodec.for_model(tokenizer, model, chat_template=False)
    assert chat.prompt_text(problem) == f"<|user|>{problem.prompt}<|assistant|>"
    assert bare.prompt_text(problem) == problem.prompt
    assert chat.decode(chat.encode([problem], 4)[0]) == problem.prompt


def test_chat_template_without_one_in_the_tokenizer_names_the_switch(tokenizer, pi_ref):
    with pytest.raises(UserError, match="task.chat_template=false"):
        PromptCodec.for_model(tokenizer, pi_ref, chat_template=True)


def test_prompt_longer_than_the_context_is_one_clear_error(tokenizer, pi_ref, tiny_task):
    codec = PromptCodec.for_model(tokenizer, pi_ref, chat_template=False)
    problems = tiny_task.problems("test")[:2]
    codec.encode(problems, 8)
    with pytest.raises(UserError, match="eval.max_new_tokens=200"):
        codec.encode(problems, 200)


def test_math_tiny_fits_the_longest_math_problems_with_their_solutions_and_the_answer_budget(tmp_path):
    """model=math_tiny runs task=math: every pretraining example (problem + solution) and every test prompt
    with eval.max_new_tokens fit its context. MATH-500 stands in for MATH train (not among the real files)."""
    from hydra import compose, initialize_config_dir

    from qsharp_exp.__main__ import CONF_DIR
    from qsharp_exp.compose import load_run_config

    data = real_data("math500_test.jsonl")
    (tmp_path / "math_train.jsonl").symlink_to(data / "math500_test.jsonl")
    (tmp_path / "math500_test.jsonl").symlink_to(data / "math500_test.jsonl")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = load_run_config(compose(config_name="config", overrides=[
            "task=math", "model=math_tiny", f"task.data_dir={tmp_path}"]))
    task = build_task(cfg.task)
    tokenizer = task.build_tokenizer()
    model = build_causal_lm(cfg.model.pi_ref, tokenizer, 0)
    codec = PromptCodec.for_model(tokenizer, model, cfg.task.chat_template)
    problems = task.problems("pretrain")
    longest = max(len(p) + len(codec.response_ids(task.target(x)))
                  for p, x in zip(codec.encode(problems, 0), problems, strict=True))
    assert longest > 1024  # the context math_tiny had before was too short
    assert longest <= cfg.model.pi_ref.max_positions
    codec.encode(task.problems("test"), cfg.eval.max_new_tokens)  # raises if a prompt leaves no room


def test_the_demonstrators_slips_occur_at_their_set_rates_and_only_in_pi_refs_solutions():
    """Measured on generated data: each kind of slip per step where it can occur, within 3 standard errors of
    its setting; train and test solutions stay right; every slip ends in a wrong boxed answer."""
    from collections import Counter

    from qsharp_exp.tasks.arithmetic import SLIPS, demonstrate, error_kind

    rates = {"multiplier": 0.3, "sign": 0.2, "carry": 0.1}
    cfg = ArithmeticConfig(name="arithmetic", num_pretrain=6000, num_train=300, num_test=300,
                           **{f"slip_{k}": v for k, v in rates.items()})
    records = generate_records(cfg)
    task = build_task(cfg)
    slips, chances = Counter(), Counter()
    rng = random.Random(1)
    for _ in range(6000):
        problem = word_problem(rng, cfg.min_ops, cfg.max_ops, cfg.max_number)
        _, made = demonstrate(list(problem.steps), problem.start, rates, random.Random(problem.question))
        slips.update(made)
        chances.update(multiplier=sum(s.kind == "mul" for s in problem.steps),
                       sign=sum(s.kind == "sub" for s in problem.steps), carry=len(problem.steps) - 1)
    for kind in SLIPS:
        n, p = chances[kind], rates[kind]
        assert abs(slips[kind] / n - p) < 3 * math.sqrt(p * (1 - p) / n), kind
    # The pretraining solutions: their first errors are the slips (a slip can land on the right number by chance).
    kinds = Counter(error_kind(r.question, r.solution, r.answer) for r in records["pretrain"])
    assert set(kinds) == {"right", *SLIPS} and kinds["right"] < 0.85 * len(records["pretrain"])
    for r in records["pretrain"][:300]:
        assert (error_kind(r.question, r.solution, r.answer) == "right") == (r.answer == last_boxed(r.solution))
    for split in ("train", "test"):
        assert all(error_kind(r.question, r.solution, r.answer) == "right" for r in records[split])
        assert all(task.reward(p, task.target(p)) == 1.0 for p in task.problems(split))
    # The problems do not depend on the demonstrator.
    clean = generate_records(ArithmeticConfig(name="arithmetic", num_pretrain=6000, num_train=300, num_test=300))
    assert [r.question for r in clean["pretrain"]] == [r.question for r in records["pretrain"]]
    assert clean["test"] == records["test"]


def test_error_kind_names_the_first_wrong_decision_of_a_response():
    from qsharp_exp.tasks.arithmetic import error_kind

    buying = "Mia has 16 books. She buys 13 more. How many books does Mia have now?"
    assert error_kind(buying, "After buying 13 more: 16 - 13 = 3. \\boxed{3}", "29") == "sign"

    question = "Tom has 12 apples. He gives 3 to a friend. Then the number doubles. How many apples does Tom have now?"
    right = "Tom starts with 12 apples. After giving 3 away: 12 - 3 = 9. After it doubles: 9 * 2 = 18."
    cases = {
        right + " The answer is \\boxed{18}.": "right",
        "After giving 3 away: 12 + 3 = 15. After it doubles: 15 * 2 = 30. \\boxed{30}": "sign",
        "After giving 3 away: 12 - 3 = 9. After it doubles: 9 * 3 = 27. \\boxed{27}": "multiplier",
        "After giving 3 away: 12 - 3 = 9. After it doubles: 12 * 2 = 24. \\boxed{24}": "carry",
        "After giving 3 away: 12 - 3 = 8. After it doubles: 8 * 2 = 16. \\boxed{16}": "arithmetic",
        "After giving 3 away: 12 - 3 = 9. After it doubles: 9 * 2 = 18. \\boxed{9}": "other",
        "After giving 3 away: 12 - 3 = 9. \\boxed{9}": "other",
        "After giving 2 away: 12 - 2 = 10. After it doubles: 10 * 2 = 20. \\boxed{20}": "other",
    }
    for response, kind in cases.items():
        assert error_kind(question, response, "18") == kind, response


def test_varied_wordings_change_the_words_and_never_the_equations():
    from qsharp_exp.tasks.arithmetic import EQUATION_TEXT

    plain = generate_records(ArithmeticConfig(name="arithmetic", num_pretrain=300, num_train=5, num_test=5))
    varied = generate_records(ArithmeticConfig(name="arithmetic", num_pretrain=300, num_train=5, num_test=5,
                                               vary_wording=True))
    pairs = list(zip(plain["pretrain"], varied["pretrain"], strict=True))
    assert all(EQUATION_TEXT.findall(a.solution) == EQUATION_TEXT.findall(b.solution) for a, b in pairs)
    assert all(a.answer == b.answer and a.question == b.question for a, b in pairs)
    assert sum(a.solution != b.solution for a, b in pairs) > 250
