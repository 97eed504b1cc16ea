r"""The rule rewards read adversarial text in linear time, with the verdicts the old regexes gave.

Two kinds of checks:

- *same verdicts*: each scanner that replaced a backtracking regex agrees with that regex (copied
  here from the code it replaced, as the reference) on random strings built from the fragments
  the regex cares about;
- *linear work*: long adversarial strings (repeated and unclosed tags, many ``\boxed{``, runs of
  the characters a pattern repeats) are scored under :func:`r1jax.rewards.scan.counting_work`,
  and the characters read stay below a constant times the input length, and at most double
  when the input doubles. A deterministic count, not a wall-clock time.
"""

import importlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.rewards import (
    countdown,
    format_lenient,
    format_strict,
    language_consistency,
    language_consistency_en,
    language_consistency_zh,
    multiple_choice,
)
from r1jax.rewards import language, parsing
from r1jax.rewards.scan import Scanner, counting_work

# The package exports functions under these modules' names: fetch the modules themselves.
countdown_module = importlib.import_module("r1jax.rewards.countdown")
math_module = importlib.import_module("r1jax.rewards.math_accuracy")
choice_module = importlib.import_module("r1jax.rewards.multiple_choice")

# ------------------------------------------------------------------ the regexes that were replaced

OLD_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
OLD_LENIENT = re.compile(r"<think>.*?</think>.*?<answer>(.*?)</answer>", re.DOTALL)
OLD_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
OLD_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", re.DOTALL)
OLD_STRIP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
OLD_LEADING = re.compile(r"^[\s(\[*]*([ABCDEFGHIJ])(?:[)\].:,*]|\s*$)")
OLD_PHRASE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)\s*:?\s*[\s(\[*]*([ABCDEFGHIJ])(?![A-Za-z])")
OLD_TIMES = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")
OLD_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
OLD_PROSE_WORD = re.compile(r"[A-Za-z]{3,}")


def old_format_strict(text):
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if any(text.count(tag) != 1 for tag in tags):
        return 0.0
    m = OLD_STRICT.fullmatch(text)
    return 1.0 if m and m.group(1).strip() and m.group(2).strip() else 0.0


def old_format_lenient(text):
    return 1.0 if any(a.strip() for a in OLD_LENIENT.findall(text)) else 0.0


def fragments(*parts):
    """Strings of up to 14 pieces drawn from ``parts`` and a few plain characters."""
    return st.lists(st.sampled_from(parts + ("a", "B", " ", "\n", "\u00a0")), max_size=14).map("".join)


TAG_TEXT = fragments("<think>", "</think>", "<answer>", "</answer>", "<", ">", "/", "think>", "<answer")


@settings(max_examples=400, deadline=None)
@given(TAG_TEXT)
def test_format_rewards_agree_with_the_old_regexes(text):
    assert format_strict("", text) == old_format_strict(text)
    assert format_lenient("", text) == old_format_lenient(text)


@settings(max_examples=300, deadline=None)
@given(TAG_TEXT, st.sampled_from(["think", "answer"]))
def test_tag_spans_agree_with_findall(text, tag):
    old = [m.span(1) for m in re.finditer(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)]
    assert parsing.tag_spans(text, tag) == old


@settings(max_examples=300, deadline=None)
@given(fragments("```", "`", "```python", "```py ", "```js", " \t", "x"))
def test_fenced_blocks_agree_with_the_old_regex(text):
    assert parsing._fenced_blocks(text) == OLD_FENCE.findall(text)


@settings(max_examples=300, deadline=None)
@given(fragments("$", "$$", "\\(", "\\)", "\\[", "\\]", "\\", "\\frac", "x"))
def test_math_spans_agree_with_the_old_regex(text):
    assert language._math_spans(text) == [m.span() for m in OLD_MATH.finditer(text)]


CHOICE_TEXT = fragments("answer", "Answer", "ANſWER", "is", "İs", ":", "(", "[", "*", ")", "C", "\\text{", "}", "{", "x")


@settings(max_examples=300, deadline=None)
@given(CHOICE_TEXT)
def test_choice_patterns_agree_with_the_old_regexes(text):
    mc = choice_module
    assert mc._PHRASE.findall(text) == OLD_PHRASE.findall(text)
    assert mc._STRIP.sub(r"\1", text) == OLD_STRIP.sub(r"\1", text)
    assert (mc._LEADING.match(text) or [None, None])[1] == (OLD_LEADING.match(text) or [None, None])[1]


@settings(max_examples=200, deadline=None)
@given(fragments("1", "2", ")", "(", "x", "X", " ", "\t"), fragments("\\sqrt", "\\", "ab", "abc", "1"))
def test_countdown_and_math_patterns_agree_with_the_old_regexes(expression, answer):
    assert countdown_module._TIMES.sub("*", expression) == OLD_TIMES.sub("*", expression)
    assert math_module._LATEX_COMMAND.sub(" ", answer) == OLD_LATEX_COMMAND.sub(" ", answer)
    assert math_module._PROSE_WORD.findall(answer) == OLD_PROSE_WORD.findall(answer)


# ------------------------------------------------------------------------------------ linear work

COUNTDOWN_REF = {"target": 24, "numbers": [4, 6]}
REWARDS = {  # name -> (prompt, completion) -> anything; every rule reward's text handling
    "format_strict": lambda p, c: format_strict(p, c),
    "format_lenient": lambda p, c: format_lenient(p, c),
    "language_consistency": lambda p, c: language_consistency(p, c),
    "language_consistency_en": lambda p, c: language_consistency_en(p, c),
    "language_consistency_zh": lambda p, c: language_consistency_zh(p, c),
    "countdown": lambda p, c: countdown(p, c, COUNTDOWN_REF),
    "multiple_choice": lambda p, c: multiple_choice(p, c, "C"),
    # math_accuracy and code_tests hand the extracted answer / program to math-verify / the
    # sandbox; what they read of the completion themselves is this:
    "math_accuracy (answer extraction)": parsing.extract_final_answer,
    "code_tests (program extraction)": parsing.extract_code,
}

# Units that made the old regexes re-read the text: tags opened and never closed, closed without
# an answer, boxes never closed, math delimiters never closed, fences without a newline or end,
# "answer is" followed by long blank runs, runs of the characters a pattern repeats.
ADVERSARIAL_UNITS = [
    "<think>a</think>", "<think>", "</think>", "<answer>", "<think></think><answer> </answer>",
    "</think><answer>", "<answer>\\boxed{", "\\boxed{", "{", "\\boxed ", "\\fbox{\\{", "$", "$$", "\\(",
    "\\[", "\\frac", "```", "```py", "```python\n", "answer is ", "answer: (", "Answer is *", " ",
    "\t\n", "(", "3 x ", "\\text{", "think", "日本語", "中文", "a",
]
# (prefix, suffix) around the repeats: inside a think block (the language rewards read only that),
# an answer block, a box, or nothing.
WRAPPERS = [("", ""), ("<think>", "</think>"), ("<think> r </think><answer>", "</answer>"), ("\\boxed{", "}"),
            ("answer is", ""), ("```", "\n```")]


def _work(fn, text):
    with counting_work() as work:
        fn("", text)
    return work.chars


def _assert_linear(units, wrapper, repeats):
    unit, (prefix, suffix) = "".join(units), wrapper
    short = prefix + unit * repeats + suffix
    long = prefix + unit * (2 * repeats) + suffix
    for name, fn in REWARDS.items():
        w_short, w_long = _work(fn, short), _work(fn, long)
        assert w_long <= 40 * len(long), (name, unit, wrapper, w_long, len(long))
        # Doubling the text at most doubles the work (plus a little for the ends).
        assert w_long <= 2 * w_short + 40 * len(prefix + unit + suffix), (name, unit, wrapper, w_short, w_long)


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("unit", ADVERSARIAL_UNITS)
def test_every_reward_reads_each_adversarial_unit_in_linear_work(unit, wrapper):
    _assert_linear([unit], wrapper, 500)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ADVERSARIAL_UNITS), min_size=2, max_size=5), st.sampled_from(WRAPPERS),
       st.integers(100, 1000))
def test_every_reward_reads_mixed_adversarial_text_in_linear_work(units, wrapper, repeats):
    _assert_linear(units, wrapper, repeats)


def test_the_reported_cubic_case_reads_each_character_a_few_times():
    text = "<think>a</think>" * 8750  # 140 KB: the old format_lenient never finished on this
    for fn in (format_lenient, format_strict):
        assert _work(fn, text) <= 8 * len(text)
    closed = text + "<answer>" * 1000 + "</answer> 4 </answer>"
    assert format_lenient("", closed) == 1.0 and _work(format_lenient, closed) <= 8 * len(closed)


def test_scanner_reads_the_text_once_for_repeated_searches():
    # A search that an earlier one answers reads nothing: n searches for an absent needle from
    # n increasing starts read n characters, not n^2 / 2.
    n = 10_000
    scanner = Scanner("a" * n)
    with counting_work() as work:
        assert all(scanner.find("<answer>", i) == -1 for i in range(n))
    assert work.chars == n
    scanner = Scanner("ab" * n)
    with counting_work() as work:
        found = [scanner.find("b", i) for i in range(0, 2 * n, 2)]
    assert found == list(range(1, 2 * n, 2)) and work.chars == 2 * n


@pytest.mark.parametrize("tag", ["think", "answer"])
def test_unclosed_tags_in_bulk(tag):
    text = f"<{tag}>" * 50_000
    assert parsing.tag_spans(text, tag) == []
    assert _work(lambda p, c: parsing.extract_tag(c, tag), text) <= 2 * len(text)
