"""The tiny per-domain tasks (logic, STEM multiple choice, code, general) and their verifiers."""

import json
import pathlib

import numpy as np
import pytest

from r1jax.config import ConfigError, from_dict
from r1jax.data.domains import TINY_BASE_CHARS, CodeTask, GeneralTask, LogicTask, StemChoiceTask, logic_orders
from r1jax.data.factory import DataConfig, make_dataset
from r1jax.data.synthetic import SyntheticDataset
from r1jax.rewards import code_tests, exact_match, get_reward, multiple_choice

TINY_BASE = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"

_MORE = {"taller": "tallest", "older": "oldest", "faster": "fastest", "heavier": "heaviest"}
_LESS = {"shorter": "shortest", "younger": "youngest", "slower": "slowest", "lighter": "lightest"}
_ORDINAL = {"": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "sixth": 5, "seventh": 6, "eighth": 7,
            "ninth": 8, "tenth": 9, "eleventh": 10, "twelfth": 11}


def _solve_logic(prompt: str) -> list[str]:
    """Every answer to a logic prompt consistent with its facts, read back from the text alone."""
    *facts_text, question = prompt.split(". ")
    facts, names = [], set()
    for sentence in facts_text:
        x, _, rel, _, y = sentence.split(" ")
        facts.append((x, y) if rel in _MORE else (y, x))  # (more, less)
        names |= {x, y}
    words = question.split(" ")[3:]  # "who is the [ordinal] word"
    ordinal, word = (words[0], words[1]) if len(words) == 2 else ("", words[0])
    rank = _ORDINAL[ordinal]
    answers = set()
    for order in logic_orders(sorted(names), facts):
        answers.add(order[rank] if word in _MORE.values() else order[len(order) - 1 - rank])
    return sorted(answers)


def _answer(text: str) -> str:
    return f"<think>let me see</think> <answer>{text}</answer>"


# -------------------------------------------------------------------------------------------- logic


def test_logic_generator_is_deterministic():
    a = SyntheticDataset(LogicTask(people=4), size=30, seed=3).examples()
    b = SyntheticDataset(LogicTask(people=4), size=30, seed=3).examples()
    c = SyntheticDataset(LogicTask(people=4), size=30, seed=4).examples()
    assert a == b
    assert [e["prompt"] for e in a] != [e["prompt"] for e in c]


@pytest.mark.parametrize("people", [2, 3, 5, 7])
def test_logic_puzzles_have_exactly_one_answer(people):
    ds = SyntheticDataset(LogicTask(people=people), size=40, seed=1)
    for ex in ds.examples():
        assert _solve_logic(ex["prompt"]) == [ex["reference"]], ex["prompt"]
        assert ex["prompt"].count(" than ") == people - 1
        assert ex["answer"] == ex["reference"] and ex["solution"].endswith(ex["reference"])


def test_logic_order_is_determined_by_the_facts():
    assert logic_orders(["a", "b", "c"], [("a", "b"), ("b", "c")]) == [("a", "b", "c")]
    assert len(logic_orders(["a", "b", "c"], [("a", "b")])) == 3  # c anywhere: not a valid puzzle


def test_logic_task_bounds():
    with pytest.raises(ValueError, match="people must be in 2..12"):
        LogicTask(people=1)
    with pytest.raises(ConfigError, match="difficulty: logic puzzles have 2..12 people, got 13"):
        from_dict(DataConfig, {"task": "logic", "difficulty": 13})


def test_exact_match_verifier():
    assert get_reward("exact_match").accuracy
    assert exact_match("", _answer("cal"), "cal") == 1.0
    assert exact_match("", _answer(" Cal. "), "cal") == 1.0
    assert exact_match("", "so it is \\boxed{\\text{cal}}", {"answer": "cal"}) == 1.0
    assert exact_match("", _answer("bob"), "cal") == 0.0
    assert exact_match("", _answer("it is cal"), "cal") == 0.0
    assert exact_match("", "cal", "cal") == 0.0  # no answer block, no box: nothing to read
    with pytest.raises(ValueError, match="non-blank string"):
        exact_match("", _answer("cal"), None)


# -------------------------------------------------------------------------------------------- stem, code, general


def test_stem_choice_reference_is_the_right_option():
    for ex in SyntheticDataset(StemChoiceTask(digits=2), size=40, seed=0).examples():
        options = ex["prompt"].split(" (")[1:]
        values = [int(o.split(") ")[1]) for o in options]
        assert [o[0] for o in options] == list("abcd") and len(set(values)) == 4 and min(values) > 0
        letter = ex["reference"]
        assert multiple_choice(ex["prompt"], _answer(ex["answer"]), letter) == 1.0
        for other in "abcd".replace(letter.lower(), ""):
            assert multiple_choice(ex["prompt"], _answer(other), letter) == 0.0
        worked = ex["solution"].rsplit("= ", 1)[1].split(".")[0]  # "... = 60. so (b)"
        assert worked == str(values["ABCD".index(letter)])


def test_code_task_reference_passes_and_wrong_code_fails():
    ex = SyntheticDataset(CodeTask(ops=2), size=1, seed=5)[0]
    assert len(ex["reference"]["tests"]) == 4 and ex["prompt"].startswith("write a python function f(x)")
    assert code_tests(ex["prompt"], _answer(ex["answer"]), ex["reference"]) == 1.0
    wrong = "```python\ndef f(x):\n    return 12345\n```"
    assert code_tests(ex["prompt"], _answer(wrong), ex["reference"]) == 0.0


def test_code_task_expected_values_match_python():
    for ex in SyntheticDataset(CodeTask(ops=3), size=20, seed=2).examples():
        expr = ex["prompt"].rsplit(" ", 1)[1]
        for test in ex["reference"]["tests"]:
            call, expected = test.removeprefix("assert ").split(" == ")
            x = int(call[2:-1])
            assert eval(expr, {}, {"x": x}) == int(expected)  # noqa: S307 - our own generated expression


def test_general_task_has_no_reference_and_a_heldout_split():
    train = SyntheticDataset(GeneralTask(), size=50, seed=0).examples()
    held = SyntheticDataset(GeneralTask(), split="eval", size=10, seed=0, heldout_fraction=0.1).examples()
    assert all(e["reference"] is None and e["prompt"] for e in train + held)
    assert {e["prompt"] for e in train}.isdisjoint({e["prompt"] for e in held})


@pytest.mark.parametrize("task", ["logic", "stem_choice", "code", "general"])
def test_each_task_builds_disjoint_splits_from_data_config(task):
    cfg = from_dict(DataConfig, {"task": task, "num_train": 60, "num_eval": 10, "difficulty": 3})
    train, held = make_dataset(cfg), make_dataset(cfg, "eval")
    assert len(train) == 60 and len(held) == 10 and train[0]["task"] == task
    assert {e["prompt"] for e in train.examples()}.isdisjoint({e["prompt"] for e in held.examples()})


def test_tiny_vocabulary():
    """Every text of the tiny-base tasks is written with the tiny base tokenizer's characters."""
    vocab = json.loads((TINY_BASE / "tokenizer.json").read_text())["model"]["vocab"]
    assert set(TINY_BASE_CHARS) == {k for k in vocab if len(k) == 1}
    for task in (LogicTask(people=6), StemChoiceTask(digits=3), GeneralTask()):
        for ex in SyntheticDataset(task, size=200, seed=0).examples():
            text = ex["prompt"] + ex["answer"] + ex["solution"]
            assert set(text) <= set(TINY_BASE_CHARS), (task.name, sorted(set(text) - set(TINY_BASE_CHARS)))
    code = SyntheticDataset(CodeTask(ops=4), size=50, seed=0).examples()
    assert all(set(ex["prompt"]) <= set(TINY_BASE_CHARS) for ex in code)
    assert not set(code[0]["answer"]) <= set(TINY_BASE_CHARS)  # documented: the code answer needs ASCII


def test_generators_use_only_their_rng():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert LogicTask(people=5).sample(rng_a) == LogicTask(people=5).sample(rng_b)
