"""Rule-based rewards, called directly (main thread): known-correct and known-wrong cases."""

import fractions

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.rewards import (
    countdown,
    detect_language,
    format_lenient,
    format_strict,
    get_reward,
    language_consistency,
    language_consistency_en,
    language_consistency_zh,
    list_rewards,
    math_accuracy,
    multiple_choice,
    register_reward,
)
from r1jax.rewards.countdown import CountdownError, evaluate_countdown_expression
from r1jax.rewards.language import count_words_by_language
from r1jax.rewards.parsing import extract_boxed, extract_code, extract_final_answer, full_response


# ------------------------------------------------------------------------------------ parsing


def test_extract_boxed_nested_and_last():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{\sqrt{2}}} done") == r"\frac{1}{\sqrt{2}}"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces do not close the box
    assert extract_boxed(r"\boxed{a^{b^{c}}}") == "a^{b^{c}}"
    assert extract_boxed(r"so \boxed 7.") == "7."
    assert extract_boxed(r"\fbox{3}") == "3"
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed("no box here") is None


def test_final_answer_prefers_answer_block():
    c = r"<think>maybe \boxed{3}</think> <answer>It is \boxed{4}.</answer>"
    assert extract_final_answer("", c) == "4"
    assert extract_final_answer("", "<think>x</think><answer> 12 </answer>") == "12"
    assert extract_final_answer("", r"work... so \boxed{5}") == "5"
    assert extract_final_answer("", "no answer at all") is None


def test_full_response_restores_prefilled_think():
    assert full_response("Assistant: <think>", " r </think> <answer>1</answer>").startswith("<think>")
    assert full_response("Assistant:", "<think>r</think>") == "<think>r</think>"


def test_extract_code_order():
    c = "```python\nprint(1)\n```\n<answer>\n```python\nprint(2)\n```\n</answer>"
    assert extract_code("", c).strip() == "print(2)"
    assert extract_code("", "<answer>print(3)</answer>") == "print(3)"
    assert extract_code("", "text ```py\nprint(4)\n``` and ```python\nprint(5)\n```").strip() == "print(5)"
    assert extract_code("", "```js\nconsole.log(1)\n```") is None
    assert extract_code("", "nothing") is None


# ------------------------------------------------------------------------------------ math


@pytest.mark.parametrize(
    "answer, reference",
    [
        (r"\boxed{0.5}", "1/2"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}"),
        (r"<answer>1/2</answer>", "$0.5$"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{5\text{ cm}}", "5"),
        (r"<answer>5 cm</answer>", "5"),
        (r"<answer>42 dollars</answer>", "42"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{x = 3}", "3"),
        (r"\boxed{\{2, 1\}}", r"\{1, 2\}"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
        (r"\boxed{1+x}", "x+1"),
        (r"\boxed{0.75}", fractions.Fraction(3, 4)),
        (r"\boxed{7}", 7),
        (r"\boxed{7}", {"answer": "7"}),
    ],
)
def test_math_accuracy_equivalent_forms(answer, reference):
    assert math_accuracy("", "<think>reasoning</think> " + answer, reference) == 1.0


@pytest.mark.parametrize(
    "answer, reference",
    [
        (r"\boxed{0.6}", "1/2"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        (r"\boxed{2\sqrt{2}}", "2"),  # the whole box, not its first number
        (r"\boxed{2^{10}}", "2"),
        (r"\boxed{(2, 1)}", "(1, 2)"),
        (r"\boxed{x + 2}", "x+1"),
        ("the answer is forty-two", "42"),
        ("", "42"),
    ],
)
def test_math_accuracy_wrong(answer, reference):
    assert math_accuracy("", answer, reference) == 0.0


def test_math_accuracy_uses_last_box_and_answer_block():
    assert math_accuracy("", r"\boxed{3} no wait \boxed{4}", "4") == 1.0
    assert math_accuracy("", r"\boxed{4} no wait \boxed{3}", "4") == 0.0
    assert math_accuracy("", r"<think>\boxed{4}</think><answer>3</answer>", "4") == 0.0


def test_math_accuracy_bad_reference_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        math_accuracy("", r"\boxed{1}", "  ")
    with pytest.raises(ValueError, match="'answer'"):
        math_accuracy("", r"\boxed{1}", {"solution": "1"})
    with pytest.raises(TypeError, match="math reference"):
        math_accuracy("", "nothing", [1])


# ------------------------------------------------------------------------------------ format

GOOD = "<think> I add 2 and 2. </think> <answer> 4 </answer>"


@pytest.mark.parametrize(
    "completion",
    [GOOD, "<think>\nr\n</think>\n\n<answer>4</answer>\n", "  <think>r</think><answer>4</answer>  "],
)
def test_format_strict_accepts(completion):
    assert format_strict("", completion) == 1.0
    assert format_lenient("", completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "<think> r </think>",  # no answer
        "<answer>4</answer>",  # no think
        "<think> r <answer>4</answer>",  # think never closed
        "<think> r </think> <answer>4",  # answer never closed
        "<answer>4</answer> <think> r </think>",  # wrong order
        "Sure! <think> r </think> <answer>4</answer>",  # text before
        "<think> r </think> <answer>4</answer> Hope this helps",  # text after
        "<think> r </think> between <answer>4</answer>",  # text between
        "<think> r </think> <think> s </think> <answer>4</answer>",  # two thinks
        "<think> r </think> <answer>4</answer><answer>5</answer>",  # two answers
        "<think> r <think> s </think> <answer>4</answer>",  # nested/unbalanced tag
        "<think> r </think> <answer>   </answer>",  # blank answer
        "<think>  </think> <answer>4</answer>",  # blank reasoning
        "<Think> r </Think> <answer>4</answer>",  # wrong case
    ],
)
def test_format_strict_rejects_malformed(completion):
    assert format_strict("", completion) == 0.0


def test_format_lenient_tolerates_surrounding_text_but_not_missing_parts():
    assert format_lenient("", "Sure! <think> r </think> so <answer>4</answer> bye") == 1.0
    assert format_lenient("", "<think> r </think> <think>s</think> <answer>4</answer>") == 1.0
    assert format_lenient("", "<answer>4</answer> <think> r </think>") == 0.0
    assert format_lenient("", "<think> r </think> <answer>  </answer>") == 0.0
    assert format_lenient("", "<think> r <answer>4</answer>") == 0.0


def test_format_with_prefilled_think_in_prompt():
    prompt = "User: 2+2? Assistant: <think>"
    assert format_strict(prompt, " I add. </think> <answer> 4 </answer>") == 1.0
    assert format_strict("User: 2+2? Assistant:", " I add. </think> <answer> 4 </answer>") == 0.0


# ------------------------------------------------------------------------------------ language


def test_word_counting_rules():
    counts = count_words_by_language("Let me compute 两个数的和 = 42, then $\\frac{a}{b}$ \\cdot x")
    assert counts["en"] == 5  # Let, me, compute, then, x (\\frac{a}{b} in $..$ and \\cdot are removed)
    assert counts["zh"] == 5  # one word per ideograph
    assert sum(counts.values()) == 10
    assert count_words_by_language("Привет мир; こんにちは")["ru"] == 2
    assert count_words_by_language("こんにちは")["ja"] == 5
    assert count_words_by_language("1 + 2 = 3 ... !!")["en"] == 0


def test_language_consistency_mixed_text():
    prompt_zh = "计算两个数的和：2 加 3 等于多少？"
    mixed = "<think>Let me compute 两个数的和</think><answer>5</answer>"
    assert language_consistency(prompt_zh, mixed) == pytest.approx(5 / 8)
    assert language_consistency("What is 2 plus 3?", mixed) == pytest.approx(3 / 8)
    assert language_consistency_zh("", mixed) == pytest.approx(5 / 8)
    assert language_consistency_en("", mixed) == pytest.approx(3 / 8)


def test_language_consistency_pure_and_degenerate():
    pure_zh = "<think>先算二加三，结果是五。</think><answer>5</answer>"
    assert language_consistency("二加三等于几？", pure_zh) == 1.0
    assert language_consistency("What is two plus three?", pure_zh) == 0.0
    assert language_consistency("What is 2+3?", "<think>2 + 3 = 5</think><answer>5</answer>") == 1.0  # no words
    assert language_consistency("What is 2+3?", "<answer>5</answer>") == 0.0  # no chain of thought
    # The prompt's words decide the target; a reference can override it.
    assert language_consistency("What is 2+3?", pure_zh, {"language": "zh"}) == 1.0
    with pytest.raises(ValueError, match="language"):
        language_consistency("x", pure_zh, {"language": 3})


def test_detect_language():
    assert detect_language("What is the sum of two numbers?") == "en"
    assert detect_language("两个数的和是多少？") == "zh"
    assert detect_language("1 + 1") is None


# ------------------------------------------------------------------------------------ countdown

REF = {"target": 24, "numbers": [4, 7, 8, 8]}


@pytest.mark.parametrize(
    "answer",
    [
        "(7 - 8 / 8) * 4",
        "4 * (7 - 8 / 8)",
        "(7-8/8)*4 = 24",
        "(7 − 8 ÷ 8) × 4",
        "$(7 - 8/8) \u00d7 4$",
    ],
)
def test_countdown_correct(answer):
    assert countdown("", f"<think>try</think> <answer>{answer}</answer>", REF) == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        "(7 - 8 / 8) * 3",  # a number not given
        "8 + 8 + 8",  # 8 used three times, 4 and 7 unused
        "(7 - 8 / 8) * 4 + 0",  # an extra number
        "4 * 7 - 8 + 8 - 4",  # 4 twice
        "(8 + 8) + 7 + 4",  # all numbers, wrong value (27)
        "4 * 8 - 8 / (7 - 7)",  # division by zero
        "8 / (8 - 8) * 4 + 7",  # division by zero with the right multiset
        "-(7 - 8 / 8) * -4",  # unary minus is not an operation of the game
        "(7 - 8 / 8) ** 1 * 4",  # power
        "__import__('os').system('true')",  # names / calls
        "24",
        "",
    ],
)
def test_countdown_wrong(answer):
    assert countdown("", f"<answer>{answer}</answer>", REF) == 0.0


def test_countdown_exact_fractions():
    # 6/4*2 = 3 exactly; float arithmetic would be fine here but 1/3*3 shows exactness.
    assert countdown("", "<answer>1 / 3 * 3</answer>", {"target": 1, "numbers": [1, 3, 3]}) == 1.0
    value, literals = evaluate_countdown_expression("(1 + 2) / 3 * 4")
    assert value == fractions.Fraction(4) and literals == [1, 2, 3, 4]
    with pytest.raises(CountdownError, match="division by zero"):
        evaluate_countdown_expression("1 / (2 - 2)")
    with pytest.raises(CountdownError, match="not allowed"):
        evaluate_countdown_expression("(lambda: 1)()")
    with pytest.raises(CountdownError, match="longer"):
        evaluate_countdown_expression("1+" * 400 + "1")


def test_countdown_bad_reference():
    with pytest.raises(ValueError, match="target"):
        countdown("", "<answer>1</answer>", {"numbers": [1]})
    with pytest.raises(TypeError, match="numbers"):
        countdown("", "<answer>1</answer>", {"target": 1, "numbers": "1"})


# ------------------------------------------------------------------------------------ multiple choice


@pytest.mark.parametrize(
    "completion",
    [
        "<think>...</think><answer>C</answer>",
        "<answer>(C)</answer>",
        "<answer>C) 42 m/s</answer>",
        "<answer>The answer is (C).</answer>",
        r"so \boxed{C}",
        r"\boxed{\text{(C)}}",
        "Options A and B fail. Therefore, the answer is (C).",
        "Answer: **C**",
        "<answer>c</answer>",
    ],
)
def test_multiple_choice_correct(completion):
    assert multiple_choice("", completion, "C") == 1.0
    assert multiple_choice("", completion, {"answer": "C"}) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>B</answer>",
        "<answer>A total of 5</answer>",  # "A" here is an article, not a choice
        "The answer is a tricky one",
        "I cannot decide",
        r"\boxed{B} but the answer is C? <answer>D</answer>",  # the answer block wins
    ],
)
def test_multiple_choice_wrong(completion):
    assert multiple_choice("", completion, "C") == 0.0


def test_multiple_choice_bad_reference():
    with pytest.raises(ValueError, match="one letter"):
        multiple_choice("", "<answer>C</answer>", "CD")
    with pytest.raises(ValueError, match="one letter"):
        multiple_choice("", "<answer>C</answer>", "Z")


# ------------------------------------------------------------------------------------ registry


def test_registry_has_builtins_with_metadata():
    rewards = list_rewards()
    for name in ("math_accuracy", "format_strict", "format_lenient", "language_consistency", "countdown",
                 "multiple_choice", "code_tests", "helpfulness", "safety"):
        assert name in rewards and rewards[name].description
    assert get_reward("math_accuracy").fn is math_accuracy
    assert get_reward("helpfulness").kind == "external" and get_reward("helpfulness").fn is None
    with pytest.raises(KeyError, match="unknown reward 'nope'"):
        get_reward("nope")


def test_register_rejects_unpicklable_and_duplicates():
    with pytest.raises(TypeError, match="picklable"):
        register_reward("lambda_reward", lambda p, c, r: 1.0, description="x")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("math_accuracy", math_accuracy, description="again")


# ------------------------------------------------------------------------------------ properties

@st.composite
def _expression(draw):
    """A random fully parenthesised expression over 2-5 numbers, with its value computed on the tree."""
    numbers = draw(st.lists(st.integers(0, 30), min_size=2, max_size=5))
    nodes = [(str(n), fractions.Fraction(n)) for n in numbers]
    while len(nodes) > 1:
        i = draw(st.integers(0, len(nodes) - 2))
        (ls, lv), (rs, rv) = nodes[i], nodes[i + 1]
        op = draw(st.sampled_from("+-*/"))
        if op == "/" and rv == 0:
            value = None
        elif lv is None or rv is None:
            value = None
        else:
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
        nodes[i : i + 2] = [(f"({ls} {op} {rs})", value)]
    return nodes[0][0], nodes[0][1], numbers


@settings(max_examples=25, deadline=None)
@given(_expression())
def test_countdown_property_exact_value_of_any_legal_expression(case):
    expr, value, numbers = case
    if value is None:  # a division by zero somewhere in the tree
        assert countdown("", f"<answer>{expr}</answer>", {"target": 0, "numbers": numbers}) == 0.0
        return
    assert countdown("", f"<answer>{expr}</answer>", {"target": value, "numbers": numbers}) == 1.0
    assert countdown("", f"<answer>{expr}</answer>", {"target": value + 1, "numbers": numbers}) == 0.0
    assert countdown("", f"<answer>{expr}</answer>", {"target": value, "numbers": numbers + [1]}) == 0.0


_TEXT = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=25, deadline=None)
@given(_TEXT.filter(str.strip), _TEXT.filter(str.strip), st.sampled_from(["", " ", "\n", "\n\n"]),
       st.sampled_from(["<think>", "</think>", "<answer>", "</answer>"]), st.integers(0, 3))
def test_format_property(reasoning, answer, sep, extra_tag, where):
    good = f"<think>{reasoning}</think>{sep}<answer>{answer}</answer>"
    assert format_strict("", good) == 1.0 and format_lenient("", good) == 1.0
    cut = [0, len("<think>"), len(good) - len("</answer>"), len(good)][where]
    assert format_strict("", good[:cut] + extra_tag + good[cut:]) == 0.0  # one tag too many, anywhere


_INTEGER_TEXT = st.builds(lambda sign, zeros, digits: sign + "0" * zeros + digits,
                          st.sampled_from(["", "+", "-"]), st.integers(0, 2),
                          st.integers(0, 10**12).map(str) | st.integers(0, 99).map(str))


@settings(max_examples=60, deadline=None)
@given(reference=_INTEGER_TEXT, answer=_INTEGER_TEXT)
def test_two_integers_are_compared_as_math_verify_compares_them(reference, answer):
    """math_answers_equal decides integer pairs without parsing; its verdict is math-verify's own."""
    from r1jax.rewards.math_accuracy import math_answers_equal
    from math_verify import parse, verify

    want = bool(verify(parse(f"${reference}$", parsing_timeout=None), parse(f"${answer}$", parsing_timeout=None),
                       timeout_seconds=None))
    assert math_answers_equal(reference, answer) is want
    assert math_answers_equal(reference, f" {answer} ") is want
