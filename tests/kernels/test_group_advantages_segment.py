"""Segment-sum group advantages over ragged groups equal r1jax.algos on the padded layout."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels_testutil import assert_close
from r1jax.algos.advantages import grpo_advantages, rloo_advantages
from r1jax_kernels import segment_group_advantages


def _ragged(sizes, seed, drop=0.0):
    """Flat shuffled rewards/ids/mask and the padded [num_groups, G] layout the algos take."""
    rng = np.random.default_rng(seed)
    g = len(sizes)
    ids = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)]).astype(np.int32)
    rewards = rng.choice([0.0, 0.5, 1.0, 2.0], ids.size).astype(np.float32)
    mask = rng.uniform(size=ids.size) >= drop
    perm = rng.permutation(ids.size)  # groups need not be contiguous
    ids, rewards, mask = ids[perm], rewards[perm], mask[perm]
    width = max(max(sizes), 1)
    padded = np.zeros((g, width), np.float32)
    pmask = np.zeros((g, width), bool)
    where = np.zeros((ids.size, 2), int)
    fill = np.zeros(g, int)
    for k, (i, r, m) in enumerate(zip(ids, rewards, mask)):
        padded[i, fill[i]], pmask[i, fill[i]] = r, m
        where[k] = (i, fill[i])
        fill[i] += 1
    return rewards, ids, mask, padded, pmask, where


SIZES = [3, 1, 5, 2, 4, 0, 6]


@pytest.mark.parametrize("std_scaling", ["group", "batch", "none"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_grpo_equals_algos_on_padded_groups(std_scaling, ddof):
    rewards, ids, mask, padded, pmask, where = _ragged(SIZES, seed=ddof, drop=0.2)
    got = segment_group_advantages(rewards, ids, len(SIZES), mask=mask, std_scaling=std_scaling,
                                   ddof=ddof)
    want = grpo_advantages(padded, pmask, std_scaling=std_scaling, ddof=ddof)
    assert_close(got, np.asarray(want)[where[:, 0], where[:, 1]], 1e-6)


def test_rloo_equals_algos_on_padded_groups():
    rewards, ids, mask, padded, pmask, where = _ragged(SIZES, seed=5, drop=0.2)
    got = segment_group_advantages(rewards, ids, len(SIZES), mask=mask, estimator="rloo")
    want = rloo_advantages(padded, pmask)
    assert_close(got, np.asarray(want)[where[:, 0], where[:, 1]], 1e-6)


_seg_jit = jax.jit(segment_group_advantages, static_argnums=2)
_grpo_jit = jax.jit(grpo_advantages)


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=5, max_size=5), seed=st.integers(0, 99))
def test_property_grpo_matches_algos_for_any_group_sizes(sizes, seed):
    rewards, ids, mask, padded, pmask, where = _ragged(sizes, seed)
    # Fixed shapes (B = 30 with masked padding of id -1, groups padded to 6): one compilation.
    pad = 30 - rewards.size
    rewards_p = np.concatenate([rewards, np.full(pad, 9.0, np.float32)])
    ids_p = np.concatenate([ids, np.full(pad, -1, np.int32)])
    mask_p = np.concatenate([mask, np.zeros(pad, bool)])
    padded_p = np.zeros((5, 6), np.float32)
    pmask_p = np.zeros((5, 6), bool)
    padded_p[:, :padded.shape[1]], pmask_p[:, :pmask.shape[1]] = padded, pmask
    got = _seg_jit(rewards_p, ids_p, 5, mask=mask_p)
    want = np.asarray(_grpo_jit(padded_p, pmask_p))[where[:, 0], where[:, 1]]
    assert_close(got[:rewards.size], want, 1e-6)
    assert np.all(np.asarray(got)[rewards.size:] == 0.0)


def test_jit_with_traced_eps_never_retraces():
    rewards, ids, mask, padded, pmask, where = _ragged(SIZES, seed=7)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(r, i, eps):
        return segment_group_advantages(r, i, len(SIZES), eps=eps)

    for eps in (1e-6, 0.1, 1.0):
        want = np.asarray(grpo_advantages(padded, pmask, eps=eps))[where[:, 0], where[:, 1]]
        assert_close(f(rewards, ids, jnp.float32(eps)), want, 1e-6)
    chex.clear_trace_counter()


def test_bad_group_ids():
    r = jnp.ones(4)
    with pytest.raises(ValueError, match=r"group_ids: id 3 at position 2 is outside \[0, num_groups=3\)"):
        segment_group_advantages(r, jnp.array([0, 1, 3, 2]), 3)
    # A masked entry's id is not checked; it gets advantage 0.
    out = segment_group_advantages(jnp.array([1.0, 0.0, 5.0, 1.0]), jnp.array([0, 0, -1, 0]), 1,
                                   mask=jnp.array([True, True, False, True]))
    assert out[2] == 0.0
    jitted = jax.jit(segment_group_advantages, static_argnums=2)(r, jnp.array([0, 1, 3, 2]), 3)
    assert np.isnan(jitted[2]) and np.isfinite(np.asarray(jitted)[[0, 1, 3]]).all()
    with pytest.raises(TypeError, match="group_ids"):
        segment_group_advantages(r, jnp.zeros(4), 3)
    with pytest.raises(ValueError, match="num_groups"):
        segment_group_advantages(r, jnp.zeros(4, jnp.int32), 0)
    with pytest.raises(ValueError, match="estimator"):
        segment_group_advantages(r, jnp.zeros(4, jnp.int32), 1, estimator="ppo")
