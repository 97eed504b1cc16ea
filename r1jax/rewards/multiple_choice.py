r"""Multiple-choice (STEM) reward: the chosen option letter against the reference letter.

The chosen letter (A-J, as in MMLU-Pro's ten options) is read, in order of preference, from

1. the last ``<answer>...</answer>`` block: a letter alone or leading and closed by punctuation
   (``B``, ``(B)``, ``B.``, ``B) 42``, ``\text{B}``; not "A total of 5"), or "answer is (B)"
   inside it;
2. the last ``\boxed{...}``: ``\boxed{B}``, ``\boxed{(B)}``, ``\boxed{\text{B}}``;
3. the last "answer is (X)" / "answer: X" / "Answer is **X**" phrase of the completion.

Only an upper-case letter counts, except a lone lower-case letter that is the whole answer.

Reference: the letter (``"C"``) or a mapping with an ``"answer"`` letter.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from r1jax.rewards.parsing import extract_boxed, extract_tag, full_response
from r1jax.rewards.scan import single_pass

__all__ = ["multiple_choice", "extract_choice"]

_LETTERS = "ABCDEFGHIJ"
# Single-pass regexes (r1jax.rewards.scan): every run is possessive.
_STRIP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*+)\}")
# A leading letter must be closed by punctuation or stand alone: "A total of 5" is not option A.
_LEADING = re.compile(rf"^[\s(\[*]*+([{_LETTERS}])(?:[)\].:,*]|\s*+$)")
# "answer", blanks, "is" or ":", then blanks, at most one colon first, and brackets or stars.
_PHRASE = re.compile(rf"(?i:answer)\s*+(?:(?i:is)|:)(?:\s*+:)?+[\s(\[*]*+([{_LETTERS}])(?![A-Za-z])")


def _letter(span: str) -> str | None:
    span = _STRIP.sub(r"\1", single_pass(span)).strip().strip("$").strip()
    if len(span) == 1 and span.upper() in _LETTERS:
        return span.upper()
    m = _LEADING.match(single_pass(span))
    if m:
        return m.group(1)
    found = _PHRASE.findall(single_pass(span))
    return found[-1].upper() if found else None


def extract_choice(prompt: str, completion: str) -> str | None:
    """The option letter a completion chose (see the module docstring), or None."""
    text = full_response(prompt, completion)
    answer = extract_tag(text, "answer")
    if answer is not None:
        letter = _letter(answer)
        if letter is not None:
            return letter
    boxed = extract_boxed(text)
    if boxed is not None:
        letter = _letter(boxed)
        if letter is not None:
            return letter
    found = _PHRASE.findall(single_pass(text))
    return found[-1].upper() if found else None


def multiple_choice(prompt: str, completion: str, reference: Any) -> float:
    """1.0 if the chosen letter equals the reference letter, else 0.0.

    Args:
      prompt: the prompt (used only to restore a prefilled ``<think>``).
      completion: the generated text.
      reference: the correct letter (``"A"``-``"J"``) or a mapping with ``"answer"``.

    Returns:
      1.0 or 0.0 (no letter found scores 0.0).

    Raises:
      ValueError: a reference that is not a single letter A-J.
    """
    ref = reference["answer"] if isinstance(reference, Mapping) and "answer" in reference else reference
    if not isinstance(ref, str) or ref.strip().upper() not in _LETTERS or len(ref.strip()) != 1:
        raise ValueError(f"multiple-choice reference must be one letter A-J, got {reference!r}")
    return 1.0 if extract_choice(prompt, completion) == ref.strip().upper() else 0.0
