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

import re
from typing import Any

from r1jax.rewards.parsing import full_response

__all__ = ["format_strict", "format_lenient"]

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_LENIENT = re.compile(r"<think>.*?</think>.*?<answer>(.*?)</answer>", re.DOTALL)


def format_strict(prompt: str, completion: str, reference: Any = None) -> float:
    """1.0 if the response is exactly ``<think> R </think> <answer> A </answer>``, else 0.0.

    Args:
      prompt: the prompt (a trailing opened ``<think>`` is part of the response).
      completion: the generated text.
      reference: unused.

    Returns:
      1.0 or 0.0.
    """
    del reference
    text = full_response(prompt, completion)
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    m = _STRICT.fullmatch(text)
    if m is None:
        return 0.0
    return 1.0 if m.group(1).strip() and m.group(2).strip() else 0.0


def format_lenient(prompt: str, completion: str, reference: Any = None) -> float:
    """1.0 if a ``<think>`` block is followed by a non-blank ``<answer>`` block anywhere, else 0.0."""
    del reference
    text = full_response(prompt, completion)
    return 1.0 if any(a.strip() for a in _LENIENT.findall(text)) else 0.0
