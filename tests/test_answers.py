"""Answer extraction, equivalence, majority vote and pass@k for the math tasks."""

import pytest

from qsharp_exp.tasks.answers import equivalent, gsm8k_gold, last_boxed, majority_vote

EQUIVALENT = [
    ("18", "18"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac{1}{2}", "\\tfrac12"),
    ("0.25", "\\frac14"),
    ("1000", "1,000"),
    ("1000000", "1,000,000"),
    ("-3", "-3"),
    ("-\\frac{2}{3}", "\\frac{-2}{3}"),
    ("50", "50\\%"),
    ("12.5", "12.5\\%"),
    ("5", "5\\text{ cm}"),
    ("90", "90^\\circ"),
    ("90^\\circ", "90"),
    ("[0,1)", "[0, 1)"),
    ("(-\\infty, 2]", "(-\\infty,2]"),
    ("(1,2)", "(1, 2)"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\sqrt{2}", "\\sqrt 2"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("x^2+1", "1+x^2"),
    ("3.0", "3"),
    ("\\pi", "\\pi"),
]
NOT_EQUIVALENT = [
    ("-3", "3"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("18", "19"),
    ("[0,1)", "[0,1]"),
    ("(1,2)", "(2,1)"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("\\sqrt{2}", "2"),
    ("1000", "100"),
    ("5", ""),
    ("5", None),
]


@pytest.mark.parametrize("gold,pred", EQUIVALENT)
def test_equivalent_answers_are_accepted(gold, pred):
    assert equivalent(gold, pred)


@pytest.mark.parametrize("gold,pred", NOT_EQUIVALENT)
def test_different_answers_are_rejected(gold, pred):
    assert not equivalent(gold, pred)


def test_a_fractional_time_limit_still_checks_equivalence_and_a_useless_one_is_refused():
    assert equivalent("1/2", "0.5", 2.5) and equivalent("1/2", "0.5", 0.1)
    assert not equivalent("1/2", "0.6", 2.5)
    with pytest.raises(ValueError, match="timeout_s=0"):
        equivalent("1/2", "0.5", 0)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so the answer is \\boxed{18}.", "18"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("nested \\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("\\boxed {x+1}", "x+1"),
        ("no box here: 42", None),
        ("unclosed \\boxed{3", None),
        ("closed then unclosed \\boxed{4} and \\boxed{5", "4"),
        ("", None),
    ],
)
def test_last_boxed_extracts_the_last_complete_box(text, expected):
    assert last_boxed(text) == expected


def test_gsm8k_gold_is_the_number_after_the_marker():
    assert gsm8k_gold("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert gsm8k_gold("#### 1,234") == "1234"
    assert gsm8k_gold("70000") == "70000"


def test_majority_vote_groups_equivalent_answers_and_ignores_missing_ones():
    assert majority_vote(["0.5", "\\frac{1}{2}", "3", None, "3", "\\dfrac12"]) == "0.5"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_majority_vote_ties_go_to_the_answer_seen_first():
    assert majority_vote(["3", "4", "4", "3"]) == "3"
    assert majority_vote(["4", "3", "3", "4"]) == "4"


def test_unparseable_answers_vote_by_their_exact_text_without_error():
    assert majority_vote(["\\frac{", "3", "\\frac{", "\\left("]) == "\\frac{"
    assert majority_vote(["\\frac{", "3", "3.0"]) == "3"


def test_majority_vote_uses_the_given_equivalence():
    assert majority_vote(["1,2", "1,3", "1,3"], same=lambda a, b: a == b) == "1,3"


@pytest.mark.parametrize(
    "gold,pred",
    [("18", "\\$18"), ("-0.75", "-\\frac{3}{4}"), ("2500", "2{,}500"), ("(1,2,3)", "(1, 2, 3)")],
)
def test_more_equivalent_forms(gold, pred):
    assert equivalent(gold, pred)


@pytest.mark.parametrize("predicted", ["1\\,000", "1{,}000", "1\\;000", "1\\ 000", "1~000"])
def test_latex_thousands_separators_are_read_as_the_number(predicted):
    assert equivalent("1000", predicted)
    separator = predicted[1:-3]
    assert equivalent("1000000", f"1{separator}000{separator}000")


@pytest.mark.parametrize("predicted", ["1\\,2", "1\\,0000", "10\\,00"])
def test_a_thin_space_that_does_not_separate_thousands_is_not_taken_for_one(predicted):
    assert not equivalent("1000", predicted)
