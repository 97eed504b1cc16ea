"""ROC AUC and its intervals: the Mann-Whitney statistic, Hanley-McNeil's standard error, a seeded
stratified bootstrap."""

import math

import numpy as np
import pytest
import scipy.stats

from r1jax.eval.stats import auc_interval, roc_auc


def test_auc_is_the_mann_whitney_statistic_with_half_ties():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # rounded: ties across the classes
    y = rng.random(60) < 0.4
    u = scipy.stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    assert roc_auc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)
    assert roc_auc([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.0, 1.0, 2.0, 3.0], [1, 1, 0, 0]) == 0.0
    assert roc_auc([1.0, 1.0], [1, 0]) == 0.5


def test_hanley_mcneil_by_hand():
    s = np.r_[np.arange(10.0), np.arange(10.0) + 4.5]
    y = np.r_[np.zeros(10), np.ones(10)]
    a = roc_auc(s, y)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + 9 * (q1 - a * a) + 9 * (q2 - a * a)) / 100)
    iv = auc_interval(s, y, method="hanley_mcneil")
    assert iv.estimate == a and iv.low == pytest.approx(a - 1.959964 * se, abs=1e-6)
    assert iv.high == pytest.approx(min(1.0, a + 1.959964 * se), abs=1e-6)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.random(80) < 0.5
    s = rng.normal(size=80) + 1.0 * y
    iv = auc_interval(s, y, num_resamples=500, seed=3)
    assert iv == auc_interval(s, y, num_resamples=500, seed=3)
    assert 0.0 <= iv.low < iv.estimate < iv.high <= 1.0 and iv.low > 0.5
    hm = auc_interval(s, y, method="hanley_mcneil")
    assert abs(iv.half_width - hm.half_width) < 0.05  # two estimates of the same spread


@pytest.mark.parametrize("scores, labels, msg", [
    ([1.0, 2.0], [1, 1], "both classes"),
    ([1.0, 2.0], [1, 2], "must be 0 or 1"),
    ([1.0, 2.0], [1], "expected 2 labels"),
    ([1.0, float("nan")], [1, 0], "non-finite"),
])
def test_bad_input(scores, labels, msg):
    with pytest.raises(ValueError, match=msg):
        roc_auc(scores, labels)
    with pytest.raises(ValueError, match="method"):
        auc_interval([1.0, 0.0], [1, 0], method="delong")
