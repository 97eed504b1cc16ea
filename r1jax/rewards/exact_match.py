r"""Exact-match reward: the final answer, normalised, equals the reference string.

For answers that are a word or a name (the logic puzzles of :mod:`r1jax.data.domains`: "who is the
tallest" → ``cal``), where :func:`r1jax.rewards.math_accuracy`'s number parsing does not apply. The
answer is read as :func:`r1jax.rewards.parsing.extract_final_answer` reads it (the last
``<answer>`` block, or the last ``\boxed{}`` in it or anywhere); both sides are normalised: case
folded, ``\text{..}`` unwrapped, blanks collapsed, surrounding blanks, quotes, ``$``, ``*`` and
final ``.`` / ``,`` removed. Nothing else is forgiven ("cal." matches ``cal``; "it is cal" does not).

Reference: a string, or a mapping with an ``"answer"`` string.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from r1jax.rewards.parsing import extract_final_answer
from r1jax.rewards.scan import single_pass

__all__ = ["exact_match", "normalize_answer"]

_TEXT = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*+)\}")
_BLANKS = re.compile(r"\s++")
_EDGE = " \t\n\"'`$*.,"


def normalize_answer(text: str) -> str:
    r"""Case-folded, ``\text{}``-unwrapped, blank-collapsed ``text`` without edge quotes / ``$*.,``."""
    text = _TEXT.sub(r"\1", single_pass(text))
    return _BLANKS.sub(" ", single_pass(text)).strip(_EDGE).casefold()


def exact_match(prompt: str, completion: str, reference: Any) -> float:
    """1.0 if the completion's final answer equals the reference after normalisation, else 0.0.

    Args:
      prompt: the prompt (used only to restore a prefilled ``<think>``).
      completion: the generated text.
      reference: the expected answer (a string or a mapping with ``"answer"``).

    Returns:
      1.0 or 0.0 (no answer found scores 0.0).

    Raises:
      ValueError: a reference that is not a non-blank string.
    """
    ref = reference["answer"] if isinstance(reference, Mapping) and "answer" in reference else reference
    if not isinstance(ref, str) or not normalize_answer(ref):
        raise ValueError(f"exact-match reference must be a non-blank string, got {reference!r}")
    answer = extract_final_answer(prompt, completion)
    return 1.0 if answer is not None and normalize_answer(answer) == normalize_answer(ref) else 0.0
