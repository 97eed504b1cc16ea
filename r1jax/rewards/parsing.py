"""Pulling the parts the rewards look at out of a completion.

The R1-Zero template (arXiv 2501.12948, Table 1) asks for
``<think> reasoning </think> <answer> answer </answer>``. Some prompt templates end with an opened
``<think>`` so that the completion starts inside the reasoning; :func:`full_response` puts that tag
back in front of the completion so every reward sees the whole structure.
"""

from __future__ import annotations

import re

__all__ = [
    "full_response",
    "find_last_boxed",
    "extract_boxed",
    "extract_tag",
    "extract_think",
    "extract_final_answer",
    "extract_code",
]

_THINK_OPEN = "<think>"

_TAG_RES: dict[str, re.Pattern[str]] = {}


def full_response(prompt: str, completion: str) -> str:
    """The completion, with ``<think>`` prepended when the prompt ended with an opened ``<think>``.

    Args:
      prompt: the prompt text given to the policy.
      completion: the generated text.

    Returns:
      The text that the template's structure applies to.
    """
    if prompt.rstrip().endswith(_THINK_OPEN) and not completion.lstrip().startswith(_THINK_OPEN):
        return _THINK_OPEN + completion
    return completion


def find_last_boxed(text: str) -> tuple[int, int] | None:
    r"""Span (start, end) of the content of the last ``\boxed{...}`` (or ``\fbox{...}``), braces balanced.

    Also accepts the brace-less ``\boxed 5`` form (the content is the next token). Returns None when
    there is no box or its braces never close.
    """
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\b\s*", text):
        best = m
    if best is None:
        return None
    i = best.end()
    if i < len(text) and text[i] == "{":
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return i + 1, j
            j += 1
        return None
    m = re.match(r"[^\s$]+", text[i:])
    if m is None:
        return None
    return i, i + m.end()


def extract_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` with nested braces kept, or None."""
    span = find_last_boxed(text)
    return None if span is None else text[span[0] : span[1]].strip()


def _tag_re(tag: str) -> re.Pattern[str]:
    if tag not in _TAG_RES:
        _TAG_RES[tag] = re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL)
    return _TAG_RES[tag]


def extract_tag(text: str, tag: str, *, last: bool = True) -> str | None:
    """Content of the last (or first) complete ``<tag>...</tag>`` block, stripped; None if absent."""
    found = _tag_re(tag).findall(text)
    if not found:
        return None
    return (found[-1] if last else found[0]).strip()


def extract_think(prompt: str, completion: str) -> str | None:
    """The chain of thought: the ``<think>`` block of the full response, or None."""
    return extract_tag(full_response(prompt, completion), "think", last=False)


def extract_final_answer(prompt: str, completion: str) -> str | None:
    r"""The final answer text of a completion.

    Order: inside the last ``<answer>...</answer>`` block, the last ``\boxed{}`` if it has one,
    else the whole block; without an answer block, the last ``\boxed{}`` anywhere. None when
    there is none.
    """
    text = full_response(prompt, completion)
    answer = extract_tag(text, "answer")
    if answer is not None:
        boxed = extract_boxed(answer)
        return boxed if boxed is not None else answer
    return extract_boxed(text)


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(prompt: str, completion: str) -> str | None:
    """The program of a completion: the last fenced python block.

    Order: the last ```` ```python ```` (or ```` ```py ````, or unlabelled) fenced block inside the
    last ``<answer>`` block; the whole ``<answer>`` block when it has no fence; the last such fenced
    block anywhere. None when there is none.
    """
    text = full_response(prompt, completion)

    def last_block(s: str) -> str | None:
        blocks = [body for lang, body in _FENCE_RE.findall(s) if lang.lower() in ("python", "py", "python3", "")]
        return blocks[-1] if blocks else None

    answer = extract_tag(text, "answer")
    if answer is not None:
        block = last_block(answer)
        if block is not None:
            return block
        if "```" not in answer and answer.strip():
            return answer
    return last_block(text)
