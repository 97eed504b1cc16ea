"""Confidence intervals: t quantiles against a printed table and closed forms, Wilson, Welch.

The t distribution comes from scipy.stats; no expected number here is computed with it: each is a
published table value, a closed form written in this file, or (marked) the output of another
scipy routine (``ttest_ind``) computed once and pasted.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.eval import (Interval, normal_quantile, t_cdf, t_interval, t_quantile,
                        welch_interval, wilson_interval)

# Percentage points of Student's t, as printed (3 decimals) in standard tables
# (e.g. Abramowitz & Stegun Table 26.10; any statistics textbook appendix).
T_TABLE = {
    0.975: {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
            9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 29: 2.045, 30: 2.042, 60: 2.000,
            120: 1.980},
    0.95: {1: 6.314, 2: 2.920, 4: 2.132, 10: 1.812, 30: 1.697, 120: 1.658},
    0.995: {1: 63.657, 2: 9.925, 4: 4.604, 10: 3.169, 30: 2.750, 120: 2.617},
    0.9: {1: 3.078, 4: 1.533, 10: 1.372, 30: 1.310},
}


@pytest.mark.parametrize("q", sorted(T_TABLE))
def test_t_quantile_matches_printed_table(q):
    for df, expected in T_TABLE[q].items():
        assert t_quantile(q, df) == pytest.approx(expected, abs=5.5e-4), (q, df)
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4)


def t4_quantile(q: float) -> float:
    """Closed-form t quantile for df = 4: ``2 sqrt(c - 1)``, ``c = cos(arccos(sqrt(a)) / 3) / sqrt(a)``,
    ``a = 4 q (1 - q)``, for ``q > 1/2`` (Hill, Comm. ACM 13(10) (1970))."""
    a = 4 * q * (1 - q)
    return 2 * math.sqrt(math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a) - 1)


@pytest.mark.parametrize("q", [0.55, 0.8, 0.975, 0.999, 0.99999])
def test_t_quantile_closed_forms(q):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10)
    assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-10)
    assert t_quantile(q, 4) == pytest.approx(t4_quantile(q), rel=1e-9)


@pytest.mark.parametrize("t", [-30.0, -2.0, -0.3, 0.0, 0.7, 4.0, 100.0])
def test_t_cdf_closed_forms(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12, abs=1e-15)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12,
                                        abs=1e-15)


def cornish_fisher(q: float, df: float) -> float:
    """t quantile by its expansion around the normal one (A&S 26.7.5), to order df^-2."""
    z = normal_quantile(q)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@pytest.mark.parametrize("df", [1e4, 1e5, 1e6, 1e9])
def test_large_df_agrees_with_cornish_fisher(df):
    for q in (0.9, 0.975, 0.995):
        assert t_quantile(q, df) == pytest.approx(cornish_fisher(q, df), rel=1e-11)


def test_normal_quantile_table():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.995) == pytest.approx(2.575829, abs=1e-6)
    assert normal_quantile(0.5) == 0.0


@settings(max_examples=20, deadline=None)
@given(st.floats(0.001, 0.999), st.floats(0.2, 500.0))
def test_quantile_inverts_cdf_and_is_antisymmetric(q, df):
    t = t_quantile(q, df)
    assert t_cdf(t, df) == pytest.approx(q, abs=1e-10)
    assert t_quantile(1 - q, df) == pytest.approx(-t, rel=1e-9, abs=1e-12)


def test_non_integer_df_lies_between_neighbours():
    assert t_quantile(0.975, 5) < t_quantile(0.975, 4.5) < t_quantile(0.975, 4)


@pytest.mark.parametrize("q,df,msg", [(0.0, 3, "q: probability"), (1.0, 3, "q: probability"),
                                      (0.9, 0, "df: degrees of freedom"),
                                      (0.9, float("nan"), "df: degrees of freedom")])
def test_quantile_bad_input(q, df, msg):
    with pytest.raises(ValueError, match=msg):
        t_quantile(q, df)


def test_t_interval_by_hand():
    # mean 3, s = sqrt(2.5), se = sqrt(0.5), t_{0.975,4} = 2.7764451 (table value 2.776).
    iv = t_interval([1, 2, 3, 4, 5])
    assert isinstance(iv, Interval) and iv.confidence == 0.95
    assert iv.estimate == 3.0
    assert iv.half_width == pytest.approx(2.776 * math.sqrt(0.5), abs=5e-4)
    h = t4_quantile(0.975) * math.sqrt(0.5)
    assert (iv.low, iv.high) == pytest.approx((3 - h, 3 + h), rel=1e-9)
    iv90 = t_interval([0.5, 0.7], confidence=0.90)  # df = 1: t = 6.314, se = 0.1
    assert iv90.half_width == pytest.approx(6.314 * 0.1, abs=1e-4)


def test_t_interval_edge_cases():
    flat = t_interval([0.4, 0.4, 0.4])
    assert flat.estimate == pytest.approx(0.4) and flat.half_width < 1e-15
    with pytest.raises(ValueError, match="at least 2 values"):
        t_interval([0.5])
    with pytest.raises(ValueError, match=r"values: non-finite value nan at index 1"):
        t_interval([0.5, float("nan")])
    with pytest.raises(ValueError, match="expected a 1-D sequence"):
        t_interval([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"confidence: must be in \(0, 1\)"):
        t_interval([1.0, 2.0], confidence=95)


def test_welch_equal_variances_has_2n_minus_2_df():
    # Same spread and size: Welch's df = 2 (n - 1) = 8; se = sqrt(2 * 2.5 / 5) = 1.
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [x + 0.5 for x in a]
    iv = welch_interval(a, b)
    assert iv.estimate == pytest.approx(-0.5)
    assert iv.half_width == pytest.approx(2.306, abs=5e-4)  # t_{0.975, 8}


def test_welch_unequal_variances():
    a, b = [1, 2, 3, 4, 8.0], [0, 0.5, 1, 1.3, 1.2]
    iv = welch_interval(a, b)
    # scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(), computed once:
    assert (iv.low, iv.high) == pytest.approx((-0.5234592896810293, 6.123459289681029), rel=1e-9)
    assert welch_interval([1.0, 1.0], [0.0, 0.0]) == Interval(1.0, 1.0, 1.0, 0.95)
    # A constant group: Welch's df falls to n_a - 1 = 4, se = s_a / sqrt(5) with s_a^2 = 7.3.
    iv = welch_interval(a, [0.5] * 7)
    assert iv.estimate == pytest.approx(3.1)
    assert iv.half_width == pytest.approx(t4_quantile(0.975) * math.sqrt(7.3 / 5), rel=1e-9)
    with pytest.raises(ValueError, match="b: Welch's interval needs at least 2 values"):
        welch_interval(a, [1.0])


def test_wilson_known_values():
    iv = wilson_interval(5, 10)
    assert iv.estimate == 0.5
    # 5 of 10 at 95%: the Wilson interval is [0.2366, 0.7634] (4 decimals).
    assert (iv.low, iv.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # At x = 0 the interval is [0, z^2 / (n + z^2)]; at x = n it mirrors.
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.0, z2 / (10 + z2), 0.95))
    assert wilson_interval(10, 10) == pytest.approx((1.0, 10 / (10 + z2), 1.0, 0.95))
    # Wider at higher confidence.
    assert wilson_interval(5, 10, 0.99).low < iv.low


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_estimate_inside_unit_interval(xn):
    x, n = xn
    iv = wilson_interval(x, n)
    assert 0.0 <= iv.low <= iv.estimate <= iv.high <= 1.0
    # Symmetry: failures instead of successes mirror the interval.
    mirror = wilson_interval(n - x, n)
    assert mirror.low == pytest.approx(1 - iv.high, abs=1e-12)


@pytest.mark.parametrize("x,n,exc,msg", [(3, 0, ValueError, "trials: need at least 1"),
                                         (4, 3, ValueError, r"successes: must be in \[0, tr"),
                                         (1.0, 3, TypeError, "successes: expected an integer"),
                                         (1, True, TypeError, "trials: expected an integer")])
def test_wilson_bad_input(x, n, exc, msg):
    with pytest.raises(exc, match=msg):
        wilson_interval(x, n)


def test_interval_str_and_numpy_inputs():
    iv = t_interval(np.array([0.1, 0.2, 0.3]))
    assert str(iv).startswith("0.2 [")
