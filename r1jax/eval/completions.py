"""Length and reflection statistics of sampled completions.

DeepSeek-R1-Zero's responses grow longer during RL, and words of self-reflection ("wait", ...)
appear more often: the paper's "aha moment". These helpers measure both on a batch of
completions, so a run can log them next to accuracy.

References:
  DeepSeek-AI, "DeepSeek-R1: Incentivizing Reasoning Capability in LLMs via Reinforcement
  Learning", arXiv 2501.12948 (2025): average response length of DeepSeek-R1-Zero during
  training and its "aha moment" (the model writes "Wait, wait. Wait. That's an aha moment").
  Liu et al., "There May Not be Aha Moment in R1-Zero-like Training - A Pilot Study" (Sea AI
  Lab blog, Feb 2025), which counts self-reflection keywords in base and RL-trained models.
  The default word list is r1jax's own choice (see :data:`REFLECTION_WORDS`); pass another.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import numpy as np

__all__ = ["REFLECTION_WORDS", "length_stats", "reflection_counts", "reflection_stats"]

REFLECTION_WORDS: tuple[str, ...] = (
    "wait", "recheck", "verify", "re-evaluate", "however", "but", "retry", "mistake",
    "check again",
)
"""Default words (and one phrase) of self-reflection.

Matching is case-insensitive and on whole words: a word matches only where it is neither
preceded nor followed by a letter, digit or underscore, so ``"wait"`` counts in ``"Wait,"`` and
``"wait-and-see"`` but not in ``"await"`` or ``"waiting"``, and ``"verify"`` does not count
``"verified"`` (inflections are not matched; add them to your own list if you want them).
``"re-evaluate"`` is matched with its hyphen; the words of ``"check again"`` may be separated by
any run of whitespace. Every word is counted independently of the others.
"""


def _check_words(words: Sequence[str]) -> tuple[str, ...]:
    if isinstance(words, str):
        raise TypeError(f"words: expected a sequence of words, got the single string {words!r}")
    words = tuple(words)
    if not words:
        raise ValueError("words: need at least one word")
    seen: set[str] = set()
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"words[{i}]: expected a non-empty string, got {w!r}")
        key = " ".join(w.lower().split())
        if key in seen:
            raise ValueError(f"words[{i}]: duplicate word {w!r} (matching is case-insensitive)")
        seen.add(key)
    return words


@functools.lru_cache(maxsize=64)
def _patterns(words: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """One whole-word, case-insensitive pattern per word; inner whitespace matches ``\\s+``."""
    return tuple(
        re.compile(r"(?<!\w)" + r"\s+".join(re.escape(part) for part in w.split()) + r"(?!\w)",
                   re.IGNORECASE)
        for w in words)


def reflection_counts(text: str, words: Sequence[str] = REFLECTION_WORDS) -> dict[str, int]:
    """How many times each reflection word occurs in one completion.

    Args:
      text: the completion text.
      words: the words (or phrases) to count; defaults to :data:`REFLECTION_WORDS`.

    Returns:
      ``{word: count}`` in the order of ``words``; whole-word, case-insensitive, non-overlapping
      matches (see :data:`REFLECTION_WORDS` for the matching rule).

    Raises:
      TypeError: ``text`` is not a string.
      ValueError: an empty or duplicate word.

    References:
      DeepSeek-AI, arXiv 2501.12948 (2025), the "aha moment" of DeepSeek-R1-Zero.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    words = _check_words(words)
    return {w: len(p.findall(text)) for w, p in zip(words, _patterns(words))}


def reflection_stats(completions: Sequence[str],
                     words: Sequence[str] = REFLECTION_WORDS) -> dict[str, float]:
    """Frequency of reflection words over a batch of completions.

    Args:
      completions: completion texts (at least one).
      words: the words (or phrases) to count; defaults to :data:`REFLECTION_WORDS`.

    Returns:
      A flat dict of floats:
        ``"mean"``: mean number of reflection words per completion (all words together);
        ``"max"``: the largest number in one completion;
        ``"frac_any"``: share of completions with at least one reflection word;
        ``"word/<word>"``: mean count of each word per completion.

    Raises:
      ValueError: no completions, or a bad word list.
      TypeError: a completion that is not a string (named by index).

    References:
      DeepSeek-AI, arXiv 2501.12948 (2025), the "aha moment"; Liu et al. (2025), pilot study.
    """
    if isinstance(completions, str):
        raise TypeError("completions: expected a sequence of strings, got a single string")
    if len(completions) == 0:
        raise ValueError("completions: need at least one completion")
    words = _check_words(words)
    counts = np.zeros((len(completions), len(words)), dtype=np.int64)
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise TypeError(f"completions[{i}]: expected a string, got {type(text).__name__}")
        counts[i] = list(reflection_counts(text, words).values())
    totals = counts.sum(axis=1)
    out = {"mean": float(totals.mean()), "max": float(totals.max()),
           "frac_any": float(np.mean(totals > 0))}
    for j, w in enumerate(words):
        out[f"word/{w}"] = float(counts[:, j].mean())
    return out


def length_stats(lengths: Any, *, max_length: int | None = None, truncated: Any = None,
                 percentiles: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Summary statistics of response lengths (in tokens).

    Args:
      lengths: 1-D sequence of non-negative integer response lengths in tokens (one per
        completion, the generated tokens only).
      max_length: the generation budget (max new tokens). When ``truncated`` is not given, a
        response counts as clipped when ``length >= max_length``.
      truncated: optional 1-D bools, one per completion, True where generation stopped on the
        length limit (e.g. ``finish_reason == "length"``); takes precedence over ``max_length``
        for the clipped share.
      percentiles: percentiles to report, each in [0, 100] (NumPy's default linear
        interpolation).

    Returns:
      A flat dict of floats: ``"mean"``, ``"std"`` (population, ``ddof=0``), ``"min"``, ``"max"``,
      ``"p<q>"`` for each percentile ``q`` (``"p50"``, ``"p90"``, ``"p99"``; ``"p99.9"`` for 99.9)
      and, when ``max_length`` or ``truncated`` is given, ``"clip_frac"``: the share of clipped
      responses.

    Raises:
      ValueError: empty or non-1-D ``lengths``, negative lengths, a length above ``max_length``,
        ``max_length < 1``, ``truncated`` of another shape, or a percentile outside [0, 100].
      TypeError: non-integer lengths or ``max_length``, or non-boolean ``truncated``.

    References:
      DeepSeek-AI, arXiv 2501.12948 (2025): average response length of DeepSeek-R1-Zero during
      RL; Yu et al., "DAPO", arXiv 2503.14476 (2025): overlong (clipped) responses.
    """
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lengths: expected a non-empty 1-D sequence, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"lengths: expected integer token counts, got dtype {arr.dtype}")
    if np.any(arr < 0):
        i = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"lengths: negative length {arr[i]} at index {i}")
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
            raise TypeError(f"max_length: expected an integer, got {max_length!r}")
        if max_length < 1:
            raise ValueError(f"max_length: must be >= 1, got {max_length}")
        if np.any(arr > max_length):
            i = int(np.flatnonzero(arr > max_length)[0])
            raise ValueError(f"lengths: length {arr[i]} at index {i} exceeds "
                             f"max_length={max_length}")
    x = arr.astype(np.float64)
    out = {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
           "max": float(x.max())}
    for q in percentiles:
        qf = float(q)
        if not 0.0 <= qf <= 100.0:
            raise ValueError(f"percentiles: each must be in [0, 100], got {q}")
        out[f"p{qf:g}"] = float(np.percentile(x, qf))
    if truncated is not None:
        t = np.asarray(truncated)
        if t.shape != arr.shape:
            raise ValueError(f"truncated: expected shape {arr.shape} (one per length), got "
                             f"{t.shape}")
        if t.dtype != np.bool_:
            raise TypeError(f"truncated: expected bools, got dtype {t.dtype}")
        out["clip_frac"] = float(t.mean())
    elif max_length is not None:
        out["clip_frac"] = float(np.mean(arr >= max_length))
    return out
