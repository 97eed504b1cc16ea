"""Confidence intervals for accuracies across seeds and problems (no SciPy).

* :func:`t_interval` - mean of a few runs (e.g. final accuracy of 5 seeds) with a Student-t
  interval: ``mean +- t_{(1+conf)/2, n-1} * s / sqrt(n)``.
* :func:`welch_interval` - difference of two such means (GRPO minus PPO-lambda) with Welch's
  unequal-variance interval and the Welch-Satterthwaite degrees of freedom.
* :func:`wilson_interval` - a binomial proportion (``x`` solved out of ``n`` problems): the Wilson
  score interval, which stays inside [0, 1] and behaves at ``x = 0`` or ``x = n``.

Student-t quantiles are computed, not tabulated: the t distribution function is expressed through
the regularised incomplete beta function, evaluated by its continued fraction, and inverted by
bisection (:func:`t_cdf`, :func:`t_quantile`). Normal quantiles come from the standard library
(``statistics.NormalDist``). Tests check both against published tables.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Interval", "t_cdf", "t_quantile", "normal_quantile", "t_interval",
           "welch_interval", "wilson_interval"]

_EPS = 1e-15
_TINY = 1e-300
_MAX_CF_TERMS = 100_000
_LARGE_DF = 1e5  # beyond: Fisher's asymptotic expansion of the t distribution function


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


def _beta_cf(x: float, a: float, b: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), ``x < (a+1)/(a+b+2)``.

    ``I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 1 / (1 + d_1 / (1 + d_2 / (1 + ...)))`` with
    ``d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1))`` and ``d_{2m} = m(b-m) x / ((a+2m-1)(a+2m))``
    (Abramowitz & Stegun 26.5.8). Returns the value of the fraction ``1 / (1 + d_1 / ...)``.
    """
    f = 1.0  # b_0 = 1
    c = f
    d = 0.0
    for j in range(1, _MAX_CF_TERMS):
        m = j // 2
        if j % 2:  # odd: d_{2m+1}
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:      # even: d_{2m}
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coef * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + coef / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < _EPS:
            return 1.0 / f
    raise RuntimeError(f"incomplete beta continued fraction did not converge "
                       f"(x={x}, a={a}, b={b})")


def _log_beta(a: float, b: float) -> float:
    """``log B(a, b)``; for ``b = 1/2`` and large ``a`` without cancelling two huge lgammas."""
    if b == 0.5 and a >= 1e3:
        # log G(a + 1/2) - log G(a) = log(a)/2 - 1/(8a) + 1/(192a^3) + O(a^-5) (Stirling).
        return math.lgamma(0.5) - (0.5 * math.log(a) - 1.0 / (8.0 * a) + 1.0 / (192.0 * a ** 3))
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc(a: float, b: float, x: float, one_minus_x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``; ``one_minus_x`` passed separately for accuracy."""
    if x <= 0.0:
        return 0.0
    if one_minus_x <= 0.0:
        return 1.0
    log_x = math.log1p(-one_minus_x) if one_minus_x < 0.5 else math.log(x)
    log_1mx = math.log1p(-x) if x < 0.5 else math.log(one_minus_x)
    log_front = a * log_x + b * log_1mx - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_cf(one_minus_x, b, a) / b


def _t_sf(t: float, df: float) -> float:
    """Upper tail ``P(T > t)`` of Student's t for ``t >= 0``.

    ``I_{df/(df+t^2)}(df/2, 1/2) / 2`` (A&S 26.7) up to ``df = _LARGE_DF``. Beyond, the continued
    fraction converges too slowly near ``t ~ 2``, and Fisher's expansion in powers of ``1/df``
    is used instead: ``P(T > t) = Q(t) + phi(t) [(t^3+t)/(4 df) + (3t^7-7t^5-5t^3-3t)/(96 df^2)]
    + O(df^-3)``, an error below 1e-15 at ``df > 1e5`` (Fisher, Metron 5, 1925).
    """
    if df > _LARGE_DF:
        phi = math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
        t3, t5, t7 = t ** 3, t ** 5, t ** 7
        correction = (t3 + t) / (4.0 * df) + (3 * t7 - 7 * t5 - 5 * t3 - 3 * t) / (96.0 * df * df)
        return 0.5 * math.erfc(t / math.sqrt(2.0)) + phi * correction
    t2 = t * t
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def t_cdf(t: float, df: float) -> float:
    """Distribution function of Student's t with ``df`` degrees of freedom.

    Args:
      t: the point at which to evaluate, any real.
      df: degrees of freedom, a positive (not necessarily integer) number.

    Returns:
      ``P(T <= t)`` as a Python float. Exact up to rounding (tail probabilities to about 1e-11
      relative) for ``df <= 1e5``; beyond, Fisher's expansion to order ``df^-2``.

    Raises:
      ValueError: ``df <= 0`` or ``t`` is NaN.

    References:
      Abramowitz & Stegun, Handbook of Mathematical Functions (1964), Section 26.7 (t through
      the incomplete beta function, ``1 - A(t|nu) = I_{nu/(nu+t^2)}(nu/2, 1/2)``) and 26.5.8
      (the continued fraction of the incomplete beta function); R. A. Fisher, "Expansion of
      'Student's' integral in powers of n^-1", Metron 5 (1925) for large ``df``.
    """
    df = _check_df(df)
    t = float(t)
    if math.isnan(t):
        raise ValueError("t: got NaN")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = _t_sf(abs(t), df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """Quantile (inverse distribution function) of Student's t.

    Args:
      q: probability in (0, 1); e.g. 0.975 for a two-sided 95% interval.
      df: degrees of freedom, a positive (not necessarily integer) number.

    Returns:
      ``t`` such that ``P(T <= t) = q``, to about 1e-11 relative accuracy (bisection on the
      distribution function of :func:`t_cdf`). E.g. ``t_quantile(0.975, 4) = 2.7764...``;
      ``t_quantile(q, df)`` tends to :func:`normal_quantile` as ``df`` grows.

    Raises:
      ValueError: ``q`` outside (0, 1) or ``df <= 0``.

    References:
      Abramowitz & Stegun (1964), Section 26.7 and its table of percentage points of t.
    """
    df = _check_df(df)
    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q: probability must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    tail = 1.0 - q
    lo, hi = 0.0, 1.0
    while _t_sf(hi, df) > tail:  # the upper tail decreases in t: grow until it brackets
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_sf(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * hi:
            break
    return 0.5 * (lo + hi)


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
