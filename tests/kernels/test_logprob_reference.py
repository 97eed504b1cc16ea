"""The reference maths (logprobs_from_logits) against an independent float64 numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_testutil import assert_close, numpy_logprobs
from r1jax_kernels import logprobs_from_logits


def _logits(seed, shape):
    return jnp.asarray(2.0 * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _targets(seed, shape, v):
    return jnp.asarray(np.random.default_rng(seed).integers(0, v, shape), jnp.int32)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_values_and_entropy_match_float64_numpy(temperature):
    logits = _logits(0, (3, 5, 29))
    targets = _targets(1, (3, 5), 29)
    logp, ent = logprobs_from_logits(logits, targets, temperature, return_entropy=True)
    ref_logp, ref_ent = numpy_logprobs(logits, targets, np.full((3, 5), temperature))
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    assert_close(logp, ref_logp, 1e-6, "logp")
    assert_close(ent, ref_ent, 1e-6, "entropy")


def test_per_row_temperature_broadcasts():
    logits = _logits(2, (4, 6, 11))
    targets = _targets(3, (4, 6), 11)
    tau = jnp.array([0.5, 1.0, 1.5, 2.0])[:, None]  # one temperature per row
    logp = logprobs_from_logits(logits, targets, tau)
    ref, _ = numpy_logprobs(logits, targets, np.broadcast_to(np.asarray(tau), (4, 6)))
    assert_close(logp, ref, 1e-6, "logp")


def test_masked_logits_have_zero_probability_and_finite_gradients():
    logits = _logits(4, (2, 13)).at[:, 3:7].set(-jnp.inf)
    targets = jnp.array([0, 12])

    def f(x):
        logp, ent = logprobs_from_logits(x, targets, 0.8, return_entropy=True)
        return jnp.sum(logp) + jnp.sum(ent)

    logp, ent = logprobs_from_logits(logits, targets, 0.8, return_entropy=True)
    kept = np.delete(np.asarray(logits), np.s_[3:7], axis=-1)
    ref_logp, ref_ent = numpy_logprobs(kept, np.array([0, 8]), np.full((2,), 0.8))
    assert_close(logp, ref_logp, 1e-6, "logp")
    assert_close(ent, ref_ent, 1e-6, "entropy")
    g = jax.grad(f)(logits)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[:, 3:7] == 0.0)


def test_bfloat16_logits_give_float32_log_probs():
    logits = _logits(5, (3, 17)).astype(jnp.bfloat16)
    targets = jnp.array([1, 5, 16])
    logp = logprobs_from_logits(logits, targets)
    assert logp.dtype == jnp.float32
    ref, _ = numpy_logprobs(np.asarray(logits.astype(jnp.float32)), targets, np.ones(3))
    assert_close(logp, ref, 1e-6, "logp")


def test_out_of_range_targets_raise_eagerly_and_are_nan_under_jit():
    logits = _logits(6, (2, 3, 7))
    bad = jnp.array([[0, 7, 1], [2, 3, 4]])
    with pytest.raises(ValueError, match=r"token id 7 at position \(0, 1\)"):
        logprobs_from_logits(logits, bad)
    with pytest.raises(ValueError, match=r"token id -1 at position \(1, 2\)"):
        logprobs_from_logits(logits, bad.at[0, 1].set(0).at[1, 2].set(-1))
    out = jax.jit(logprobs_from_logits)(logits, bad.at[1, 2].set(-1))
    assert np.isnan(out[0, 1]) and np.isnan(out[1, 2])
    assert np.isfinite(np.asarray(out)[[0, 1, 1, 0], [0, 0, 1, 2]]).all()


def test_bad_inputs_name_the_field():
    logits = _logits(7, (2, 5))
    with pytest.raises(TypeError, match="targets"):
        logprobs_from_logits(logits, jnp.zeros((2,), jnp.float32))
    with pytest.raises(ValueError, match="targets"):
        logprobs_from_logits(logits, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, jnp.zeros((2,), jnp.int32), 0.0)
    with pytest.raises(TypeError, match="logits"):
        logprobs_from_logits(jnp.zeros((2, 5), jnp.int32), jnp.zeros((2,), jnp.int32))
