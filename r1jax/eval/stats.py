"""Confidence intervals for accuracies across seeds and problems.

* :func:`t_interval` - mean of a few runs (e.g. final accuracy of 5 seeds) with a Student-t
  interval: ``mean +- t_{(1+conf)/2, n-1} * s / sqrt(n)``.
* :func:`welch_interval` - difference of two such means (GRPO minus PPO-lambda) with Welch's
  unequal-variance interval and the Welch-Satterthwaite degrees of freedom.
* :func:`roc_auc`, :func:`auc_interval` - the ROC AUC of scores against binary labels (a reward
  model's), with a stratified-bootstrap or Hanley-McNeil interval.
* :func:`wilson_interval` - a binomial proportion (``x`` solved out of ``n`` problems): the Wilson
  score interval, which stays inside [0, 1] and behaves at ``x = 0`` or ``x = n``.

The Student-t distribution function and quantiles come from ``scipy.stats.t`` (:func:`t_cdf`,
:func:`t_quantile`, which check their arguments first), normal quantiles from the standard library
(``statistics.NormalDist``). Tests check both against published tables and closed forms.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

__all__ = ["Interval", "t_cdf", "t_quantile", "normal_quantile", "t_interval",
           "welch_interval", "wilson_interval", "roc_auc", "auc_interval"]


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float

    @property
    def half_width(self) -> float:
        """``(high - low) / 2`` (the "+-" of a symmetric interval)."""
        return 0.5 * (self.high - self.low)

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise TypeError(f"confidence: expected a float in (0, 1), got {confidence!r}")
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    return confidence


def _check_df(df: float) -> float:
    if isinstance(df, bool) or not isinstance(df, (int, float, np.integer, np.floating)):
        raise TypeError(f"df: expected a positive number, got {df!r}")
    df = float(df)
    if not df > 0.0:  # also rejects NaN
        raise ValueError(f"df: degrees of freedom must be > 0, got {df}")
    return df


def t_cdf(t: float, df: float) -> float:
    """Distribution function of Student's t with ``df`` degrees of freedom (``scipy.stats.t.cdf``).

    Args:
      t: the point at which to evaluate, any real.
      df: degrees of freedom, a positive (not necessarily integer) number.

    Returns:
      ``P(T <= t)`` as a Python float.

    Raises:
      ValueError: ``df <= 0`` or ``t`` is NaN.
    """
    df = _check_df(df)
    t = float(t)
    if math.isnan(t):
        raise ValueError("t: got NaN")
    return float(scipy.stats.t.cdf(t, df))


def t_quantile(q: float, df: float) -> float:
    """Quantile (inverse distribution function) of Student's t (``scipy.stats.t.ppf``).

    Args:
      q: probability in (0, 1); e.g. 0.975 for a two-sided 95% interval.
      df: degrees of freedom, a positive (not necessarily integer) number.

    Returns:
      ``t`` such that ``P(T <= t) = q``, e.g. ``t_quantile(0.975, 4) = 2.7764...``;
      ``t_quantile(q, df)`` tends to :func:`normal_quantile` as ``df`` grows.

    Raises:
      ValueError: ``q`` outside (0, 1) or ``df <= 0``.
    """
    df = _check_df(df)
    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q: probability must be in (0, 1), got {q}")
    return float(scipy.stats.t.ppf(q, df))


def normal_quantile(q: float) -> float:
    """Quantile of the standard normal distribution (``statistics.NormalDist().inv_cdf``).

    Args:
      q: probability in (0, 1).

    Returns:
      ``z`` with ``Phi(z) = q``; e.g. ``normal_quantile(0.975) = 1.95996...``.

    Raises:
      ValueError: ``q`` outside (0, 1).
    """
    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q: probability must be in (0, 1), got {q}")
    return statistics.NormalDist().inv_cdf(q)


def _as_values(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise TypeError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: non-finite value {arr[i]} at index {i}")
    return arr


def t_interval(values: Any, confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of a small sample (e.g. one value per seed).

    Args:
      values: 1-D sequence of at least 2 finite numbers (e.g. final accuracy of each seed).
      confidence: coverage of the two-sided interval, in (0, 1).

    Returns:
      ``Interval(mean, mean - h, mean + h, confidence)`` with
      ``h = t_{(1+confidence)/2, n-1} * s / sqrt(n)`` and ``s`` the sample standard deviation
      (``ddof=1``). Equal values give a zero-width interval.

    Raises:
      ValueError: fewer than 2 values (no variance estimate), non-finite values, a bad shape or a
        confidence outside (0, 1).

    References:
      Student, "The probable error of a mean", Biometrika 6(1) (1908): the interval
      ``xbar +- t_{n-1, 1-alpha/2} s / sqrt(n)``.
    """
    confidence = _check_confidence(confidence)
    x = _as_values(values, "values")
    n = x.size
    if n < 2:
        raise ValueError(f"values: a t interval needs at least 2 values (n - 1 degrees of "
                         f"freedom), got {n}")
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    h = t_quantile(0.5 * (1.0 + confidence), n - 1) * sem
    return Interval(mean, mean - h, mean + h, confidence)


def welch_interval(a: Any, b: Any, confidence: float = 0.95) -> Interval:
    """Difference of two means, ``mean(a) - mean(b)``, with Welch's confidence interval.

    Use it for "method A minus method B" over independent seeds (e.g. GRPO vs PPO with
    lambda = 0.95): the variances of the two groups are not assumed equal.

    Args:
      a: 1-D sequence of at least 2 finite numbers (one per seed of method A).
      b: 1-D sequence of at least 2 finite numbers (one per seed of method B).
      confidence: coverage of the two-sided interval, in (0, 1).

    Returns:
      ``Interval(d, d - h, d + h, confidence)`` with ``d = mean(a) - mean(b)``,
      ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``, ``h = t_{(1+confidence)/2, nu} * se`` and the
      Welch-Satterthwaite degrees of freedom
      ``nu = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``. When both groups have zero
      variance the interval has zero width.

    Raises:
      ValueError: a group with fewer than 2 values, non-finite values, or a bad confidence.

    References:
      Welch, "The generalization of 'Student's' problem when several different population
      variances are involved", Biometrika 34 (1947); Satterthwaite, Biometrics Bulletin 2 (1946).
    """
    confidence = _check_confidence(confidence)
    xa, xb = _as_values(a, "a"), _as_values(b, "b")
    for name, x in (("a", xa), ("b", xb)):
        if x.size < 2:
            raise ValueError(f"{name}: Welch's interval needs at least 2 values per group, "
                             f"got {x.size}")
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    d = float(xa.mean() - xb.mean())
    se2 = float(va + vb)
    if se2 == 0.0:
        return Interval(d, d, d, confidence)
    nu = se2 ** 2 / (va ** 2 / (xa.size - 1) + vb ** 2 / (xb.size - 1))
    h = t_quantile(0.5 * (1.0 + confidence), nu) * math.sqrt(se2)
    return Interval(d, d - h, d + h, confidence)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion.

    Args:
      successes: number of successes ``x`` (e.g. problems solved), integer in ``[0, trials]``.
      trials: number of trials ``n`` (e.g. problems), integer ``>= 1``.
      confidence: coverage of the two-sided interval, in (0, 1).

    Returns:
      ``Interval(p, low, high, confidence)`` with ``p = x / n`` the observed proportion and
      ``low, high = (p + z^2/(2n) -+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)``,
      ``z = Phi^{-1}((1+confidence)/2)``. Always inside [0, 1]; ``low = 0`` at ``x = 0`` and
      ``high = 1`` at ``x = n``.

    Raises:
      TypeError: non-integer ``successes`` or ``trials``.
      ValueError: ``trials < 1``, ``successes`` outside ``[0, trials]``, or a bad confidence.

    References:
      Wilson, "Probable inference, the law of succession, and statistical inference", JASA 22
      (1927); Brown, Cai & DasGupta, "Interval estimation for a binomial proportion", Statistical
      Science 16(2) (2001), eq. (4).
    """
    confidence = _check_confidence(confidence)
    for name, v in (("successes", successes), ("trials", trials)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
    x, n = int(successes), int(trials)
    if n < 1:
        raise ValueError(f"trials: need at least 1 trial, got {n}")
    if not 0 <= x <= n:
        raise ValueError(f"successes: must be in [0, trials={n}], got {x}")
    z = normal_quantile(0.5 * (1.0 + confidence))
    p = x / n
    z2n = z * z / n
    center = (p + 0.5 * z2n) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / (1.0 + z2n)
    low = 0.0 if x == 0 else max(0.0, center - half)
    high = 1.0 if x == n else min(1.0, center + half)
    return Interval(p, low, high, confidence)


def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_values(scores, "scores")
    y = _as_values(labels, "labels")
    if y.size != s.size:
        raise ValueError(f"labels: expected {s.size} labels (one per score), got {y.size}")
    if not np.all((y == 0) | (y == 1)):
        i = int(np.flatnonzero((y != 0) & (y != 1))[0])
        raise ValueError(f"labels: must be 0 or 1, got {y[i]} at index {i}")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError(f"labels: the ROC AUC needs both classes, got {int(y.sum())} positives of {y.size}")
    return s, y.astype(bool)


def _win_matrix(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``[n1, n0]``: 1 where the positive outscores the negative, 1/2 on a tie, 0 otherwise."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``: the Mann-Whitney statistic.

    ``AUC = P(s+ > s-) + P(s+ = s-) / 2`` over all (positive, negative) pairs.

    Args:
      scores: 1-D finite numbers.
      labels: 1-D, 0 or 1 (bools allowed), both classes present.

    Returns:
      The AUC in [0, 1] (0.5: no better than chance).

    Raises:
      ValueError: shapes differ, a label that is not 0/1, or only one class.

    References:
      Hanley & McNeil, "The meaning and use of the area under a receiver operating
      characteristic (ROC) curve", Radiology 143 (1982): AUC = the Wilcoxon-Mann-Whitney statistic.
    """
    s, y = _scores_and_labels(scores, labels)
    return float(_win_matrix(s[y], s[~y]).mean())


def auc_interval(scores: Any, labels: Any, confidence: float = 0.95, *, method: str = "bootstrap",
                 num_resamples: int = 2000, seed: int = 0) -> Interval:
    """The ROC AUC (:func:`roc_auc`) with a confidence interval.

    Args:
      scores, labels: as in :func:`roc_auc`.
      confidence: coverage of the two-sided interval, in (0, 1).
      method: ``"bootstrap"``: percentile interval of the AUCs of ``num_resamples`` stratified
        resamples (positives and negatives each resampled with replacement, so every resample has
        both classes), drawn from ``numpy.random.default_rng(seed)``: the same inputs give the same
        interval. ``"hanley_mcneil"``: ``AUC +- z * SE`` with Hanley & McNeil's standard error
        (eq. 2: ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``), clipped to [0, 1].
      num_resamples: bootstrap resamples.
      seed: the bootstrap's seed.

    Returns:
      ``Interval(auc, low, high, confidence)``.

    Raises:
      ValueError: as :func:`roc_auc`, an unknown method, or ``num_resamples < 1``.

    References:
      Hanley & McNeil, Radiology 143 (1982), eq. 2; Efron & Tibshirani, "An Introduction to the
      Bootstrap" (1993), ch. 13 (percentile intervals).
    """
    confidence = _check_confidence(confidence)
    s, y = _scores_and_labels(scores, labels)
    wins = _win_matrix(s[y], s[~y])
    n1, n0 = wins.shape
    auc = float(wins.mean())
    if method == "hanley_mcneil":
        q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
        var = (auc * (1.0 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)
        h = normal_quantile(0.5 * (1.0 + confidence)) * math.sqrt(max(var, 0.0))
        return Interval(auc, max(0.0, auc - h), min(1.0, auc + h), confidence)
    if method != "bootstrap":
        raise ValueError(f"method: expected 'bootstrap' or 'hanley_mcneil', got {method!r}")
    if int(num_resamples) < 1:
        raise ValueError(f"num_resamples: need at least 1, got {num_resamples}")
    rng = np.random.default_rng(seed)
    # A resample's AUC is the mean of the win matrix weighted by how often each example was drawn.
    c1 = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=int(num_resamples)).astype(np.float64)
    c0 = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=int(num_resamples)).astype(np.float64)
    aucs = np.einsum("bi,ij,bj->b", c1, wins, c0) / (n1 * n0)
    alpha = 0.5 * (1.0 - confidence)
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return Interval(auc, float(low), float(high), confidence)
