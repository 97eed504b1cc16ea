"""Format rewards: the R1-Zero ``<think> ... </think> <answer> ... </answer>`` structure.

- :func:`format_strict` (registered as ``"format_strict"``): the whole response is exactly
  ``<think> R </think> <answer> A </answer>``: one of each tag, in that order, only whitespace
  outside and between the blocks, ``R`` and ``A`` not blank and free of any of the four tags.
- :func:`format_lenient` (``"format_lenient"``): somewhere in the response a complete
  ``<think>...</think>`` block is followed by a complete ``<answer>...</answer>`` block with a
  non-blank answer; text around them and repeated tags are tolerated.

A prompt ending with an opened ``<think>`` (templates that prefill it) counts as the start of the
response (see :func:`r1jax.rewards.parsing.full_response`).

References:
  DeepSeek-AI, "DeepSeek-R1", arXiv 2501.12948, Table 1 (template) and the rule-based rewards
  (format rewards: the thinking process between ``<think>`` and ``</think>`` tags).
"""

from __future__ import annotations

from typing import Any

from r1jax.rewards.parsing import full_response
from r1jax.rewards.scan import Scanner, charge

__all__ = ["format_strict", "format_lenient"]

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _blank(text: str) -> bool:
    return not text or text.isspace()


def format_strict(prompt: str, completion: str, reference: Any = None) -> float:
    """1.0 if the response is exactly ``<think> R </think> <answer> A </answer>``, else 0.0.

    Linear time: each tag must occur exactly once, so the structure is checked from the four tag
    positions.

    Args:
      prompt: the prompt (a trailing opened ``<think>`` is part of the response).
      completion: the generated text.
      reference: unused.

    Returns:
      1.0 or 0.0.
    """
    del reference
    text = full_response(prompt, completion)
    charge(len(_TAGS) * len(text))
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    think, think_end, answer, answer_end = (text.index(tag) for tag in _TAGS)
    charge(len(_TAGS) * len(text))
    if not (think + len("<think>") <= think_end and think_end + len("</think>") <= answer
            and answer + len("<answer>") <= answer_end):
        return 0.0
    outside = (text[:think], text[think_end + len("</think>") : answer], text[answer_end + len("</answer>") :])
    inside = (text[think + len("<think>") : think_end], text[answer + len("<answer>") : answer_end])
    ok = all(_blank(part) for part in outside) and not any(_blank(part) for part in inside)
    return 1.0 if ok else 0.0


def format_lenient(prompt: str, completion: str, reference: Any = None) -> float:
    """1.0 if a ``<think>`` block is followed by a non-blank ``<answer>`` block anywhere, else 0.0.

    Exactly the verdict of ``re.findall("<think>.*?</think>.*?<answer>(.*?)</answer>", text,
    re.DOTALL)`` having a non-blank match, found in linear time: each match is a ``<think>``, the
    first ``</think>`` after it, the first ``<answer>`` after that and the first ``</answer>`` after
    that; the next match is looked for after it, and once one is incomplete no later one can be
    complete.
    """
    del reference
    text = full_response(prompt, completion)
    scanner = Scanner(text)
    pos = 0
    while True:
        think = scanner.find("<think>", pos)
        think_end = -1 if think < 0 else scanner.find("</think>", think + len("<think>"))
        answer = -1 if think_end < 0 else scanner.find("<answer>", think_end + len("</think>"))
        answer_end = -1 if answer < 0 else scanner.find("</answer>", answer + len("<answer>"))
        if answer_end < 0:
            return 0.0
        charge(answer_end - answer)
        if not _blank(text[answer + len("<answer>") : answer_end]):
            return 1.0
        pos = answer_end + len("</answer>")
