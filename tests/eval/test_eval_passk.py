"""pass@k against brute-force subset enumeration, exact binomials, known values and properties."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.eval import mean_pass_at_k, pass_at_k


def brute_force_pass_at_k(correct: list[bool], k: int) -> Fraction:
    """Share of k-subsets of the samples that contain at least one correct sample."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    hits = sum(any(correct[i] for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Chen et al. eq. 1 with exact integer binomials."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_brute_force_enumeration(n):
    rng = np.random.default_rng(n)
    for c in range(n + 1):
        # Correct samples at random positions (the estimator only sees the count c).
        hits = set(rng.permutation(n)[:c].tolist())
        correct = [i in hits for i in range(n)]
        for k in range(1, n + 1):
            expected = float(brute_force_pass_at_k(correct, k))
            got = float(pass_at_k(n, c, k))
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (n, c, k)


def test_mean_pass_at_k_matches_brute_force_average():
    rng = np.random.default_rng(0)
    correct = rng.random((6, 7)) < 0.3
    got = mean_pass_at_k(correct, [1, 2, 3, 7])
    for k in (1, 2, 3, 7):
        expected = np.mean([float(brute_force_pass_at_k(list(row), k)) for row in correct])
        assert got[k] == pytest.approx(expected, rel=1e-12)
    assert list(got) == [1, 2, 3, 7]


def test_mean_pass_at_k_accepts_01_integers_and_single_k():
    assert mean_pass_at_k(np.array([[1, 0], [0, 0]]), 1) == {1: pytest.approx(0.25)}


@pytest.mark.parametrize("n,c,k", [(1000, 1, 1), (1000, 37, 10), (200, 150, 60), (64, 5, 8),
                                   (10**6, 1, 1), (10**5, 3, 2)])
def test_matches_exact_binomials_for_large_n(n, c, k):
    # Relative precision also where pass@k is tiny (1e-6 for n = 1e6, c = 1, k = 1).
    assert float(pass_at_k(n, c, k)) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-11)


def test_known_values():
    for n in (1, 2, 5, 16, 64):
        for c in range(n + 1):
            assert float(pass_at_k(n, c, 1)) == pytest.approx(c / n, rel=1e-13, abs=0)
            assert float(pass_at_k(n, c, n)) == (1.0 if c > 0 else 0.0)
    # c = 0 is exactly zero (not -0.0), whatever k.
    zero = pass_at_k(10, 0, 3)
    assert zero == 0.0 and not np.signbit(zero)


def test_vectorised_equals_elementwise_and_broadcasts():
    n = np.array([5, 10, 10, 64, 3])
    c = np.array([0, 3, 10, 7, 1])
    k = np.array([2, 4, 1, 16, 3])
    got = pass_at_k(n, c, k)
    assert got.shape == (5,)
    for i in range(5):
        assert got[i] == float(pass_at_k(int(n[i]), int(c[i]), int(k[i])))
    # Scalar n and k broadcast against a vector of c; 2-D shapes are kept.
    np.testing.assert_allclose(pass_at_k(10, [0, 1, 2], 1), [0.0, 0.1, 0.2], rtol=1e-13)
    assert pass_at_k(np.full((2, 3), 8), np.zeros((2, 3), int), 2).shape == (2, 3)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_properties_in_unit_interval_and_monotone(nck):
    n, c, k = nck
    p = float(pass_at_k(n, c, k))
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-15)
    if k < n:  # more draws never hurt
        assert float(pass_at_k(n, c, k + 1)) >= p - 1e-15
    if c < n:  # more correct samples never hurt
        assert float(pass_at_k(n, c + 1, k)) >= p - 1e-15


def test_k_larger_than_n_is_a_clear_error():
    with pytest.raises(ValueError, match=r"pass@5 needs at least k=5 samples.*index \(1,\).*n=4"):
        pass_at_k([10, 4], [1, 1], 5)
    with pytest.raises(ValueError, match=r"pass@9 needs at least k=9.*n=8"):
        mean_pass_at_k(np.zeros((2, 8), bool), [1, 9])


@pytest.mark.parametrize("n,c,k,exc,msg", [
    (0, 0, 1, ValueError, r"n: need at least one sample.*n=0"),
    (5, 6, 1, ValueError, r"c: number correct must be in \[0, n\], got c=6 with n=5"),
    (5, -1, 1, ValueError, r"c: number correct"),
    (5, 2, 0, ValueError, r"k: must be >= 1, got k=0"),
    (5, 2, 1.0, TypeError, r"k: expected integers"),
    (5.0, 2, 1, TypeError, r"n: expected integers"),
    (5, True, 1, TypeError, r"c: expected integers"),
    ([5, 5], [1, 1, 1], 1, ValueError, r"do not broadcast"),
])
def test_bad_input_raises_naming_the_field(n, c, k, exc, msg):
    with pytest.raises(exc, match=msg):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_bad_input():
    with pytest.raises(ValueError, match=r"correct: expected a \[problems, n\] array"):
        mean_pass_at_k(np.zeros(4, bool), 1)
    with pytest.raises(ValueError, match=r"correct: entries must be 0/1, got 2"):
        mean_pass_at_k(np.array([[0, 2]]), 1)
    with pytest.raises(ValueError, match=r"at least one problem"):
        mean_pass_at_k(np.zeros((0, 3), bool), 1)
    with pytest.raises(ValueError, match=r"ks: need at least one k"):
        mean_pass_at_k(np.zeros((1, 3), bool), [])
    with pytest.raises(TypeError, match=r"k: expected integers"):
        mean_pass_at_k(np.zeros((1, 3), bool), [1.5])
