"""Tiny synthetic tasks for the task domains of a mixed RL run (DeepSeek-R1 §4.1).

The paper's final RL stage draws prompts from math, code, STEM multiple choice, logic and general
(no verifier: reward models score them). :mod:`r1jax.data.synthetic` has math (arithmetic,
Countdown); this module adds one tiny generator per other domain, each with the same interface
(``sample(rng) -> (canonical_key, example_fields)``) so :class:`~r1jax.data.synthetic.SyntheticDataset`
gives them deterministic examples and a hash-partitioned held-out split:

===============  =============================================  ===================  ==============
task             problem                                        verifier             vocabulary
===============  =============================================  ===================  ==============
``logic``        ordering puzzle: who is tallest / 2nd oldest   ``exact_match``      tiny base
``stem_choice``  a quantity question with options (a)-(d)       ``multiple_choice``  tiny base
``code``         write ``f(x)`` returning an expression         ``code_tests``       printable ASCII
``general``      a plain instruction ("write a line about ...") none (reward model)  tiny base
===============  =============================================  ===================  ==============

"tiny base": every prompt, answer and solution is written with the 45 characters of the tiny CPU
base model's tokenizer (``r1jax/assets/tiny_base``: lower-case letters, digits, blank and
``()*+,-.=``). The code task's answer (a Python function: ``:``, a newline, indentation) needs a
larger vocabulary, e.g. :func:`~r1jax.data.tokenizer.build_char_tokenizer`'s printable ASCII, or a
real tokenizer; its prompt alone fits the tiny one.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import numpy as np

__all__ = [
    "LogicTask",
    "StemChoiceTask",
    "CodeTask",
    "GeneralTask",
    "TINY_BASE_CHARS",
    "logic_orders",
]

TINY_BASE_CHARS = " ()*+,-.0123456789=abcdefghijklmnopqrstuvwxyz"
"""The single characters of the tiny base model's tokenizer (``r1jax/assets/tiny_base``)."""

_NAMES = ("ann", "bob", "cal", "dan", "eve", "fay", "gus", "hal", "ivy", "jon", "kim", "lee")
# (comparative "more", comparative "less", superlative "most", superlative "least")
_RELATIONS = (
    ("taller", "shorter", "tallest", "shortest"),
    ("older", "younger", "oldest", "youngest"),
    ("faster", "slower", "fastest", "slowest"),
    ("heavier", "lighter", "heaviest", "lightest"),
)
_ORDINALS = ("", "second ", "third ", "fourth ", "fifth ", "sixth ", "seventh ", "eighth ", "ninth ", "tenth ",
             "eleventh ", "twelfth ")


# -------------------------------------------------------------------------------------------- logic


def logic_orders(names: Sequence[str], facts: Sequence[tuple[str, str]]) -> list[tuple[str, ...]]:
    """Every order of ``names`` (first = most) consistent with ``facts`` ((x, y): x is more than y).

    Brute force over the permutations: the check that a puzzle has exactly one answer.
    """
    out = []
    for perm in itertools.permutations(names):
        rank = {n: i for i, n in enumerate(perm)}
        if all(rank[x] < rank[y] for x, y in facts):
            out.append(perm)
    return out


@dataclasses.dataclass(frozen=True)
class LogicTask:
    """Ordering puzzles: ``people`` people, ``people - 1`` comparisons, one question.

    A random order of distinct names is drawn; the comparisons are the adjacent pairs of that order
    (so exactly one order is consistent with them), shuffled, each phrased either way round ("ann
    is taller than bob" or "bob is shorter than ann"). The question asks for the person at a random
    rank from the top or the bottom ("who is the second tallest")::

        {"prompt": "bob is shorter than ann. cal is taller than ann. who is the tallest",
         "reference": "cal", "answer": "cal",
         "solution": "from tallest to shortest the order is cal, ann, bob. so the tallest is cal"}

    Attributes:
      people: the difficulty: how many people (2..12).
    """

    people: int = 3
    name: str = "logic"

    def __post_init__(self):
        if not 2 <= self.people <= len(_NAMES):
            raise ValueError(f"LogicTask.people must be in 2..{len(_NAMES)}, got {self.people}")

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        n = self.people
        order = [_NAMES[int(i)] for i in rng.choice(len(_NAMES), size=n, replace=False)]
        more, less, most, least = _RELATIONS[int(rng.integers(len(_RELATIONS)))]
        pairs = [(order[i], order[i + 1]) for i in range(n - 1)]
        sentences = []
        for k in rng.permutation(n - 1):
            x, y = pairs[int(k)]
            sentences.append(f"{x} is {more} than {y}" if rng.integers(2) else f"{y} is {less} than {x}")
        rank = int(rng.integers(n))
        from_top = bool(rng.integers(2))
        word = most if from_top else least
        target = order[rank] if from_top else order[n - 1 - rank]
        question = f"who is the {_ORDINALS[rank]}{word}"
        listed = order if from_top else order[::-1]
        by = f"{word} to {least if from_top else most}"
        key = f"{'>'.join(order)}|{more}|{question}"  # the puzzle, whatever the phrasing and fact order
        return key, {
            "prompt": ". ".join(sentences) + ". " + question,
            "reference": target,
            "answer": target,
            "solution": f"from {by} the order is {', '.join(listed)}. so the {_ORDINALS[rank]}{word} is {target}",
        }


# -------------------------------------------------------------------------------------------- STEM choice

_LETTERS = "abcd"


def _stem_question(kind: int, rng: np.random.Generator, hi: int) -> tuple[str, int, str]:
    """(question, answer, worked solution) of question kind ``kind`` with operands in 2..hi."""
    a, b = int(rng.integers(2, hi + 1)), int(rng.integers(2, hi + 1))
    if kind == 0:
        return (f"a car goes {a * b} km in {b} h. what is its speed in km per h", a,
                f"speed is distance over time, {a * b} over {b} = {a}")
    if kind == 1:
        return (f"a field is {a} m by {b} m. what is its area in square m", a * b,
                f"area is length times width, {a} * {b} = {a * b}")
    if kind == 2:
        return (f"a field is {a} m by {b} m. what is its perimeter in m", 2 * (a + b),
                f"perimeter is twice length plus width, 2 * ({a} + {b}) = {2 * (a + b)}")
    if kind == 3:
        return (f"a current of {a} a flows through a resistance of {b} ohm. what is the voltage in v", a * b,
                f"voltage is current times resistance, {a} * {b} = {a * b}")
    return (f"{a} boxes weigh {b} kg each. what is their total mass in kg", a * b,
            f"total mass is count times mass, {a} * {b} = {a * b}")


@dataclasses.dataclass(frozen=True)
class StemChoiceTask:
    """STEM multiple choice: a quantity question (speed, area, perimeter, voltage, mass) with 4 options.

    The options are the answer and three distinct positive distractors near it, in random order,
    written ``(a) .. (b) .. (c) .. (d) ..``; the reference is the correct letter, upper case, as
    :func:`r1jax.rewards.multiple_choice` expects (which also accepts a lone lower-case letter as the
    whole answer, so the tiny vocabulary can write it)::

        {"prompt": "a field is 12 m by 5 m. what is its area in square m (a) 62 (b) 60 (c) 17 (d) 55",
         "reference": "B", "answer": "b", "solution": "area is length times width, 12 * 5 = 60. so (b)"}

    Attributes:
      digits: the difficulty: operands are drawn from 2..10^digits - 1 (2..9 for 1).
    """

    digits: int = 1
    name: str = "stem_choice"

    def __post_init__(self):
        if not 1 <= self.digits <= 6:
            raise ValueError(f"StemChoiceTask.digits must be in 1..6, got {self.digits}")

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        hi = 10**self.digits - 1
        question, answer, work = _stem_question(int(rng.integers(5)), rng, max(hi, 3))
        spread = max(3, answer // 5)
        options = {answer}
        while len(options) < 4:
            d = int(rng.integers(1, spread + 1)) * (1 if rng.integers(2) else -1)
            if answer + d > 0:
                options.add(answer + d)
        shown = [int(v) for v in rng.permutation(sorted(options))]
        letter = _LETTERS[shown.index(answer)]
        choices = " ".join(f"({c}) {v}" for c, v in zip(_LETTERS, shown))
        return f"{question}|{shown}", {
            "prompt": f"{question} {choices}",
            "reference": letter.upper(),
            "answer": letter,
            "solution": f"{work}. so ({letter})",
        }


# -------------------------------------------------------------------------------------------- code


def _code_expression(rng: np.random.Generator, ops: int) -> str:
    """A random integer expression in ``x`` with ``ops`` binary operators (+ - *), no parentheses."""
    terms = ["x" if rng.integers(2) else str(int(rng.integers(1, 10)))]
    for _ in range(ops):
        terms.append("+-*"[int(rng.integers(3))])
        terms.append("x" if rng.integers(3) == 0 else str(int(rng.integers(1, 10))))
    if "x" not in terms:
        terms[0] = "x"
    return "".join(terms)


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """Code: write a Python function ``f(x)`` returning an integer expression; checked by running tests.

    The reference is the ``{"tests": [...]}`` of :func:`r1jax.rewards.code_tests`: four asserts
    ``f(v) == <value>`` at random small arguments (literal expected values, computed here)::

        {"prompt": "write a python function f(x) that returns 3*x+1",
         "reference": {"tests": ["assert f(2) == 7", ...]},
         "answer": "```python\\ndef f(x):\\n    return 3*x+1\\n```", "solution": "f(x) is 3*x+1"}

    The prompt fits the tiny base vocabulary; the answer needs ``:`` and newlines (printable ASCII).

    Attributes:
      ops: the difficulty: binary operators in the expression (1..6).
    """

    ops: int = 1
    name: str = "code"

    def __post_init__(self):
        if not 1 <= self.ops <= 6:
            raise ValueError(f"CodeTask.ops must be in 1..6, got {self.ops}")

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        expr = _code_expression(rng, self.ops)
        args = [int(v) for v in rng.choice(np.arange(-9, 10), size=4, replace=False)]
        tests = [f"assert f({v}) == {eval(expr, {'__builtins__': {}}, {'x': v})}" for v in args]  # noqa: S307
        return expr, {
            "prompt": f"write a python function f(x) that returns {expr}",
            "reference": {"tests": tests},
            "answer": f"```python\ndef f(x):\n    return {expr}\n```",
            "solution": f"f(x) is {expr}",
        }


# -------------------------------------------------------------------------------------------- general

_GENERAL = (
    ("write one short line about {}", ("the sea", "a cat", "the moon", "rain", "a city", "the sun", "snow",
                                       "a river", "a tree", "the wind")),
    ("give a short tip for {}", ("sleeping well", "learning maths", "cooking rice", "running", "reading",
                                 "saving money", "writing code", "making friends")),
    ("name three {}", ("colours", "fruits", "animals", "planets", "tools", "countries", "sports", "trees")),
    ("say hello to {} in a friendly way", _NAMES),
)
_AUDIENCES = ("", " for a child", " for a friend", " for a teacher", " for a sailor", " for a cook",
              " in a few words", " with a smile")


@dataclasses.dataclass(frozen=True)
class GeneralTask:
    """General prompts: plain instructions with no checkable answer (a reward model scores them).

    ``reference`` is None; ``answer`` and ``solution`` are empty (no SFT target). In a mixture this
    task needs ``verifier: none`` (:mod:`r1jax.data.mixture`)::

        {"prompt": "write one short line about the sea", "reference": None, "answer": "", "solution": ""}
    """

    name: str = "general"

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        form, topics = _GENERAL[int(rng.integers(len(_GENERAL)))]
        prompt = form.format(topics[int(rng.integers(len(topics)))]) + _AUDIENCES[int(rng.integers(len(_AUDIENCES)))]
        return prompt, {"prompt": prompt, "reference": None, "answer": "", "solution": ""}
