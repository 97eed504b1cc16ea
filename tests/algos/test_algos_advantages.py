"""Outcome / process advantages against float64 NumPy loops, plus their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.algos import (ADVANTAGES, GROUP_ADVANTAGE_ESTIMATORS, broadcast_to_tokens,
                         drgrpo_advantages, grpo_advantages, last_token_values,
                         process_advantages, reinforce_pp_advantages, rloo_advantages)

SETTINGS = settings(max_examples=20, deadline=None)

# Jitted once per static option and shape (much cheaper than eager op-by-op dispatch).
grpo = jax.jit(grpo_advantages, static_argnames=("std_scaling", "ddof"))
drgrpo = jax.jit(drgrpo_advantages)
rloo = jax.jit(rloo_advantages)
process = jax.jit(process_advantages, static_argnames=("std_scaling", "ddof"))
reinforce_pp = jax.jit(reinforce_pp_advantages)


# ----------------------------------------------------------------------------- references


def np_std(values, ddof):
    values = np.asarray(values, np.float64)
    if len(values) - ddof <= 0:
        return 0.0
    mean = sum(values) / len(values)
    return float(np.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - ddof)))


def np_grpo(rewards, mask, std_scaling, eps, ddof):
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros_like(rewards)
    batch = [rewards[i, j] for i in range(rewards.shape[0]) for j in range(rewards.shape[1])
             if mask[i, j]]
    for i in range(rewards.shape[0]):
        group = [rewards[i, j] for j in range(rewards.shape[1]) if mask[i, j]]
        if not group:
            continue
        mean = sum(group) / len(group)
        for j in range(rewards.shape[1]):
            if not mask[i, j]:
                continue
            a = rewards[i, j] - mean
            if std_scaling == "group":
                a /= np_std(group, ddof) + eps
            elif std_scaling == "batch":
                a /= np_std(batch, ddof) + eps
            out[i, j] = a
    return out


def np_rloo(rewards, mask):
    out = np.zeros(rewards.shape)
    for i in range(rewards.shape[0]):
        members = [j for j in range(rewards.shape[1]) if mask[i, j]]
        if len(members) < 2:
            continue
        for j in members:
            others = [float(rewards[i, k]) for k in members if k != j]
            out[i, j] = rewards[i, j] - sum(others) / len(others)
    return out


def np_process(step_rewards, step_mask, token_mask, eps):
    n, g, t = step_rewards.shape
    out = np.zeros((n, g, t))
    for i in range(n):
        steps = [float(step_rewards[i, j, s]) for j in range(g) for s in range(t) if step_mask[i, j, s]]
        if not steps:
            continue
        mean, std = sum(steps) / len(steps), np_std(steps, 0)
        for j in range(g):
            for tok in range(t):
                if token_mask[i, j, tok]:
                    out[i, j, tok] = sum((step_rewards[i, j, s] - mean) / (std + eps)
                                         for s in range(tok, t) if step_mask[i, j, s])
    return out


def np_reinforce_pp(token_rewards, mask, gamma, eps):
    b, t = token_rewards.shape
    returns = np.zeros((b, t))
    for i in range(b):
        running = 0.0
        for s in reversed(range(t)):
            if mask[i, s]:
                running = token_rewards[i, s] + gamma * running
                returns[i, s] = running
    valid = [returns[i, s] for i in range(b) for s in range(t) if mask[i, s]]
    mean, std = sum(valid) / len(valid), np_std(valid, 0)
    return np.where(mask, (returns - mean) / (std + eps), 0.0)


def random_group_mask(rng, shape, p_missing=0.25):
    return rng.random(shape) > p_missing


# ----------------------------------------------------------------------------- reference tests


@pytest.mark.parametrize("std_scaling", ["group", "batch", "none"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_grpo_matches_numpy(std_scaling, ddof):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 6)) * 3 + 1
    rewards[0] = 2.0  # a constant group: advantage 0 whatever the scaling
    mask = random_group_mask(rng, rewards.shape)
    mask[1] = [True, False, False, False, False, False]  # a group of one
    mask[2] = False  # an empty group
    got = grpo(rewards, mask, std_scaling=std_scaling, eps=1e-4, ddof=ddof)
    want = np_grpo(rewards, mask, std_scaling, 1e-4, ddof)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(got)[~mask], 0.0)


def test_grpo_without_mask_is_all_valid_and_drgrpo_is_no_std():
    rng = np.random.default_rng(1)
    rewards = rng.integers(0, 2, size=(4, 8)).astype(np.float32)
    full = np.ones(rewards.shape, bool)
    np.testing.assert_allclose(grpo(rewards), np_grpo(rewards, full, "group", 1e-6, 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(drgrpo(rewards), np_grpo(rewards, full, "none", 0, 0),
                               atol=1e-6)


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_equal_rewards_give_exactly_zero(name):
    """0.1 is not representable: a naive mean leaves rounding noise that eps=1e-6 would amplify."""
    rewards = np.array([[0.1] * 7, [1e4 + 0.3] * 7, [-2.7] * 7], np.float32)
    got = jax.jit(GROUP_ADVANTAGE_ESTIMATORS[name])(rewards)
    np.testing.assert_array_equal(got, 0.0)
    if name == "grpo":
        np.testing.assert_array_equal(grpo(rewards, eps=0.0), 0.0)
        np.testing.assert_array_equal(grpo(rewards, std_scaling="batch", eps=0.0)[0], 0.0)
    token_rewards = np.full((2, 5), 0.1, np.float32)
    np.testing.assert_array_equal(reinforce_pp(token_rewards, gamma=0.0), 0.0)


def test_rloo_matches_numpy():
    rng = np.random.default_rng(2)
    rewards = rng.normal(size=(6, 5))
    mask = random_group_mask(rng, rewards.shape, 0.3)
    mask[0] = [False, False, True, False, False]
    np.testing.assert_allclose(rloo(rewards, mask), np_rloo(rewards, mask),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rloo(rewards), np_rloo(rewards, np.ones((6, 5), bool)),
                               rtol=1e-5, atol=1e-5)


def test_process_matches_numpy():
    rng = np.random.default_rng(3)
    n, g, t = 3, 4, 9
    token_mask = np.zeros((n, g, t), bool)
    step_mask = np.zeros((n, g, t), bool)
    for i in range(n):
        for j in range(g):
            length = rng.integers(2, t + 1)
            token_mask[i, j, :length] = True
            ends = rng.choice(length, size=rng.integers(1, length + 1), replace=False)
            step_mask[i, j, ends] = True
            step_mask[i, j, length - 1] = True  # the last step ends with the completion
    step_rewards = rng.normal(size=(n, g, t))
    got = process(step_rewards, step_mask, token_mask, eps=1e-3)
    np.testing.assert_allclose(got, np_process(step_rewards, step_mask, token_mask, 1e-3),
                               rtol=2e-5, atol=2e-5)


def test_process_with_one_step_per_completion_is_grpo():
    """One step ending on the last token = outcome supervision (DeepSeekMath §4.1.3 vs §4.1.2)."""
    rng = np.random.default_rng(4)
    n, g, t = 2, 5, 6
    lengths = rng.integers(1, t + 1, size=(n, g))
    token_mask = np.arange(t)[None, None, :] < lengths[..., None]
    step_mask = np.arange(t)[None, None, :] == (lengths[..., None] - 1)
    outcome = rng.normal(size=(n, g))
    step_rewards = np.where(step_mask, outcome[..., None], 99.0)  # off-step entries are ignored
    got = process(step_rewards, step_mask, token_mask)
    want = np.where(token_mask, np.asarray(grpo(outcome))[..., None], 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reinforce_pp_matches_numpy():
    rng = np.random.default_rng(5)
    rewards = rng.normal(size=(4, 7))
    mask = np.arange(7)[None, :] < rng.integers(1, 8, size=(4, 1))
    got = reinforce_pp(rewards, mask, gamma=0.9, eps=1e-6)
    np.testing.assert_allclose(got, np_reinforce_pp(rewards, mask, 0.9, 1e-6), rtol=2e-5, atol=2e-5)


def test_last_token_values_and_broadcast():
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]], bool)
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    want = np.zeros((4, 4))
    want[0, 2], want[1, 2], want[3, 3] = 1.0, 2.0, 4.0
    np.testing.assert_array_equal(last_token_values(scores, mask), want)
    np.testing.assert_array_equal(broadcast_to_tokens(scores, mask), mask * scores[:, None])
    np.testing.assert_array_equal(broadcast_to_tokens(scores.reshape(2, 2), mask),
                                  mask * scores[:, None])


# ----------------------------------------------------------------------------- properties


@st.composite
def grouped_rewards(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Fixed shape (compiled once); the mask makes the groups ragged.
    n, g = 4, 6
    binary = draw(st.booleans())
    rewards = rng.integers(0, 2, size=(n, g)).astype(float) if binary else rng.normal(size=(n, g))
    mask = random_group_mask(rng, (n, g), draw(st.sampled_from([0.0, 0.3, 0.6])))
    return rewards, mask


@SETTINGS
@given(grouped_rewards(), st.sampled_from(["group", "batch", "none"]))
def test_grpo_sums_to_zero_per_group(data, std_scaling):
    rewards, mask = data
    adv = np.asarray(grpo(rewards, mask, std_scaling=std_scaling), np.float64)
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-4)
    np.testing.assert_array_equal(adv[~mask], 0.0)


@SETTINGS
@given(grouped_rewards(), st.floats(0.1, 10.0), st.floats(-5.0, 5.0),
       st.sampled_from(["group", "batch"]))
def test_grpo_std_scaled_is_affine_invariant(data, scale, shift, std_scaling):
    rewards, mask = data
    base = grpo(rewards, mask, std_scaling=std_scaling, eps=0.0)
    moved = grpo(scale * rewards + shift, mask, std_scaling=std_scaling, eps=0.0)
    np.testing.assert_allclose(moved, base, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(grouped_rewards())
def test_rloo_is_scaled_drgrpo(data):
    """RLOO = n / (n - 1) * (r - mean): a distinct formula, an independent check."""
    rewards, mask = data
    n = mask.sum(axis=1, keepdims=True)
    want = np.where(n > 1, n / np.maximum(n - 1, 1), 0.0) * np.asarray(drgrpo(rewards, mask))
    np.testing.assert_allclose(rloo(rewards, mask), want, rtol=1e-5, atol=1e-5)


def test_advantages_are_jit_vmap_grad_safe():
    rng = np.random.default_rng(6)
    rewards = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    eps = jnp.array([1e-6, 0.5, 2.0])
    swept = jax.jit(jax.vmap(lambda e: grpo_advantages(rewards, eps=e)))(eps)
    full = np.ones((3, 4), bool)
    for k, e in enumerate([1e-6, 0.5, 2.0]):
        np.testing.assert_allclose(swept[k], np_grpo(rewards, full, "group", e, 0), rtol=1e-5,
                                   atol=1e-6)
    grad = jax.jit(jax.grad(lambda r: jnp.sum(rloo_advantages(r) ** 2)))(rewards)
    # d/dr sum_i (n/(n-1))^2 (r_i - mean)^2 = 2 (n/(n-1))^2 (r - mean)  (the mean's term cancels).
    centred = np.asarray(rewards) - np.asarray(rewards).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(grad, 2 * (4 / 3) ** 2 * centred, rtol=1e-5, atol=1e-5)


def test_registries_name_the_functions():
    assert GROUP_ADVANTAGE_ESTIMATORS["grpo"] is grpo_advantages
    assert GROUP_ADVANTAGE_ESTIMATORS["drgrpo"] is drgrpo_advantages
    assert GROUP_ADVANTAGE_ESTIMATORS["rloo"] is rloo_advantages
    assert set(ADVANTAGES) == {"grpo", "drgrpo", "rloo", "reinforce_pp", "gae"}
    assert ADVANTAGES.entry("gae").meta == {"needs_critic": True, "kl_in_reward": True, "group_relative": False}
    assert ADVANTAGES.entry("grpo").meta == {"needs_critic": False, "kl_in_reward": False, "group_relative": True}
    with pytest.raises(KeyError, match=r"unknown advantage estimator 'ppo'; registered: grpo, drgrpo"):
        ADVANTAGES["ppo"]
    rewards = np.array([[0.0, 1.0, 1.0]])
    for name, fn in GROUP_ADVANTAGE_ESTIMATORS.items():
        assert jax.eval_shape(fn, rewards).shape == (1, 3), name


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="std_scaling"):
        grpo_advantages(np.zeros((2, 3)), std_scaling="global")
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(np.zeros(6))
    with pytest.raises(ValueError, match="mask"):
        grpo_advantages(np.zeros((2, 3)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(np.zeros((2, 3)), eps=-1.0)
    with pytest.raises(ValueError, match="ddof"):
        grpo_advantages(np.zeros((2, 3)), ddof=2)
    with pytest.raises(TypeError, match="rewards"):
        rloo_advantages(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="step_mask"):
        process_advantages(np.zeros((1, 2, 3)), np.ones((1, 2, 4), bool))
    with pytest.raises(ValueError, match="gamma"):
        reinforce_pp_advantages(np.zeros((2, 3)), gamma=1.5)
