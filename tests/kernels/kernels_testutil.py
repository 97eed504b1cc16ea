"""Shared helpers for the r1jax_kernels tests: random inputs and an independent float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_inputs(seed: int, batch_shape: tuple[int, ...], d: int, v: int, dtype=jnp.float32,
                scale: float = 0.4):
    """Random (hidden, lm_head, targets) with logits of order 1 (numpy RNG: no compilation)."""
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.standard_normal((*batch_shape, d)), jnp.float32).astype(dtype)
    lm_head = jnp.asarray(scale * rng.standard_normal((d, v)), jnp.float32).astype(dtype)
    targets = jnp.asarray(rng.integers(0, v, batch_shape), jnp.int32)
    return hidden, lm_head, targets


def numpy_logprobs(logits, targets, temperature=1.0):
    """float64 numpy log-softmax gather and entropy: independent of the code under test."""
    z = np.asarray(logits, np.float64) / np.asarray(temperature, np.float64)[..., None]
    m = np.max(z, axis=-1, keepdims=True)
    lse = m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))
    logp_all = z - lse
    p = np.exp(logp_all)
    ent = -np.sum(np.where(p > 0, p * np.where(p > 0, logp_all, 0.0), 0.0), axis=-1)
    logp = np.take_along_axis(logp_all, np.asarray(targets)[..., None], axis=-1)[..., 0]
    return logp, ent


def assert_close(actual, expected, tol=1e-5, what=""):
    """max |actual - expected| <= tol * max(1, max |expected|) (relative for large gradients)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    assert np.all(np.isfinite(a)) == np.all(np.isfinite(e)), f"{what}: finiteness differs"
    scale = max(1.0, float(np.max(np.abs(e))) if e.size else 1.0)
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def weighted_loss(fn, batch_shape, seed=7):
    """A scalar loss using both outputs of ``fn(h, w, tau) -> (logp, entropy)`` with fixed
    random weights, so that gradients exercise both cotangents."""
    rng = np.random.default_rng(seed)
    wl = jnp.asarray(rng.uniform(-1.0, 1.0, batch_shape), jnp.float32)
    we = jnp.asarray(rng.uniform(-1.0, 1.0, batch_shape), jnp.float32)

    def loss(h, w, tau):
        logp, ent = fn(h, w, tau)
        return jnp.sum(wl * logp) + jnp.sum(we * ent)

    return loss


def values_and_grads(fn, batch_shape, seed=7):
    """A jitted ``(h, w, tau) -> ((logp, entropy), (dh, dw, dtau))`` of ``weighted_loss(fn)``:
    one compilation per backend, which keeps the tests fast."""
    loss = weighted_loss(fn, batch_shape, seed)

    def both(h, w, tau):
        return fn(h, w, tau), jax.grad(loss, argnums=(0, 1, 2))(h, w, tau)

    return jax.jit(both)


def assert_backends_agree(fn_ref, fn_test, h, w, tau, tol=1e-5, grad_tol=None):
    """Values (logp, entropy) and gradients (hidden, lm_head, temperature) of two backends."""
    shape = h.shape[:-1]
    (ref_out, ref_g) = values_and_grads(fn_ref, shape)(h, w, tau)
    (out, g) = values_and_grads(fn_test, shape)(h, w, tau)
    for name, a, b in zip(("logp", "entropy"), out, ref_out):
        assert a.dtype == jnp.float32, name
        assert_close(a, b, tol, name)
    for name, a, b in zip(("d hidden", "d lm_head", "d temperature"), g, ref_g):
        assert a.dtype == b.dtype, name
        assert np.any(np.asarray(b) != 0), f"{name}: reference gradient is all zero"
        assert_close(np.asarray(a, np.float32), np.asarray(b, np.float32), grad_tol or tol, name)
    return ref_out
