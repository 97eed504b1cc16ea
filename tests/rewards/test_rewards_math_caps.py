r"""math_accuracy hands math-verify only answers within its size caps (issue 11, item 12).

math-verify's parser is exponential in bracket nesting (14 nested braces: 24 s). An answer over
MAX_ANSWER_CHARS characters, with more than MAX_ANSWER_SCRIPTS ``^`` / ``_``, or nested deeper than
MAX_ANSWER_DEPTH scores 0 without reaching
math-verify: a spy on ``math_verify.parse`` / ``math_verify.verify`` counts the calls (a work bound,
not a wall-clock time). Answers at the caps still reach it and verify as before.
"""

import importlib
import logging
import re

import math_verify
import pytest

from r1jax.rewards import math_accuracy
from r1jax.rewards.scan import counting_work

math_module = importlib.import_module("r1jax.rewards.math_accuracy")
MAX_CHARS, MAX_DEPTH = math_module.MAX_ANSWER_CHARS, math_module.MAX_ANSWER_DEPTH
MAX_SCRIPTS = math_module.MAX_ANSWER_SCRIPTS


@pytest.fixture
def spy(monkeypatch):
    """Records the text of every math_verify.parse call and counts math_verify.verify calls."""
    calls = {"parse": [], "verify": 0}
    real_parse, real_verify = math_verify.parse, math_verify.verify

    def parse(text, *args, **kwargs):
        calls["parse"].append(text)
        return real_parse(text, *args, **kwargs)

    def verify(*args, **kwargs):
        calls["verify"] += 1
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", parse)
    monkeypatch.setattr(math_verify, "verify", verify)
    return calls


def _nested_fraction(depth):
    """A fraction equal to 3/5 whose brackets nest ``depth`` deep (``depth`` >= 3)."""
    core = r"\frac{1}{1+\frac{1}{1+\frac{1}{2}}}"  # depth 3
    return r"\left(" * (depth - 3) + core + r"\right)" * (depth - 3)


def _ones(scripts):
    """A product equal to 1 with ``scripts`` superscripts."""
    return r"\cdot ".join(["1^{2}"] * scripts)


BIG = 10**MAX_CHARS - 7  # MAX_CHARS digits

OVER_CAPS = {
    # the reported cases: 14 nested braces (24 s), 8,000 characters of them (299 s), 2,000 letters (15 s)
    "14 nested braces": r"\boxed{" + "{" * 14 + "1" + "}" * 14 + "}",
    "8000 chars of nested braces": r"\boxed{" + "{" * 4000 + "}" * 4000 + "}",
    "2000 letters in <answer>": "<answer>" + "a" * 2000 + "</answer>",
    "unclosed braces": "<answer>" + "{" * 5000 + "</answer>",
    "long digit string": r"\boxed{" + "7" * 10_000 + "}",
    "many fractions": r"\boxed{" + r"\frac{1}{2}+" * 1000 + "1}",
    "power tower over the depth cap": r"\boxed{" + "x^{" * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1) + "}",
    "stacked subscripts": r"\boxed{" + "+".join(["x_{x_{x_{1}}}"] * 9) + "}",
    # correct answers, but one over a cap: the rule, not the mathematics, decides
    "correct answer one bracket too deep": r"\boxed{" + _nested_fraction(MAX_DEPTH + 1) + "}",
    "correct integer one digit too long": r"\boxed{" + str(BIG * 10 + 3) + "}",
    "correct product one script too many": r"\boxed{" + _ones(MAX_SCRIPTS + 1) + "}",
}
REFERENCES = {
    "correct answer one bracket too deep": "3/5",
    "correct integer one digit too long": str(BIG * 10 + 3),
    "correct product one script too many": "1",
}


@pytest.mark.parametrize("name", list(OVER_CAPS))
def test_answers_over_the_caps_score_zero_without_calling_math_verify(name, spy):
    completion = OVER_CAPS[name]
    reference = REFERENCES.get(name, "7")
    math_accuracy("", r"\boxed{7}", reference)  # the gold parse is cached; it is not what we count
    spy["parse"].clear()
    spy["verify"] = 0
    with counting_work() as work:
        assert math_accuracy("", completion, reference) == 0.0
    assert spy == {"parse": [], "verify": 0}, name
    assert work.chars <= 8 * len(completion)


def test_the_reason_is_logged_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="r1jax.rewards.math_accuracy"):
        math_accuracy("", OVER_CAPS["2000 letters in <answer>"], "7")
        math_accuracy("", OVER_CAPS["14 nested braces"], "7")
        math_accuracy("", OVER_CAPS["stacked subscripts"], "7")
    text = caplog.text
    assert "2000 characters, over MAX_ANSWER_CHARS" in text and "deeper than MAX_ANSWER_DEPTH" in text
    assert "27 super/subscripts, over MAX_ANSWER_SCRIPTS" in text


@pytest.mark.parametrize(
    "answer, reference",
    [
        (str(BIG), str(BIG)),  # exactly MAX_CHARS digits
        (str(BIG), BIG),
        (_nested_fraction(MAX_DEPTH), "3/5"),  # brackets exactly MAX_DEPTH deep
        (_nested_fraction(MAX_DEPTH), "0.6"),
        (" " * MAX_CHARS + "42" + " " * MAX_CHARS, "42"),  # surrounding blanks do not count
        (_ones(MAX_SCRIPTS), "1"),  # exactly MAX_SCRIPTS superscripts
    ],
)
def test_answers_at_the_caps_still_verify(answer, reference, spy):
    assert math_accuracy("", f"<answer>{answer}</answer>", reference) == 1.0
    if re.fullmatch(r"[0-9]{1,100}", answer.strip()) and re.fullmatch(r"[0-9]{1,100}", str(reference)):
        return  # two plain integers are compared without math-verify (its verdict: test_rewards_rules)
    assert answer.strip() in "".join(spy["parse"]) and spy["verify"] >= 1


def test_wrong_answers_at_the_caps_still_score_zero(spy):
    assert math_accuracy("", rf"\boxed{{{BIG - 1}}}", str(BIG)) == 0.0
    assert math_accuracy("", rf"\boxed{{{_nested_fraction(MAX_DEPTH)}}}", "2/5") == 0.0
    assert spy["verify"] >= 2


@pytest.mark.parametrize(
    "answer, too_complex",
    [
        ("[1, 2)", False),  # kinds need not match
        (r"\left[ \frac{1}{2}, 3 \right)", False),
        (r"\{1, 2\}", False),
        (")))" + "(" * MAX_DEPTH, False),  # stray closing brackets do not lower the depth below 0
        ("(" * MAX_DEPTH + ")" * MAX_DEPTH + "(" * MAX_DEPTH, False),
        ("(" * (MAX_DEPTH + 1), True),  # unclosed groups stay open
        ("[" + "{" * MAX_DEPTH, True),
        ("1" * MAX_CHARS, False),
        ("1" * (MAX_CHARS + 1), True),
        ("x_1" * MAX_SCRIPTS, False),
        ("x^2" * (MAX_SCRIPTS - 1) + "x_1", False),
        ("x^2" * MAX_SCRIPTS + "x_1", True),
    ],
)
def test_answer_too_complex(answer, too_complex):
    assert (math_module.answer_too_complex(answer) is not None) == too_complex
