"""Majority voting (self-consistency) and cons@k.

cons@k (DeepSeek-R1 reports cons@64): for each problem take the first ``k`` sampled answers,
pick the most frequent one, and score the problem as solved when that answer matches the
reference. Answers are *normalised strings* produced by the caller's answer extractor, so two
answers vote together exactly when their strings are equal; ``None`` marks an answer that could
not be parsed and does not vote. Ties are broken by first occurrence: among the answers with the
highest count, the one that appears earliest in the sample order wins. This makes the vote a
deterministic function of the ordered samples.

References:
  Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language Models",
  arXiv 2203.11171 (2022), Section 2 (majority vote over sampled answers).
  DeepSeek-AI, "DeepSeek-R1: Incentivizing Reasoning Capability in LLMs via Reinforcement
  Learning", arXiv 2501.12948 (2025): the evaluation set-up of its experiments section reports
  "consensus (majority vote) results using 64 samples, denoted cons@64".
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["majority_vote", "majority_correct", "cons_at_k", "string_equal", "EquivFn"]

EquivFn = Callable[[str, Any], bool]
"""``equiv_fn(answer, reference) -> bool``: whether a normalised answer matches the reference."""


def string_equal(answer: str, reference: Any) -> bool:
    """Default equivalence: exact string equality of the answer and the reference.

    Args:
      answer: a normalised answer string.
      reference: the reference answer; must be a ``str`` (pass your own ``equiv_fn`` for other
        reference types, e.g. a math-verify based comparison).

    Returns:
      ``answer == reference``.

    Raises:
      TypeError: ``reference`` is not a string.
    """
    if not isinstance(reference, str):
        raise TypeError(f"reference: the default equiv_fn compares strings, got "
                        f"{type(reference).__name__} {reference!r}; pass an equiv_fn for "
                        f"non-string references")
    return answer == reference


def _check_answers(answers: Sequence[str | None], where: str) -> None:
    if isinstance(answers, (str, bytes)):
        raise TypeError(f"{where}: expected a sequence of answers, got a single string "
                        f"{answers!r}")
    for i, a in enumerate(answers):
        if a is not None and not isinstance(a, str):
            raise TypeError(f"{where}[{i}]: answers must be normalised strings or None, got "
                            f"{type(a).__name__} {a!r}")


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer; ``None`` answers do not vote; ties go to the first occurrence.

    Args:
      answers: the sampled answers of one problem, in sample order; each a normalised string,
        or ``None`` when the answer could not be parsed.

    Returns:
      The answer with the highest count among the non-``None`` answers. When several answers
      share the highest count, the one whose first appearance in ``answers`` is earliest.
      ``None`` when no answer parsed (or ``answers`` is empty).

    Raises:
      TypeError: an answer that is neither a string nor ``None``.

    References:
      Wang et al., arXiv 2203.11171 (2022), Section 2.
    """
    _check_answers(answers, "answers")
    counts: dict[str, int] = {}  # insertion order == order of first occurrence
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    best, best_count = None, 0
    for a, count in counts.items():
        if count > best_count:  # strict: an equal count seen later never displaces the first
            best, best_count = a, count
    return best


def majority_correct(answers_by_problem: Sequence[Sequence[str | None]],
                     references: Sequence[Any], k: int,
                     equiv_fn: EquivFn | None = None) -> np.ndarray:
    """Per-problem correctness of the majority answer among the first ``k`` samples.

    Args:
      answers_by_problem: one sequence of answers per problem (normalised strings or ``None``),
        in sample order; problems may have different numbers of samples, each at least ``k``.
      references: one reference answer per problem.
      k: number of leading samples that vote, ``k >= 1``.
      equiv_fn: ``equiv_fn(answer, reference) -> bool``; defaults to :func:`string_equal`.
        Called only on the winning answer (never on ``None``).

    Returns:
      ``[problems]`` bool array: whether the majority answer matches the reference. A problem
      whose first ``k`` answers are all ``None`` counts as not solved.

    Raises:
      ValueError: lengths of ``answers_by_problem`` and ``references`` differ, ``k < 1``, or a
        problem has fewer than ``k`` samples (named by index).
      TypeError: a non-integer ``k`` or an answer that is neither a string nor ``None``.

    References:
      DeepSeek-AI, arXiv 2501.12948 (2025), evaluation set-up (cons@64); Wang et al.,
      arXiv 2203.11171.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an integer, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    if len(answers_by_problem) != len(references):
        raise ValueError(f"references: got {len(references)} references for "
                         f"{len(answers_by_problem)} problems")
    equiv = string_equal if equiv_fn is None else equiv_fn
    out = np.zeros(len(answers_by_problem), dtype=bool)
    for p, (answers, ref) in enumerate(zip(answers_by_problem, references)):
        _check_answers(answers, f"answers_by_problem[{p}]")
        if len(answers) < k:
            raise ValueError(f"k: cons@{k} needs at least {k} samples per problem, but problem "
                             f"{p} has only {len(answers)}")
        winner = majority_vote(answers[:k])
        out[p] = winner is not None and bool(equiv(winner, ref))
    return out


def cons_at_k(answers_by_problem: Sequence[Sequence[str | None]], references: Sequence[Any],
              k: int, equiv_fn: EquivFn | None = None) -> float:
    """cons@k: the share of problems whose majority answer over the first ``k`` samples is right.

    Args:
      answers_by_problem: one sequence of answers per problem (see :func:`majority_correct`).
      references: one reference answer per problem.
      k: number of leading samples that vote.
      equiv_fn: ``equiv_fn(answer, reference) -> bool``; defaults to exact string equality.

    Returns:
      Mean over problems of :func:`majority_correct`, a Python float in [0, 1].

    Raises:
      ValueError: no problems, or any error of :func:`majority_correct`.

    References:
      DeepSeek-AI, arXiv 2501.12948 (2025), evaluation set-up (cons@64).
    """
    if len(answers_by_problem) == 0:
        raise ValueError("answers_by_problem: need at least one problem")
    return float(np.mean(majority_correct(answers_by_problem, references, k, equiv_fn)))
