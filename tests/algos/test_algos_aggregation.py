"""Loss aggregation: NumPy references per mode, and split invariance of loss AND gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.algos import (AGGREGATION_MODES, aggregate_loss, clipped_surrogate_loss, kl_estimate,
                         loss_denominator, loss_numerator, token_weights)

SETTINGS = settings(max_examples=20, deadline=None)
B, T, D, V = 6, 5, 3, 7
PAD_T = 2  # extra padding columns some micro-batches get
MAX_LEN = 8.0


def np_aggregate(per_token, mask, mode, max_len=None):
    """Float64 reference straight from the definitions (loops over sequences)."""
    seq_sums, seq_means, n_tokens = [], [], 0
    for i in range(per_token.shape[0]):
        tokens = [float(per_token[i, t]) for t in range(per_token.shape[1]) if mask[i, t]]
        if not tokens:
            continue
        seq_sums.append(sum(tokens))
        seq_means.append(sum(tokens) / len(tokens))
        n_tokens += len(tokens)
    if mode == "token_mean":
        return sum(seq_sums) / n_tokens
    if mode == "seq_mean_token_mean":
        return sum(seq_means) / len(seq_means)
    if mode == "seq_mean_token_sum":
        return sum(seq_sums) / len(seq_sums)
    if mode == "seq_mean_token_sum_norm":
        return sum(seq_sums) / max_len / len(seq_sums)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregation_matches_numpy(mode):
    rng = np.random.default_rng(0)
    per_token = np.float32(rng.normal(size=(5, 7)))
    mask = np.arange(7)[None] < np.array([[7], [1], [0], [4], [2]])
    mask[0, 3] = False
    got = aggregate_loss(per_token, mask, mode, max_len=MAX_LEN)
    np.testing.assert_allclose(got, np_aggregate(per_token, mask, mode, MAX_LEN), rtol=1e-6)
    # numerator / denominator is the same thing, and the padding row counts for nothing.
    den = loss_denominator(mask, mode, max_len=MAX_LEN)
    np.testing.assert_allclose(loss_numerator(per_token, mask, mode) / den, got, rtol=1e-6)
    # Leading batch axes: [2, 5, 7] with a copy of the batch is the same mean.
    stacked = aggregate_loss(np.stack([per_token] * 2), np.stack([mask] * 2), mode, max_len=MAX_LEN)
    np.testing.assert_allclose(stacked, got, rtol=1e-6)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_token_weights_give_the_numerator_even_after_the_tokens_are_shuffled(mode):
    """The weights computed on whole sequences reproduce the float64 numerator; moving every token
    (with its weight) anywhere, as packing does, leaves the weighted sum unchanged."""
    rng = np.random.default_rng(1)
    per_token = np.float32(rng.normal(size=(5, 7)))
    mask = np.arange(7)[None] < np.array([[7], [1], [0], [4], [2]])
    w = np.asarray(token_weights(mask, mode))
    den = np.asarray(loss_denominator(mask, mode, max_len=MAX_LEN))
    np.testing.assert_allclose(np.sum(np.where(mask, per_token, 0) * w) / den,
                               np_aggregate(per_token, mask, mode, MAX_LEN), rtol=1e-6)
    assert np.all(w[~mask] == 0)
    perm = rng.permutation(per_token.size)
    moved = np.where(mask, per_token, 0).reshape(-1)[perm] * w.reshape(-1)[perm]
    # all tokens in one "packed" row: the denominator needs the sequence count given
    packed_den = loss_denominator(mask.reshape(1, -1)[:, perm], mode, max_len=MAX_LEN, num_sequences=4)
    np.testing.assert_allclose(moved.sum() / packed_den, np_aggregate(per_token, mask, mode, MAX_LEN), rtol=1e-5)


def test_empty_batch_gives_zero_not_nan():
    zeros = np.zeros((2, 3), bool)
    for mode in AGGREGATION_MODES:
        got = aggregate_loss(np.ones((2, 3)), zeros, mode, max_len=4.0)
        assert float(got) == 0.0, mode


# ----------------------------------------------------------------------------- split invariance


def token_logp(w, features, targets):
    logits = jnp.einsum("btd,dv->btv", features, w)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


def per_token_loss(w, batch):
    """A GRPO-like per-token loss: clipped surrogate + 0.1 * k3 KL, through a shared weight."""
    logp = token_logp(w, batch["features"], batch["targets"])
    out = clipped_surrogate_loss(logp, batch["old_logp"], batch["adv"], batch["mask"],
                                 eps_low=0.2, eps_high=0.28)
    return out.loss + 0.1 * kl_estimate(logp, batch["ref_logp"], batch["mask"], kind="k3")


@functools.partial(jax.jit, static_argnames=("mode",))
def loss_and_grad(w, batch, denominator, mode):
    def loss(w):
        return aggregate_loss(per_token_loss(w, batch), batch["mask"], mode, denominator=denominator)
    return jax.value_and_grad(loss)(w)


def make_batch(rng):
    features = np.float32(rng.normal(size=(B, T, D)))
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    lengths = rng.integers(0, T + 1, size=(B, 1))
    mask = np.arange(T)[None] < lengths
    old_logp = np.float32(-rng.random((B, T)) * 3)
    ref_logp = np.float32(-rng.random((B, T)) * 3)
    adv = np.float32(np.repeat(rng.normal(size=(B, 1)), T, axis=1))
    return dict(features=features, targets=targets, mask=mask, old_logp=old_logp,
                ref_logp=ref_logp, adv=adv)


def micro_batch(batch, rows, pad_t, rng):
    """Rows ``rows`` of ``batch``, padded to B rows and T + pad_t columns with masked garbage."""
    out = {}
    for key, x in batch.items():
        garbage = {"features": 1e3, "targets": 1, "mask": False, "old_logp": 1e9,
                   "ref_logp": -1e9, "adv": 1e6}[key]
        shape = (B, T + pad_t) + x.shape[2:]
        padded = np.full(shape, garbage, dtype=x.dtype)
        if key == "features":
            padded = np.float32(rng.normal(size=shape) * garbage)
        padded[:len(rows), :T] = x[rows]
        out[key] = padded
    return out


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(AGGREGATION_MODES), st.integers(1, B))
def test_any_micro_batch_split_gives_the_full_batch_loss_and_gradient(seed, mode, num_micro):
    rng = np.random.default_rng(seed)
    batch = make_batch(rng)
    w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    den = loss_denominator(batch["mask"], mode, max_len=MAX_LEN)
    full_loss, full_grad = loss_and_grad(w, batch, den, mode)

    order = rng.permutation(B)
    cuts = np.sort(rng.choice(np.arange(1, B), size=num_micro - 1, replace=False))
    loss_sum, grad_sum = 0.0, jnp.zeros_like(w)
    for rows in np.split(order, cuts):
        micro = micro_batch(batch, rows, int(rng.integers(0, 2)) * PAD_T, rng)
        loss, grad = loss_and_grad(w, micro, den, mode)
        loss_sum, grad_sum = loss_sum + loss, grad_sum + grad

    np.testing.assert_allclose(loss_sum, full_loss, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad_sum, full_grad, rtol=2e-5, atol=1e-6)
    # And the full batch against the float64 reference of the aggregation itself.
    per_token = np.asarray(per_token_loss(w, batch))
    if batch["mask"].any():
        np.testing.assert_allclose(full_loss, np_aggregate(per_token, batch["mask"], mode, MAX_LEN),
                                   rtol=1e-5, atol=1e-6)


def test_local_denominators_are_not_split_invariant():
    """The reason the denominator is an input: per-micro-batch means do not add up."""
    per_token = np.array([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]], np.float32)
    mask = np.array([[True, True, True], [True, False, False]])
    full = aggregate_loss(per_token, mask, "token_mean")
    local = sum(aggregate_loss(per_token[i:i + 1], mask[i:i + 1], "token_mean") for i in range(2))
    glob = sum(aggregate_loss(per_token[i:i + 1], mask[i:i + 1], "token_mean",
                              denominator=loss_denominator(mask, "token_mean")) for i in range(2))
    np.testing.assert_allclose(full, 7.0 / 4.0)
    np.testing.assert_allclose(glob, full)
    assert abs(float(local) - float(full)) > 1.0  # (1 + 4) vs 7/4


def test_bad_inputs_name_the_field():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="mode"):
        aggregate_loss(x, x > 0, "sequence_mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(x, x > -1, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="max_len"):
        loss_denominator(x > -1, "seq_mean_token_sum_norm", max_len=0)
    with pytest.raises(ValueError, match="mask"):
        loss_numerator(x, np.ones((2, 4), bool), "token_mean")
