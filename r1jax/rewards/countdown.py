"""Countdown reward (TinyZero-style): reach the target with the given numbers and + - * /.

The policy answers with an arithmetic expression inside ``<answer>...</answer>`` (without an answer
block: the last line of the completion). The expression may end with ``= <number>``, which is
ignored (the left-hand side is what gets evaluated). It scores 1.0 when

- it parses as an expression made only of non-negative integer literals, binary ``+ - * /``
  and parentheses (``×``, ``÷``, ``−`` and ``x`` between numbers are read as ``*``, ``/``, ``-``);
  no unary minus, no powers, no names, no calls, no floats;
- the multiset of its integer literals equals the multiset of the given numbers (each number used
  exactly once, all of them used);
- its exact value (``fractions.Fraction`` arithmetic, so ``6/4*2 = 3`` holds exactly) equals the
  target.

Anything else, including a division by zero, scores 0.0. The expression is walked with ``ast``
against a whitelist; nothing is ``eval``-ed. Expressions longer than 512 characters score 0.0
(a legal answer with a handful of numbers is far shorter).

Reference: a mapping ``{"target": int, "numbers": [int, ...]}`` (the format of
:func:`r1jax.data.synthetic` Countdown examples).

TinyZero gives 0.1 to a well-formed but wrong answer; here that partial credit is a matter of
composition (add ``format_strict`` with weight 0.1), not of this function.

References:
  J. Pan et al., TinyZero (2025), github.com/Jiayi-Pan/TinyZero, countdown reward.
"""

from __future__ import annotations

import ast
import collections
import fractions
import re
from typing import Any, Mapping

from r1jax.rewards.parsing import extract_tag, full_response
from r1jax.rewards.scan import single_pass

__all__ = ["countdown", "evaluate_countdown_expression", "CountdownError"]

_MAX_LEN = 512
# "x" between numbers: single-pass (r1jax.rewards.scan), possessive blank runs.
_TIMES = re.compile(r"(?<=[\d)])\s*+[xX]\s*+(?=[\d(])")
_TRANSLATE = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-", "·": "*"})


class CountdownError(ValueError):
    """The expression is not a legal Countdown expression."""


def _check_reference(reference: Any) -> tuple[fractions.Fraction, list[int]]:
    if not isinstance(reference, Mapping) or "target" not in reference or "numbers" not in reference:
        raise ValueError(f"countdown reference must be a mapping with 'target' and 'numbers', got {reference!r}")
    target, nums = reference["target"], reference["numbers"]
    if isinstance(target, bool) or not isinstance(target, (int, fractions.Fraction)):
        raise TypeError(f"countdown reference 'target' must be an integer, got {target!r}")
    if not isinstance(nums, (list, tuple)) or not all(type(n) is int and n >= 0 for n in nums):
        raise TypeError(f"countdown reference 'numbers' must be a list of non-negative integers, got {nums!r}")
    return fractions.Fraction(target), list(nums)


def evaluate_countdown_expression(expr: str) -> tuple[fractions.Fraction, list[int]]:
    """Exact value and integer literals of a Countdown expression.

    Args:
      expr: e.g. ``"(25 - 5) * 3 / 4"``.

    Returns:
      (value as a Fraction, the literals in order of appearance).

    Raises:
      CountdownError: not a legal expression (syntax, a forbidden node, division by zero, too long).
    """
    expr = expr.translate(_TRANSLATE)
    expr = _TIMES.sub("*", single_pass(expr))
    if len(expr) > _MAX_LEN:
        raise CountdownError(f"expression longer than {_MAX_LEN} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise CountdownError(f"not an expression: {e.msg}") from None
    literals: list[int] = []

    def walk(node: ast.AST) -> fractions.Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return fractions.Fraction(node.value)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div):
                if right == 0:
                    raise CountdownError("division by zero")
                return left / right
            raise CountdownError(f"operator {type(node.op).__name__} is not allowed")
        raise CountdownError(f"{type(node).__name__} is not allowed in a countdown expression")

    return walk(tree), literals


def _answer_expression(prompt: str, completion: str) -> str | None:
    text = full_response(prompt, completion)
    answer = extract_tag(text, "answer")
    if answer is None:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if not lines:
            return None
        answer = lines[-1]
    answer = answer.strip().strip("$").strip()
    if "=" in answer:
        answer = answer.split("=", 1)[0]
    return answer or None


def countdown(prompt: str, completion: str, reference: Any) -> float:
    """1.0 if the answer reaches ``reference["target"]`` using each of ``reference["numbers"]`` once.

    Args:
      prompt: the prompt (used only to restore a prefilled ``<think>``).
      completion: the generated text; the expression is read from its ``<answer>`` block.
      reference: ``{"target": int, "numbers": [int, ...]}``.

    Returns:
      1.0 or 0.0.

    Raises:
      ValueError / TypeError: a malformed reference.
    """
    target, numbers = _check_reference(reference)
    expr = _answer_expression(prompt, completion)
    if expr is None:
        return 0.0
    try:
        value, literals = evaluate_countdown_expression(expr)
    except (CountdownError, RecursionError, MemoryError):
        return 0.0
    if collections.Counter(literals) != collections.Counter(numbers):
        return 0.0
    return 1.0 if value == target else 0.0
