"""GAE and discounted returns: NumPy loop reference, limits in lambda, scan == associative_scan."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.algos import discounted_returns, gae_advantages

SETTINGS = settings(max_examples=15, deadline=None)
B, T = 3, 10  # fixed shapes: every jitted function below compiles once


# ----------------------------------------------------------------------------- references


def episodes(mask, segment_ids):
    """The valid positions of each row, split into episodes: lists of time indices."""
    out = []
    for b in range(mask.shape[0]):
        row, current, last_seg = [], [], None
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            seg = None if segment_ids is None else segment_ids[b, t]
            if current and seg != last_seg:
                row.append(current)
                current = []
            current.append(t)
            last_seg = seg
        if current:
            row.append(current)
        out.append(row)
    return out


def np_gae(rewards, values, mask, gamma, lam, segment_ids=None):
    """Float64 GAE by the textbook backward loop over each episode's valid steps."""
    adv = np.zeros(rewards.shape)
    for b, row in enumerate(episodes(mask, segment_ids)):
        for steps in row:
            running = 0.0
            for k in reversed(range(len(steps))):
                t = steps[k]
                next_value = values[b, steps[k + 1]] if k + 1 < len(steps) else 0.0
                delta = rewards[b, t] + gamma * next_value - values[b, t]
                running = delta + gamma * lam * running
                adv[b, t] = running
    return adv


def np_discounted_return(rewards, mask, gamma, segment_ids=None):
    """Float64 ``sum_k gamma^k r_{t+k}`` by explicit double sums over each episode."""
    out = np.zeros(rewards.shape)
    for b, row in enumerate(episodes(mask, segment_ids)):
        for steps in row:
            for k, t in enumerate(steps):
                out[b, t] = sum(gamma ** (j - k) * rewards[b, steps[j]] for j in range(k, len(steps)))
    return out


def np_td_error(rewards, values, mask, gamma, segment_ids=None):
    out = np.zeros(rewards.shape)
    for b, row in enumerate(episodes(mask, segment_ids)):
        for steps in row:
            for k, t in enumerate(steps):
                next_value = values[b, steps[k + 1]] if k + 1 < len(steps) else 0.0
                out[b, t] = rewards[b, t] + gamma * next_value - values[b, t]
    return out


# ----------------------------------------------------------------------------- inputs


def make_batch(rng, layout):
    rewards = rng.normal(size=(B, T))
    values = rng.normal(size=(B, T))
    lengths = rng.integers(0, T + 1, size=(B, 1))
    segment_ids = None
    if layout == "right":
        mask = np.arange(T)[None] < lengths
    elif layout == "left":
        mask = np.arange(T)[None] >= T - lengths
    elif layout == "holes":
        mask = rng.random((B, T)) > 0.35
    elif layout == "packed":
        mask = rng.random((B, T)) > 0.2
        segment_ids = np.cumsum(rng.random((B, T)) > 0.7, axis=1).astype(np.int32) + 1
        segment_ids = np.where(mask, segment_ids, 0)
    else:
        raise AssertionError(layout)
    return rewards, values, mask, segment_ids


LAYOUTS = ["right", "left", "holes", "packed"]


@functools.partial(jax.jit, static_argnames=("method",))
def jit_gae(rewards, values, mask, segment_ids, gamma, lam, method):
    return gae_advantages(rewards, values, mask, gamma=gamma, lam=lam, segment_ids=segment_ids,
                          method=method)


def gae(rewards, values, mask, segment_ids, gamma, lam, method="associative_scan"):
    seg = np.zeros((B, T), np.int32) if segment_ids is None else segment_ids
    return jit_gae(rewards, values, mask, seg, gamma, lam, method)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", ["associative_scan", "scan"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gae_matches_numpy(method, layout):
    rng = np.random.default_rng(LAYOUTS.index(layout))
    rewards, values, mask, seg = make_batch(rng, layout)
    out = gae(rewards, values, mask, seg, 0.97, 0.9, method)
    want = np_gae(rewards, values, mask, 0.97, 0.9, seg)
    assert out.advantages.dtype == jnp.float32
    np.testing.assert_allclose(out.advantages, want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(out.returns, np.where(mask, want + values, 0.0), rtol=2e-5, atol=2e-5)


def test_gae_without_mask_or_segments_matches_numpy():
    rng = np.random.default_rng(11)
    rewards, values = rng.normal(size=(2, 7)), rng.normal(size=(2, 7))
    full = np.ones((2, 7), bool)
    for method in ("associative_scan", "scan"):
        run = jax.jit(lambda r, v: gae_advantages(r, v, gamma=0.9, lam=0.5, method=method))
        out = run(rewards, values)
        np.testing.assert_allclose(out.advantages, np_gae(rewards, values, full, 0.9, 0.5),
                                   rtol=2e-5, atol=2e-5)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(LAYOUTS), st.floats(0.0, 1.0),
       st.floats(0.0, 1.0))
def test_scan_equals_associative_scan(seed, layout, gamma, lam):
    rewards, values, mask, seg = make_batch(np.random.default_rng(seed), layout)
    fast = gae(rewards, values, mask, seg, gamma, lam, "associative_scan")
    ref = gae(rewards, values, mask, seg, gamma, lam, "scan")
    np.testing.assert_allclose(fast.advantages, ref.advantages, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.returns, ref.returns, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(LAYOUTS), st.floats(0.0, 1.0))
def test_lambda_one_is_discounted_return_minus_value(seed, layout, gamma):
    rewards, values, mask, seg = make_batch(np.random.default_rng(seed), layout)
    adv = gae(rewards, values, mask, seg, gamma, 1.0).advantages
    want = np.where(mask, np_discounted_return(rewards, mask, gamma, seg) - values, 0.0)
    np.testing.assert_allclose(adv, want, rtol=2e-5, atol=2e-5)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(LAYOUTS), st.floats(0.0, 1.0))
def test_lambda_zero_is_td_error(seed, layout, gamma):
    rewards, values, mask, seg = make_batch(np.random.default_rng(seed), layout)
    adv = gae(rewards, values, mask, seg, gamma, 0.0).advantages
    np.testing.assert_allclose(adv, np_td_error(rewards, values, mask, gamma, seg),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("method", ["associative_scan", "scan"])
def test_discounted_returns_matches_numpy(method):
    rng = np.random.default_rng(12)
    rewards, _, mask, seg = make_batch(rng, "packed")
    run = jax.jit(discounted_returns, static_argnames=("method",))
    got = run(rewards, mask, gamma=0.8, segment_ids=seg, method=method)
    np.testing.assert_allclose(got, np_discounted_return(rewards, mask, 0.8, seg),
                               rtol=2e-5, atol=2e-5)


def test_vmap_over_lambda_equals_python_loop():
    rng = np.random.default_rng(13)
    rewards, values, mask, seg = make_batch(rng, "holes")
    lams = jnp.array([0.0, 0.5, 0.95, 1.0])
    one = jax.jit(lambda lam: gae_advantages(rewards, values, mask, gamma=0.99, lam=lam))
    swept = jax.jit(jax.vmap(one))(lams)
    for k, lam in enumerate([0.0, 0.5, 0.95, 1.0]):
        np.testing.assert_allclose(swept.advantages[k], one(lam).advantages, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(swept.advantages[k], np_gae(rewards, values, mask, 0.99, lam),
                                   rtol=2e-5, atol=2e-5)


def test_changing_gamma_or_lambda_does_not_retrace():
    rng = np.random.default_rng(14)
    rewards, values, mask, _ = make_batch(rng, "right")
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(gamma, lam):
        return gae_advantages(rewards, values, mask, gamma=gamma, lam=lam).advantages

    for gamma, lam in [(1.0, 0.95), (0.99, 1.0), (0.5, 0.0)]:
        np.testing.assert_allclose(run(gamma, lam), np_gae(rewards, values, mask, gamma, lam),
                                   rtol=2e-5, atol=2e-5)


def test_gradient_through_values():
    """d(sum A)/dV by the chain rule on the NumPy loop's linear map, against jax.grad."""
    rng = np.random.default_rng(15)
    rewards, values, mask, seg = make_batch(rng, "holes")
    gamma, lam = 0.9, 0.8
    for method in ("associative_scan", "scan"):
        grad = jax.jit(jax.grad(lambda v: jnp.sum(gae_advantages(
            rewards, v, mask, gamma=gamma, lam=lam, segment_ids=seg, method=method).advantages)))(
            jnp.asarray(values, jnp.float32))
        eye = np.eye(B * T).reshape(B * T, B, T)
        # GAE is affine in V: the gradient is the sum of the linear part's columns.
        base = np_gae(rewards, np.zeros_like(values), mask, gamma, lam, seg).sum()
        want = np.array([np_gae(rewards, e, mask, gamma, lam, seg).sum() - base for e in eye])
        np.testing.assert_allclose(grad.reshape(-1), want, rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_field():
    r = np.zeros((2, 3))
    with pytest.raises(ValueError, match="values"):
        gae_advantages(r, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="lam"):
        gae_advantages(r, r, lam=1.5)
    with pytest.raises(ValueError, match="gamma"):
        gae_advantages(r, r, gamma=-0.1)
    with pytest.raises(ValueError, match="method"):
        gae_advantages(r, r, method="pscan")
    with pytest.raises(ValueError, match="mask"):
        gae_advantages(r, r, np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="segment_ids"):
        gae_advantages(r, r, segment_ids=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="rewards"):
        gae_advantages(np.zeros(3), np.zeros(3))
