"""Pulling the parts the rewards look at out of a completion.

The R1-Zero template (arXiv 2501.12948, Table 1) asks for
``<think> reasoning </think> <answer> answer </answer>``. Some prompt templates end with an opened
``<think>`` so that the completion starts inside the reasoning; :func:`full_response` puts that tag
back in front of the completion so every reward sees the whole structure.
"""

from __future__ import annotations

import re

from r1jax.rewards.scan import Scanner, charge, single_pass

__all__ = [
    "full_response",
    "find_last_boxed",
    "extract_boxed",
    "extract_tag",
    "extract_think",
    "extract_final_answer",
    "extract_code",
    "tag_spans",
]

_THINK_OPEN = "<think>"
# Single-pass regexes (see r1jax.rewards.scan): possessive runs, nothing re-read.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\b\s*+")
_BARE_TOKEN = re.compile(r"[^\s$]++")
_FENCE_LANGUAGE = re.compile(r"[ \t]*+([A-Za-z0-9_+-]*+)")


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
    there is no box or its braces never close. Linear time.
    """
    best = None
    for m in _BOX_COMMAND.finditer(single_pass(text)):
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
                    charge(j - i)
                    return i + 1, j
            j += 1
        charge(j - i)
        return None
    m = _BARE_TOKEN.match(text, i)
    if m is None:
        return None
    charge(m.end() - i)
    return i, m.end()


def extract_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` with nested braces kept, or None."""
    span = find_last_boxed(text)
    return None if span is None else text[span[0] : span[1]].strip()


def tag_spans(text: str, tag: str) -> list[tuple[int, int]]:
    """Content spans (start, end) of the complete ``<tag>...</tag>`` blocks of ``text``, in order.

    A block runs from a ``<tag>`` to the first ``</tag>`` after it; the next block is looked for
    after that closing tag (the matches of ``re.findall("<tag>(.*?)</tag>", text, re.DOTALL)``,
    found in linear time).

    Args:
      text: the text searched.
      tag: the tag name, e.g. ``"answer"``.

    Returns:
      A list of (start, end) index pairs; empty when there is no complete block.
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    scanner = Scanner(text)
    spans, pos = [], 0
    while True:
        start = scanner.find(opening, pos)
        if start < 0:
            break
        end = scanner.find(closing, start + len(opening))
        if end < 0:  # no later opening tag can be closed either
            break
        spans.append((start + len(opening), end))
        pos = end + len(closing)
    return spans


def extract_tag(text: str, tag: str, *, last: bool = True) -> str | None:
    """Content of the last (or first) complete ``<tag>...</tag>`` block, stripped; None if absent."""
    spans = tag_spans(text, tag)
    if not spans:
        return None
    start, end = spans[-1] if last else spans[0]
    return text[start:end].strip()


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


_PYTHON_LANGUAGES = ("python", "py", "python3", "")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block: ````` ```lang ...\\n body ``` `````, left to right.

    The language is the run of ``[A-Za-z0-9_+-]`` after the fence and optional blanks; the rest of
    the fence's line is ignored; the body runs to the next ````` ``` `````. Linear time.
    """
    scanner = Scanner(text)
    blocks, pos = [], 0
    while True:
        fence = scanner.find("```", pos)
        if fence < 0:
            break
        newline = scanner.find("\n", fence + 3)
        if newline < 0:
            break
        close = scanner.find("```", newline + 1)
        if close < 0:  # a later fence would have to close after this same point: none does
            break
        language = _FENCE_LANGUAGE.match(text, fence + 3, newline)
        charge(language.end() - fence - 3)
        blocks.append((language.group(1), text[newline + 1 : close]))
        pos = close + 3
    return blocks


def extract_code(prompt: str, completion: str) -> str | None:
    """The program of a completion: the last fenced python block.

    Order: the last ```` ```python ```` (or ```` ```py ````, or unlabelled) fenced block inside the
    last ``<answer>`` block; the whole ``<answer>`` block when it has no fence; the last such fenced
    block anywhere. None when there is none.
    """
    text = full_response(prompt, completion)

    def last_block(s: str) -> str | None:
        blocks = [body for lang, body in _fenced_blocks(s) if lang.lower() in _PYTHON_LANGUAGES]
        return blocks[-1] if blocks else None

    answer = extract_tag(text, "answer")
    if answer is not None:
        block = last_block(answer)
        if block is not None:
            return block
        if "```" not in answer and answer.strip():
            return answer
    return last_block(text)
