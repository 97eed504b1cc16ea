"""Truncated importance weights, DAPO overlong shaping and dynamic sampling against NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.algos import (apply_overlong_penalty, dynamic_sampling_mask, overlong_penalty,
                         truncated_is_weights)

SETTINGS = settings(max_examples=20, deadline=None)


def np_is_weights(trainer_logp, sampler_logp, mask, cap, level, mode):
    weights, capped = np.zeros(mask.shape), np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        valid = [t for t in range(mask.shape[1]) if mask[b, t]]
        diffs = {t: float(trainer_logp[b, t]) - float(sampler_logp[b, t]) for t in valid}
        for t in valid:
            if level == "token":
                w = np.exp(diffs[t])
            elif level == "sequence":
                w = np.prod([np.exp(d) for d in diffs.values()])
            else:
                w = np.prod([np.exp(d) for d in diffs.values()]) ** (1.0 / len(valid))
            capped[b, t] = w > cap
            if mode == "truncate":
                weights[b, t] = min(w, cap)
            else:
                weights[b, t] = w if w <= cap else 0.0
    return weights, capped


def np_overlong(length, max_len, cache_len):
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return ((max_len - cache_len) - length) / cache_len
    return -1.0


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_is_weights_match_numpy(level, mode):
    rng = np.random.default_rng(0)
    trainer = np.float32(rng.normal(size=(5, 6)) - 2)
    # A per-sequence bias so that sequence-level weights spread on both sides of the cap too.
    rollout = np.float32(trainer + rng.normal(size=(5, 6)) * 0.3 + rng.normal(size=(5, 1)) * 0.3)
    mask = np.arange(6)[None] < rng.integers(1, 7, size=(5, 1))
    out = truncated_is_weights(trainer, rollout, mask, cap=1.3, level=level, mode=mode)
    want_w, want_capped = np_is_weights(trainer, rollout, mask, 1.3, level, mode)
    np.testing.assert_allclose(out.weights, want_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out.capped, want_capped)
    assert 0 < want_capped.sum() < mask.sum()  # both kinds of token are exercised


def test_is_weights_at_cap_and_without_gradient():
    trainer = np.log(np.array([[2.0, 2.0, 1.0]], np.float32))
    rollout = np.zeros((1, 3), np.float32)
    cap = float(jnp.exp(jnp.float32(trainer[0, 0])))  # exactly the float32 weight
    for mode in ("truncate", "mask"):
        out = truncated_is_weights(trainer, rollout, cap=cap, mode=mode)
        np.testing.assert_array_equal(out.capped, 0.0)
        np.testing.assert_allclose(out.weights, [[cap, cap, 1.0]])
    grad = jax.grad(lambda t: jnp.sum(truncated_is_weights(t, rollout, cap=10.0).weights))(
        jnp.asarray(trainer))
    np.testing.assert_array_equal(grad, 0.0)


def test_is_weights_vmap_over_cap():
    rng = np.random.default_rng(1)
    trainer = np.float32(rng.normal(size=(2, 4)))
    rollout = np.float32(trainer + rng.normal(size=(2, 4)))
    caps = jnp.array([0.5, 1.0, 2.0])
    swept = jax.vmap(lambda c: truncated_is_weights(trainer, rollout, cap=c).weights)(caps)
    for k, cap in enumerate([0.5, 1.0, 2.0]):
        want, _ = np_is_weights(trainer, rollout, np.ones((2, 4), bool), cap, "token", "truncate")
        np.testing.assert_allclose(swept[k], want, rtol=1e-5)


@SETTINGS
@given(st.lists(st.integers(0, 40), min_size=8, max_size=8), st.integers(8, 32),
       st.integers(1, 8))
def test_overlong_penalty_matches_eq_13(lengths, max_len, cache_len):
    got = overlong_penalty(np.array(lengths), max_len=max_len, cache_len=cache_len)
    want = [np_overlong(x, max_len, cache_len) for x in lengths]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(got) <= 0) and np.all(np.asarray(got) >= -1)


def test_overlong_penalty_is_traceable_and_applied():
    lengths = np.array([[10, 17, 20], [25, 18, 1]])
    rewards = np.ones((2, 3), np.float32)
    jitted = jax.jit(lambda l, m, c: overlong_penalty(l, max_len=m, cache_len=c))
    np.testing.assert_allclose(jitted(lengths, 20, 4),
                               [[0, -0.25, -1.0], [-1, -0.5, 0]], rtol=1e-6)
    mask = np.array([[True, True, True], [True, False, True]])
    got = apply_overlong_penalty(rewards, lengths, max_len=20, cache_len=4, mask=mask)
    np.testing.assert_allclose(got, [[1, 0.75, 0.0], [0, 0, 1]], rtol=1e-6)


def test_dynamic_sampling_mask_matches_numpy():
    rewards = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1], [0.5, 0.5, 0.2, 0.5],
                        [1, 0, 0, 0], [3, 2, 3, 3]], np.float32)
    mask = np.ones(rewards.shape, bool)
    mask[4] = [True, False, False, False]  # one member left: no signal
    mask[5] = [True, False, True, True]     # the differing member is missing: no signal
    want = []
    for i in range(rewards.shape[0]):
        members = [rewards[i, j] for j in range(rewards.shape[1]) if mask[i, j]]
        want.append(len(members) >= 2 and len(set(members)) > 1)
    np.testing.assert_array_equal(dynamic_sampling_mask(rewards, mask), want)
    np.testing.assert_array_equal(dynamic_sampling_mask(rewards),
                                  [False, False, True, True, True, True])


def test_bad_inputs_name_the_field():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="level"):
        truncated_is_weights(x, x, level="batch")
    with pytest.raises(ValueError, match="mode"):
        truncated_is_weights(x, x, mode="clip")
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(x, x, cap=0.0)
    with pytest.raises(ValueError, match="sampler_logp"):
        truncated_is_weights(x, x[:, :1])
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(np.array([3]), max_len=4, cache_len=8)
    with pytest.raises(ValueError, match="max_len"):
        overlong_penalty(np.array([3]), max_len=0, cache_len=8)
    with pytest.raises(ValueError, match="lengths"):
        apply_overlong_penalty(x, np.zeros(3), max_len=4, cache_len=2)
    with pytest.raises(ValueError, match="rewards"):
        dynamic_sampling_mask(np.zeros(3))
