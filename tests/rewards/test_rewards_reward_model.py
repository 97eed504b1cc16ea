"""Reward-model losses (float64 numpy references) and the scalar-head adapter over r1jax.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rewards.reward_model import (
    ValueHeadRewardModel,
    bradley_terry_loss,
    last_token_scores,
    pairwise_accuracy,
    pointwise_bce_loss,
    reward_model_scores,
)


def _np_log_sigmoid(x):
    x = np.asarray(x, np.float64)
    return -np.logaddexp(0.0, -x)


def test_bradley_terry_matches_reference():
    c = np.array([2.0, 0.0, -1.0, 3.5])
    r = np.array([0.0, 0.0, 1.0, 3.0])
    expected = np.mean(-_np_log_sigmoid(c - r))
    assert float(bradley_terry_loss(jnp.asarray(c), jnp.asarray(r))) == pytest.approx(expected, rel=1e-6)
    # log 2 when both scores agree: the model is indifferent.
    assert float(bradley_terry_loss(jnp.zeros(3), jnp.zeros(3))) == pytest.approx(np.log(2.0), rel=1e-6)
    m = 0.5
    expected_m = np.mean(-_np_log_sigmoid(c - r - m))
    assert float(bradley_terry_loss(jnp.asarray(c), jnp.asarray(r), margin=m)) == pytest.approx(expected_m, rel=1e-6)


def test_bradley_terry_gradient_and_extremes():
    c = jnp.array([1.0, -2.0])
    r = jnp.array([0.0, 0.0])
    g = jax.grad(bradley_terry_loss)(c, r)
    d = np.array([1.0, -2.0])
    np.testing.assert_allclose(np.asarray(g), -(1.0 - 1.0 / (1.0 + np.exp(-d))) / 2, rtol=1e-6)
    big = bradley_terry_loss(jnp.array([1e4]), jnp.array([-1e4]))
    wrong = bradley_terry_loss(jnp.array([-1e4]), jnp.array([1e4]))
    assert float(big) == pytest.approx(0.0, abs=1e-6)
    assert float(wrong) == pytest.approx(2e4, rel=1e-6) and np.isfinite(float(wrong))


def test_losses_split_invariant_with_global_denominator():
    rng = np.random.default_rng(0)
    c, r = rng.normal(size=8), rng.normal(size=8)
    w = np.array([1, 1, 1, 0, 1, 1, 0, 1], np.float32)  # two padded pairs
    full = bradley_terry_loss(jnp.asarray(c), jnp.asarray(r), weights=jnp.asarray(w))
    parts = sum(
        bradley_terry_loss(jnp.asarray(c[i : i + 3]), jnp.asarray(r[i : i + 3]), weights=jnp.asarray(w[i : i + 3]),
                           denominator=w.sum())
        for i in range(0, 8, 3)
    )
    assert float(parts) == pytest.approx(float(full), rel=1e-6)
    y = (rng.uniform(size=8) > 0.5).astype(np.float32)
    full = pointwise_bce_loss(jnp.asarray(c), jnp.asarray(y), weights=jnp.asarray(w))
    parts = sum(
        pointwise_bce_loss(jnp.asarray(c[i : i + 4]), jnp.asarray(y[i : i + 4]), weights=jnp.asarray(w[i : i + 4]),
                           denominator=w.sum())
        for i in range(0, 8, 4)
    )
    assert float(parts) == pytest.approx(float(full), rel=1e-6)


def test_pointwise_bce_matches_reference():
    s = np.array([3.0, -2.0, 0.0, 0.7])
    y = np.array([1.0, 0.0, 1.0, 0.25])  # soft labels allowed
    expected = np.mean(-(y * _np_log_sigmoid(s) + (1 - y) * _np_log_sigmoid(-s)))
    assert float(pointwise_bce_loss(jnp.asarray(s), jnp.asarray(y))) == pytest.approx(expected, rel=1e-6)
    g = jax.grad(pointwise_bce_loss)(jnp.asarray(s, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(np.asarray(g), (1 / (1 + np.exp(-s)) - y) / 4, rtol=1e-5)
    assert np.isfinite(float(pointwise_bce_loss(jnp.array([1e4, -1e4]), jnp.array([0.0, 1.0]))))


def test_pairwise_accuracy():
    acc = pairwise_accuracy(jnp.array([1.0, 2.0, 0.0, 5.0]), jnp.array([0.0, 3.0, 0.0, 4.0]))
    assert float(acc) == pytest.approx(0.5)  # the tie counts as wrong


def test_last_token_scores_left_and_right_padding():
    values = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    mask = jnp.array([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(np.asarray(last_token_scores(values, mask)), [2.0, 7.0, 0.0])


# ------------------------------------------------------------------------------------ adapter

import r1jax.models as models  # noqa: E402


@pytest.fixture(scope="module")
def tiny_rm():
    cfg = models.ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                             num_kv_heads=1)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {**jax.jit(models.init_params, static_argnums=0)(cfg, k1), **models.init_value_head(cfg, k2)}
    return params, cfg


def test_adapter_reads_the_value_head_at_the_last_real_token(tiny_rm):
    params, cfg = tiny_rm
    tokens = jnp.array([[5, 6, 7, 8, 0, 0], [0, 0, 9, 3, 4, 1]], jnp.int32)
    mask = tokens != 0
    rm = ValueHeadRewardModel(params, cfg)
    got = np.asarray(rm(tokens, mask))
    hidden = jax.jit(models.forward, static_argnums=1)(params, cfg, tokens, attention_mask=mask)
    per_token = models.value(params, cfg, hidden)
    np.testing.assert_allclose(got, [per_token[0, 3], per_token[1, 5]], rtol=1e-6)
    # Padding does not change a sequence's score: compare with each sequence alone, unpadded.
    alone0 = rm(jnp.array([[5, 6, 7, 8]]), jnp.ones((1, 4), bool))
    alone1 = rm(jnp.array([[9, 3, 4, 1]]), jnp.ones((1, 4), bool))
    np.testing.assert_allclose(got, [float(alone0[0]), float(alone1[0])], rtol=1e-5, atol=1e-6)
    assert got[0] != pytest.approx(got[1])  # different sequences, different scores


def test_safety_adapter_outputs_probabilities(tiny_rm):
    params, cfg = tiny_rm
    tokens = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    raw = ValueHeadRewardModel(params, cfg)(tokens)
    prob = ValueHeadRewardModel(params, cfg, output="sigmoid")(tokens)
    np.testing.assert_allclose(np.asarray(prob), 1 / (1 + np.exp(-np.asarray(raw, np.float64))), rtol=1e-6)
    with pytest.raises(ValueError, match="output"):
        ValueHeadRewardModel(params, cfg, output="tanh")
    with pytest.raises(KeyError, match="value_head"):
        ValueHeadRewardModel({k: v for k, v in params.items() if k != "value_head"}, cfg)
    with pytest.raises(ValueError, match="attention_mask shape"):
        ValueHeadRewardModel(params, cfg)(tokens, jnp.ones((2, 2), bool))


def test_pairwise_training_step_improves_ranking(tiny_rm):
    params, cfg = tiny_rm
    chosen = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
    rejected = jnp.array([[4, 3, 2, 1], [8, 7, 6, 5]], jnp.int32)
    mask = jnp.ones((2, 4), bool)

    def loss_fn(p):
        return bradley_terry_loss(reward_model_scores(p, cfg, chosen, mask), reward_model_scores(p, cfg, rejected, mask))

    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    loss0, grads = value_and_grad(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
    assert float(value_and_grad(stepped)[0]) < float(loss0)
