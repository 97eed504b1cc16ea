r"""Accuracy reward for math: the final answer checked against the reference with math-verify.

The final answer is the content of the last ``<answer>...</answer>`` block (its last ``\boxed{}``
when it has one) or, without an answer block, the last ``\boxed{...}`` of the completion (nested
braces handled). Both it and the reference are parsed by ``math_verify.parse`` and compared by
``math_verify.verify`` (gold first), so equivalent forms count: ``1/2 = 0.5 = \frac{1}{2}``,
``\dfrac12``, ``1,000 = 1000``, ``5\text{ cm} = 5``, ``x = 3`` against ``3``, sets in any order.

Size caps: math-verify's LaTeX parser takes time exponential in the nesting of groups (14 nested
braces in a 30-character answer took 24 s) and superlinear in length. An answer is therefore handed
to math-verify only when it has at most :data:`MAX_ANSWER_CHARS` characters (after stripping), at
most :data:`MAX_ANSWER_SCRIPTS` super- and subscripts (``^`` and ``_``: stacked scripts such as
``x_{y_{z}}`` are the costliest to parse), and its groups nest at most :data:`MAX_ANSWER_DEPTH`
deep, where every ``(``, ``[``, ``{`` opens a group and every ``)``, ``]``, ``}`` closes one
(``\{`` and ``\left(`` included; the kinds need not match, so ``[1, 2)`` has depth 1; an unclosed
group stays open). Otherwise the answer scores 0
without being parsed, and the reason is logged at DEBUG level on this module's logger. The check
is one scan of at most ``MAX_ANSWER_CHARS`` characters, so the work before math-verify is linear in
the completion (extraction) and math-verify's parsing work is bounded per call. The caps bound
*parsing*: a short answer with a huge value (``9^{9^{9}}``, ``(10^{10})!``) still makes sympy
compute that value, which nothing but the scorer's hard timeout (below) stops.

Timeouts: math-verify bounds its own work with ``signal.alarm``, which only works in the main thread
and is silently replaced by an exception elsewhere. This function therefore calls it with its
timeouts *disabled* and relies on the caller: :class:`r1jax.rewards.RewardScorer` runs it in worker
processes with a per-sample soft timeout (a timer signal in the worker's main thread) and a hard one
(the worker is killed), and counts both. Called directly, it has no time limit.

Reference: a string (``"\frac{1}{2}"``, ``"$0.5$"``, ``"42"``), a number, or a mapping with an
``"answer"`` key holding one of those.

References:
  DeepSeek-AI, "DeepSeek-R1", arXiv 2501.12948, rule-based rewards (accuracy rewards: the final
  answer in a specified format, e.g. within a box, checked by rules).
"""

from __future__ import annotations

import fractions
import functools
import logging
import numbers
import re
from typing import Any, Mapping

from r1jax.rewards.parsing import extract_final_answer
from r1jax.rewards.scan import charge, single_pass

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_ANSWER_DEPTH",
    "MAX_ANSWER_SCRIPTS",
    "answer_too_complex",
    "math_accuracy",
    "math_answers_equal",
    "reference_answer",
]

# Measured (math-verify 0.9, CPU seconds per call, warm, on a loaded 2-core host): nested groups of
# depth 4 take 0.2-0.3, depth 8 about 1, depth 14 over 20; 128 characters of letters, digits, lists,
# fractions or depth-4 groups under 0.4; 128 characters of stacked scripts (``x_{x_{x_{x_{1}}}}+...``,
# 27 scripts) up to 1.9, with at most 8 scripts about 0.5 (the first call of a new shape in a process
# up to 1.5). Real final answers (integers, fractions, intervals, small matrices) are far shorter,
# shallower and have fewer scripts.
MAX_ANSWER_CHARS = 128
MAX_ANSWER_DEPTH = 4
MAX_ANSWER_SCRIPTS = 8

_LOG = logging.getLogger(__name__)
_OPENING, _CLOSING = frozenset("([{"), frozenset(")]}")


class _DropDisabledTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeouts are off: here that is deliberate (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropDisabledTimeoutWarning())


def reference_answer(reference: Any) -> str:
    """The reference answer as text; accepts a string, a number or a mapping with ``"answer"``."""
    if isinstance(reference, Mapping):
        if "answer" not in reference:
            raise ValueError(f"math reference mapping has no 'answer' key: {reference!r}")
        reference = reference["answer"]
    if isinstance(reference, bool):
        raise TypeError(f"math reference must be a string or a number, got {reference!r}")
    if isinstance(reference, str):
        if not reference.strip():
            raise ValueError("math reference is an empty string")
        return reference
    if isinstance(reference, fractions.Fraction):
        return f"{reference.numerator}/{reference.denominator}"
    if isinstance(reference, numbers.Number):
        return repr(reference) if isinstance(reference, float) else str(reference)
    raise TypeError(
        f"math reference must be a string, a number or a mapping with 'answer', got {type(reference).__name__}"
    )


# Single-pass regexes (r1jax.rewards.scan): literals and possessive runs.
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]++")
_PROSE_WORD = re.compile(r"[A-Za-z]{3,}+")
# A plain integer (at most 100 digits: int() of longer strings is capped by Python's digit limit)
_INTEGER = re.compile(r"[+-]?[0-9]{1,100}")


def _parse(text: str) -> list:
    """math-verify parse of an answer span, choosing how to present it.

    An already delimited span (``$..$``, ``\\(..\\)``, ``\\boxed``) is parsed as is. A bare span is
    parsed as LaTeX math (``$span$``, so ``2\\sqrt{2}`` and ``2^{10}`` stay whole) unless it reads
    as prose (a word of 3+ letters outside LaTeX commands: "42 dollars", "the answer is 7"), which
    math-verify's text extraction handles better; the other way is the fallback.
    """
    from math_verify import parse

    text = text.strip()
    if not text:
        return []
    if _DELIMITED.search(single_pass(text)):
        return parse(text, parsing_timeout=None)
    wrapped = f"${text}$"
    prose = _PROSE_WORD.search(single_pass(_LATEX_COMMAND.sub(" ", single_pass(text)))) is not None
    for candidate in ((text, wrapped) if prose else (wrapped, text)):
        out = parse(candidate, parsing_timeout=None)
        if out:
            return out
    return []


@functools.lru_cache(maxsize=4096)
def _parse_gold(text: str) -> tuple:
    # A group of G completions shares one reference: parse it once.
    return tuple(_parse(text))


def answer_too_complex(answer: str) -> str | None:
    """Why ``answer`` is too long, has too many scripts or nests too deep for math-verify; else None.

    Args:
      answer: the extracted answer text.

    Returns:
      A one-line reason naming the cap exceeded (see the module docstring), or None.
    """
    answer = answer.strip()
    if len(answer) > MAX_ANSWER_CHARS:
        return f"answer has {len(answer)} characters, over MAX_ANSWER_CHARS={MAX_ANSWER_CHARS}"
    charge(3 * len(answer))  # two counts and one loop
    scripts = answer.count("^") + answer.count("_")
    if scripts > MAX_ANSWER_SCRIPTS:
        return f"answer has {scripts} super/subscripts, over MAX_ANSWER_SCRIPTS={MAX_ANSWER_SCRIPTS}"
    depth = 0
    for c in answer:
        if c in _OPENING:
            depth += 1
            if depth > MAX_ANSWER_DEPTH:
                return f"answer nests brackets deeper than MAX_ANSWER_DEPTH={MAX_ANSWER_DEPTH}"
        elif c in _CLOSING and depth > 0:
            depth -= 1
    return None


def math_answers_equal(reference: Any, answer: str) -> bool:
    """Whether answer text ``answer`` is mathematically equal to ``reference`` (math-verify).

    Args:
      reference: the gold answer (see the module docstring).
      answer: the answer text.

    Returns:
      True when math-verify finds them equal. False when it does not, when the answer does not
      parse, and, without calling math-verify, when :func:`answer_too_complex` rejects the answer.

    Raises:
      ValueError / TypeError: a malformed reference.
    """
    from math_verify import verify

    gold_text = reference_answer(reference)
    gold = list(_parse_gold(gold_text))
    if not gold:
        raise ValueError(f"math reference {reference!r} could not be parsed by math-verify")
    reason = answer_too_complex(answer)
    if reason is not None:
        _LOG.debug("math_accuracy: scored 0 without math-verify: %s", reason)
        return False
    if _INTEGER.fullmatch(gold_text.strip()) and _INTEGER.fullmatch(answer.strip()):
        return int(gold_text) == int(answer)  # math-verify's verdict on two integers, without parsing (tested)
    pred = _parse(answer)
    if not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


def math_accuracy(prompt: str, completion: str, reference: Any) -> float:
    r"""1.0 if the completion's final answer equals the reference, else 0.0.

    Args:
      prompt: the prompt (used only to restore a ``<think>`` the prompt opened).
      completion: the generated text.
      reference: the gold answer (see the module docstring).

    Returns:
      1.0 or 0.0. No final answer scores 0.0; so does an answer longer than
      :data:`MAX_ANSWER_CHARS` characters, with more than :data:`MAX_ANSWER_SCRIPTS` ``^`` / ``_``
      or with brackets nested deeper than :data:`MAX_ANSWER_DEPTH` (not parsed at all; the reason
      is logged at DEBUG level).

    Raises:
      ValueError / TypeError: a malformed reference (a data bug, not a wrong answer).
    """
    answer = extract_final_answer(prompt, completion)
    if answer is None:
        reference_answer(reference)  # a bad reference is reported even when there is no answer
        return 0.0
    return 1.0 if math_answers_equal(reference, answer) else 0.0
