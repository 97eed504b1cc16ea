"""KL estimators k1 / k2 / k3 and the PPO KL reward penalty against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from r1jax.algos import KL_ESTIMATORS, k1, k2, k3, kl_estimate, kl_penalty_rewards

SETTINGS = settings(max_examples=25, deadline=None)


def np_kl(logp, ref_logp, kind):
    out = np.zeros(np.shape(logp))
    for idx in np.ndindex(out.shape):
        log_r = float(ref_logp[idx]) - float(logp[idx])
        r = np.exp(log_r)
        out[idx] = {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": (r - 1) - log_r}[kind]
    return out


def np_penalty_rewards(scores, kl, mask, beta):
    out = np.zeros(kl.shape)
    for b in range(kl.shape[0]):
        valid = [t for t in range(kl.shape[1]) if mask[b, t]]
        for t in valid:
            out[b, t] = -beta * kl[b, t] + (scores[b] if t == valid[-1] else 0.0)
    return out


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_estimators_match_numpy(kind):
    rng = np.random.default_rng(0)
    logp = np.float32(rng.normal(size=(3, 5)) - 2)
    ref_logp = np.float32(logp + rng.normal(size=(3, 5)))
    mask = rng.random((3, 5)) > 0.3
    got = kl_estimate(logp, ref_logp, mask, kind=kind)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.where(mask, np_kl(logp, ref_logp, kind), 0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(KL_ESTIMATORS[kind](jnp.asarray(ref_logp - logp)),
                               np_kl(logp, ref_logp, kind), rtol=1e-5, atol=1e-6)


def test_estimator_gradients_match_numpy():
    """d/d logp: k1 -> 1, k2 -> (logp - ref), k3 -> 1 - exp(ref - logp)."""
    rng = np.random.default_rng(1)
    logp = np.float32(rng.normal(size=(2, 4)) - 1)
    ref = np.float32(logp + rng.normal(size=(2, 4)))
    want = {"k1": np.ones_like(logp, np.float64), "k2": np.float64(logp) - ref,
            "k3": 1 - np.exp(np.float64(ref) - logp)}
    for kind, w in want.items():
        grad = jax.grad(lambda lp: jnp.sum(kl_estimate(lp, ref, kind=kind)))(jnp.asarray(logp))
        np.testing.assert_allclose(grad, w, rtol=1e-5, atol=1e-6, err_msg=kind)


logps = hnp.arrays(np.float32, (2, 6), elements=st.floats(-30.0, 0.0, width=32))


@SETTINGS
@given(logps, logps)
def test_k3_is_non_negative_and_zero_at_equality(logp, ref_logp):
    got = np.asarray(kl_estimate(logp, ref_logp, kind="k3"))
    assert np.all(got >= 0.0)
    np.testing.assert_array_equal(kl_estimate(logp, logp, kind="k3"), 0.0)
    np.testing.assert_array_equal(kl_estimate(logp, logp, kind="k1"), 0.0)
    assert np.all(np.asarray(kl_estimate(logp, ref_logp, kind="k2")) >= 0.0)


@SETTINGS
@given(hnp.arrays(np.float32, (64,), elements=st.floats(-2.0**-10, 2.0**-10, width=32)))
def test_k3_non_negative_near_zero_log_ratio(log_ratio):
    """Where cancellation would bite: r - 1 - log r with tiny log r."""
    assert np.all(np.asarray(k3(jnp.asarray(log_ratio))) >= 0.0)


def test_k3_is_unbiased_and_k1_too():
    """Monte Carlo over a small categorical: E_pi[k] == KL(pi || ref) for k1 and k3."""
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(pi * np.log(pi / ref)))
    lp, lr = jnp.log(jnp.asarray(pi, jnp.float32)), jnp.log(jnp.asarray(ref, jnp.float32))
    for kind in ("k1", "k3"):
        expectation = float(np.sum(pi * np.asarray(kl_estimate(lp, lr, kind=kind))))
        np.testing.assert_allclose(expectation, exact, rtol=1e-5, err_msg=kind)
    biased = float(np.sum(pi * np.asarray(kl_estimate(lp, lr, kind="k2"))))
    assert abs(biased - exact) > 1e-3


def test_clamps():
    logp = np.array([0.0, 0.0, -50.0], np.float32)
    ref = np.array([-50.0, 3.0, 0.0], np.float32)
    got = kl_estimate(logp, ref, kind="k3", log_ratio_clamp=10.0)
    np.testing.assert_allclose(got, np_kl(np.zeros(3), np.array([-10.0, 3.0, 10.0]), "k3"),
                               rtol=1e-5)
    clamped = kl_estimate(logp, ref, kind="k3", log_ratio_clamp=10.0, clamp=5.0)
    np.testing.assert_allclose(clamped, np.minimum(np.asarray(got), 5.0), rtol=1e-6)
    k1_clamped = kl_estimate(logp, ref, kind="k1", clamp=5.0)
    np.testing.assert_allclose(k1_clamped, [5.0, -3.0, -5.0], rtol=1e-6)
    # Huge log-ratios never overflow into inf / NaN, in value or gradient.
    grad = jax.grad(lambda x: jnp.sum(kl_estimate(x, ref, kind="k3")))(jnp.asarray(logp))
    assert np.all(np.isfinite(grad))


def test_kl_penalty_rewards_match_numpy():
    rng = np.random.default_rng(2)
    kl = np.float32(rng.normal(size=(4, 6)))
    mask = np.arange(6)[None] < np.array([[6], [3], [1], [0]])
    mask[0, 2] = False  # a hole: the score still lands on the last valid token
    scores = np.float32(rng.normal(size=4))
    got = kl_penalty_rewards(scores, kl, mask, beta=0.05)
    np.testing.assert_allclose(got, np_penalty_rewards(scores, kl, mask, 0.05), rtol=1e-6,
                               atol=1e-7)
    betas = jnp.array([0.0, 0.1])
    swept = jax.vmap(lambda b: kl_penalty_rewards(scores, kl, mask, beta=b))(betas)
    np.testing.assert_allclose(swept[1], np_penalty_rewards(scores, kl, mask, 0.1), rtol=1e-5,
                               atol=1e-7)


def test_bad_inputs_name_the_field():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="kind"):
        kl_estimate(x, x, kind="k4")
    with pytest.raises(ValueError, match="ref_logp"):
        kl_estimate(x, x[:, :2])
    with pytest.raises(ValueError, match="clamp"):
        kl_estimate(x, x, clamp=0.0)
    with pytest.raises(ValueError, match="beta"):
        kl_penalty_rewards(np.zeros(2), x, x > -1, beta=-1.0)
    with pytest.raises(ValueError, match="values"):
        kl_penalty_rewards(np.zeros(3), x, x > -1, beta=0.1)
    assert k1(jnp.float32(0.5)) == -0.5 and k2(jnp.float32(2.0)) == 2.0
