r"""Linear-time text scanning for the rule rewards, with an instrumented work count.

Completions are untrusted text: a policy (or whoever feeds the scorer) can send megabytes of
repeated tags. A backtracking regex such as ``<think>.*?</think>.*?<answer>(.*?)</answer>`` re-reads
the rest of the text from every candidate start and takes cubic time on ``"<think>a</think>" * 1000``.
The rewards therefore find tags, code fences and math delimiters with :class:`Scanner`, whose
searches only move forward: a search for a needle reuses the previous search for the same needle
when that one already looked at least as far, so each character is read a bounded number of
times per needle, whatever the input.

The regular expressions that remain in :mod:`r1jax.rewards` are *single-pass*: every repetition is
possessive (``*+``, ``++``) or runs over a character class that nothing after it can match, so an
attempt at one position never re-reads characters it gave back, and attempts at different
positions read disjoint runs. Each use is charged one read of its subject (:func:`single_pass`).

Work accounting: inside ``with counting_work() as work:``, ``work.chars`` counts the characters
read by scanners, by the plain loops of the rewards and by single-pass regexes (their subject's
length). A search for a needle of length m is charged the span it covered (CPython's ``str.find``
reads each character of the span O(m) times at worst; m <= 9 here). Tests bound this count by a
constant times the input length; it is a deterministic measure, unlike wall time.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator

__all__ = ["Scanner", "WorkCount", "counting_work", "charge", "single_pass"]


@dataclasses.dataclass
class WorkCount:
    """Characters read while counting (see the module docstring)."""

    chars: int = 0


_WORK: contextvars.ContextVar[WorkCount | None] = contextvars.ContextVar("r1jax_rewards_scan_work", default=None)


@contextlib.contextmanager
def counting_work() -> Iterator[WorkCount]:
    """Counts the scanning work of the rewards called inside the ``with`` block.

    Returns:
      A context manager yielding a :class:`WorkCount` that grows while the block runs.
    """
    work = WorkCount()
    token = _WORK.set(work)
    try:
        yield work
    finally:
        _WORK.reset(token)


def charge(chars: int) -> None:
    """Adds ``chars`` characters read to the active :func:`counting_work` count, if any."""
    work = _WORK.get()
    if work is not None:
        work.chars += chars


def single_pass(text: str) -> str:
    """Charges one read of ``text`` (a single-pass regex is about to run over it) and returns it."""
    charge(len(text))
    return text


class Scanner:
    """Finds literal needles in one text at non-decreasing start positions, in linear total time.

    Args:
      text: the text searched.
    """

    def __init__(self, text: str):
        self.text = text
        self._last: dict[str, tuple[int, int]] = {}  # needle -> (searched from, found at or -1)

    def find(self, needle: str, start: int) -> int:
        """Index of the first ``needle`` at or after ``start``, or -1.

        Args:
          needle: the literal text looked for.
          start: where the search begins.

        Returns:
          The index, or -1 when there is none. A search that an earlier one for the same needle
          already answers (it started at or before ``start`` and found nothing, or found a match
          at or after ``start``) reads nothing.
        """
        previous = self._last.get(needle)
        if previous is not None:
            since, at = previous
            if since <= start and (at == -1 or at >= start):
                return at
        at = self.text.find(needle, start)
        charge(max(0, (len(self.text) if at < 0 else at + len(needle)) - start))
        self._last[needle] = (start, at)
        return at
