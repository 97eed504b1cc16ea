"""One call from sampled completions to a dict of evaluation metrics.

``r1jax eval`` samples ``n`` completions per problem (that part lives in ``r1jax.sampling`` /
``r1jax.rollout``), then calls :func:`evaluate`, which grades each completion with the caller's
answer extractor and equivalence function and reports pass@k, cons@k, accuracy with a confidence
interval, response-length statistics and reflection-word statistics.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from r1jax.eval.completions import REFLECTION_WORDS, length_stats, reflection_stats
from r1jax.eval.passk import pass_at_k
from r1jax.eval.stats import t_interval
from r1jax.eval.voting import EquivFn, majority_correct, string_equal

__all__ = ["grade_samples", "evaluate"]

AnswerFn = Callable[[str], "str | None"]
"""``answer_fn(completion) -> normalised answer string, or None when none can be parsed``."""


def _check_problems(samples_by_problem: Sequence[Sequence[str]],
                    references: Sequence[Any]) -> None:
    if isinstance(samples_by_problem, str):
        raise TypeError("samples_by_problem: expected one sequence of completions per problem, "
                        "got a single string")
    if len(samples_by_problem) == 0:
        raise ValueError("samples_by_problem: need at least one problem")
    if len(references) != len(samples_by_problem):
        raise ValueError(f"references: got {len(references)} references for "
                         f"{len(samples_by_problem)} problems")
    for p, samples in enumerate(samples_by_problem):
        if isinstance(samples, str):
            raise TypeError(f"samples_by_problem[{p}]: expected a sequence of completions, got "
                            f"a single string")
        if len(samples) == 0:
            raise ValueError(f"samples_by_problem[{p}]: no samples for this problem")
        for s, text in enumerate(samples):
            if not isinstance(text, str):
                raise TypeError(f"samples_by_problem[{p}][{s}]: expected a completion string, "
                                f"got {type(text).__name__}")


def grade_samples(samples_by_problem: Sequence[Sequence[str]], references: Sequence[Any],
                  answer_fn: AnswerFn, equiv_fn: EquivFn | None = None,
                  ) -> tuple[list[list[str | None]], list[list[bool]]]:
    """Extracts each completion's answer and checks it against the problem's reference.

    ``equiv_fn`` is called once per distinct parsed answer of a problem (answers are normalised
    strings, so equal strings share a verdict); unparsed answers (``None``) are wrong without a
    call.

    Args:
      samples_by_problem: one sequence of completion strings per problem (ragged allowed, at
        least one per problem).
      references: one reference answer per problem.
      answer_fn: ``answer_fn(completion) -> str | None``: the normalised final answer, or
        ``None`` when none can be parsed.
      equiv_fn: ``equiv_fn(answer, reference) -> bool``; defaults to exact string equality
        (which needs string references).

    Returns:
      ``(answers_by_problem, correct_by_problem)``: nested lists of the same ragged shape as
      ``samples_by_problem``; answers are strings or ``None``, correctness Python bools.

    Raises:
      ValueError: no problems, a problem without samples, or a references length mismatch.
      TypeError: a completion that is not a string, or an ``answer_fn`` result that is neither a
        string nor ``None`` (named by problem and sample index).
    """
    _check_problems(samples_by_problem, references)
    equiv = string_equal if equiv_fn is None else equiv_fn
    answers_by_problem: list[list[str | None]] = []
    correct_by_problem: list[list[bool]] = []
    for p, (samples, ref) in enumerate(zip(samples_by_problem, references)):
        verdicts: dict[str, bool] = {}
        answers, correct = [], []
        for s, text in enumerate(samples):
            a = answer_fn(text)
            if a is not None and not isinstance(a, str):
                raise TypeError(f"answer_fn: must return a normalised string or None, got "
                                f"{type(a).__name__} {a!r} for samples_by_problem[{p}][{s}]")
            if a is not None and a not in verdicts:
                verdicts[a] = bool(equiv(a, ref))
            answers.append(a)
            correct.append(a is not None and verdicts[a])
        answers_by_problem.append(answers)
        correct_by_problem.append(correct)
    return answers_by_problem, correct_by_problem


def _ks(ks: int | Iterable[int], name: str) -> list[int]:
    out = [ks] if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool) else list(ks)
    if not out:
        raise ValueError(f"{name}: need at least one k")
    for k in out:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"{name}: expected integers, got {k!r}")
    return [int(k) for k in out]


def _flatten_per_sample(values: Sequence[Sequence[Any]],
                        samples_by_problem: Sequence[Sequence[str]], name: str) -> np.ndarray:
    if len(values) != len(samples_by_problem):
        raise ValueError(f"{name}: got {len(values)} problems, expected "
                         f"{len(samples_by_problem)} (one entry per problem)")
    flat: list[Any] = []
    for p, (v, samples) in enumerate(zip(values, samples_by_problem)):
        if len(v) != len(samples):
            raise ValueError(f"{name}[{p}]: got {len(v)} values for {len(samples)} samples")
        flat.extend(v)
    return np.asarray(flat)


def evaluate(samples_by_problem: Sequence[Sequence[str]], references: Sequence[Any],
             answer_fn: AnswerFn, equiv_fn: EquivFn | None = None,
             ks: int | Iterable[int] = (1,), *, cons_ks: int | Iterable[int] | None = None,
             lengths_by_problem: Sequence[Sequence[int]] | None = None,
             max_length: int | None = None,
             truncated_by_problem: Sequence[Sequence[bool]] | None = None,
             reflection_words: Sequence[str] = REFLECTION_WORDS,
             confidence: float = 0.95) -> dict[str, float]:
    """Evaluation metrics of sampled completions: pass@k, cons@k, accuracy, lengths, reflection.

    Args:
      samples_by_problem: one sequence of completion strings per problem, in sample order
        (ragged allowed).
      references: one reference answer per problem.
      answer_fn: ``answer_fn(completion) -> str | None``: the normalised final answer, or
        ``None`` when none can be parsed (e.g. a ``\\boxed{}`` extractor from ``r1jax.rewards``).
      equiv_fn: ``equiv_fn(answer, reference) -> bool``; default exact string equality.
      ks: the ``k`` of each pass@k to report; every ``k`` at most the smallest number of
        samples of a problem.
      cons_ks: the ``k`` of each cons@k (majority vote over the first ``k`` samples); default:
        the smallest number of samples of a problem (a vote over all samples, as cons@64 over 64).
      lengths_by_problem: optional response lengths in tokens, same ragged shape as
        ``samples_by_problem``; enables the ``length/*`` metrics.
      max_length: the generation budget in tokens; with ``lengths_by_problem`` it gives
        ``length/clip_frac`` (unless ``truncated_by_problem`` is given).
      truncated_by_problem: optional bools, same ragged shape: True where generation stopped on
        the length limit; gives ``length/clip_frac``.
      reflection_words: words counted by the ``reflection/*`` metrics.
      confidence: coverage of the accuracy interval.

    Returns:
      A flat ``{name: float}`` dict:
        ``num_problems``, ``num_samples``;
        ``accuracy``: mean over problems of the share of correct samples (= pass@1, each problem
        weighted equally); ``accuracy/ci_low``, ``accuracy/ci_high``: Student-t interval over the
        per-problem accuracies (only with at least 2 problems);
        ``answered``: share of samples whose answer parsed;
        ``pass@<k>`` for each ``k`` of ``ks`` (:func:`r1jax.eval.pass_at_k`, averaged);
        ``cons@<k>`` for each ``k`` of ``cons_ks`` (:func:`r1jax.eval.cons_at_k`);
        ``length/<stat>`` (:func:`r1jax.eval.length_stats`) when lengths are given;
        ``reflection/<stat>`` (:func:`r1jax.eval.reflection_stats`).

    Raises:
      ValueError / TypeError: as :func:`grade_samples`, a ``k`` larger than a problem's number of
        samples (named by problem index), lengths or truncation flags of the wrong shape.

    Example (math answers graded by ``r1jax.rewards``; note its argument order)::

        from r1jax.rewards.parsing import extract_final_answer
        from r1jax.rewards.math_accuracy import math_answers_equal
        metrics = evaluate(completions, answers,
                           answer_fn=lambda c: extract_final_answer("", c),
                           equiv_fn=lambda a, ref: math_answers_equal(ref, a), ks=(1, 8))

    Votes group answers by string identity, so normalise answers in ``answer_fn`` when
    different spellings ("0.5", "\\frac{1}{2}") should vote together.

    References:
      Chen et al., arXiv 2107.03374 (2021), eq. 1 (pass@k); DeepSeek-AI, arXiv 2501.12948
      (2025), evaluation set-up (pass@1 averaged over k samples, cons@64).
    """
    answers, correct = grade_samples(samples_by_problem, references, answer_fn, equiv_fn)
    pass_ks = _ks(ks, "ks")
    n = np.array([len(c) for c in correct], dtype=np.int64)
    c = np.array([sum(cc) for cc in correct], dtype=np.int64)
    per_problem_acc = c / n
    out: dict[str, float] = {
        "num_problems": float(len(n)),
        "num_samples": float(n.sum()),
        "accuracy": float(per_problem_acc.mean()),
    }
    if len(n) >= 2:
        iv = t_interval(per_problem_acc, confidence)
        out["accuracy/ci_low"], out["accuracy/ci_high"] = iv.low, iv.high
    out["answered"] = float(np.mean([a is not None for aa in answers for a in aa]))
    for k in pass_ks:
        out[f"pass@{k}"] = float(np.mean(pass_at_k(n, c, k)))
    vote_ks = [int(n.min())] if cons_ks is None else _ks(cons_ks, "cons_ks")
    # Reuse the verdicts of grade_samples: equiv_fn is not called again for the winners.
    verdicts = [dict(zip(aa, cc)) for aa, cc in zip(answers, correct)]
    for k in vote_ks:
        ok = majority_correct(answers, list(range(len(answers))), k,
                              equiv_fn=lambda a, p: verdicts[p][a])
        out[f"cons@{k}"] = float(ok.mean())
    if lengths_by_problem is not None:
        lengths = _flatten_per_sample(lengths_by_problem, samples_by_problem,
                                      "lengths_by_problem")
        truncated = None
        if truncated_by_problem is not None:
            truncated = _flatten_per_sample(truncated_by_problem, samples_by_problem,
                                            "truncated_by_problem")
        for key, v in length_stats(lengths, max_length=max_length, truncated=truncated).items():
            out[f"length/{key}"] = v
    elif truncated_by_problem is not None or max_length is not None:
        raise ValueError("max_length / truncated_by_problem: need lengths_by_problem as well "
                         "(length statistics are in tokens)")
    flat_samples = [s for samples in samples_by_problem for s in samples]
    for key, v in reflection_stats(flat_samples, reflection_words).items():
        out[f"reflection/{key}"] = v
    return out
