"""The chunked backend equals the reference in values and gradients, and behaves under JAX transforms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_testutil import assert_backends_agree, assert_close, make_inputs, numpy_logprobs
from r1jax_kernels import token_logprobs
from r1jax_kernels.chunked import auto_chunk_size, resolve_chunk_size

# (batch shape, D, V, chunk): ragged vocabulary tails, chunk > V, chunk 1, automatic chunk.
CASES = [
    ((2, 5), 16, 37, 8),     # 37 = 4 * 8 + 5: ragged last chunk
    ((3, 2, 2), 12, 23, 50), # chunk larger than V
    ((4,), 6, 9, 1),         # one column per step
    ((2, 3), 10, 130, None), # automatic chunk size
]


def _fn(backend, chunk=None, y=None):
    return lambda h, w, tau: token_logprobs(h, w, y, temperature=tau, return_entropy=True,
                                            backend=backend, chunk_size=chunk)


@pytest.mark.parametrize("batch_shape,d,v,chunk", CASES)
def test_values_and_gradients_equal_reference(batch_shape, d, v, chunk):
    h, w, y = make_inputs(0, batch_shape, d, v)
    tau = jnp.float32(0.7)
    ref_logp, ref_ent = assert_backends_agree(_fn("reference", y=y), _fn("chunked", chunk, y),
                                              h, w, tau)
    # And the reference itself against float64 numpy.
    np_logp, np_ent = numpy_logprobs(np.asarray(h, np.float64) @ np.asarray(w, np.float64), y,
                                     np.full(batch_shape, 0.7))
    assert_close(ref_logp, np_logp, 1e-5, "reference logp")
    assert_close(ref_ent, np_ent, 1e-5, "reference entropy")


def test_per_token_temperature_and_its_gradient():
    h, w, y = make_inputs(1, (3, 4), 8, 21)
    tau = jnp.linspace(0.5, 1.5, 12).reshape(3, 4)
    assert_backends_agree(_fn("reference", y=y), _fn("chunked", 5, y), h, w, tau)


def test_logp_only_gradient_and_jit_match_reference():
    h, w, y = make_inputs(2, (6,), 8, 19)
    f = lambda backend: jax.jit(jax.value_and_grad(
        lambda h, w: jnp.sum(token_logprobs(h, w, y, backend=backend, chunk_size=4) ** 2),
        argnums=(0, 1)))
    (v_ref, g_ref), (v_chk, g_chk) = f("reference")(h, w), f("chunked")(h, w)
    assert_close(v_chk, v_ref, 1e-5)
    for a, b in zip(g_chk, g_ref):
        assert_close(a, b, 1e-5)


def test_vmap_over_sequences_equals_the_unbatched_call():
    h, w, y = make_inputs(3, (4, 5), 8, 27)
    f = lambda h1, y1: token_logprobs(h1, w, y1, temperature=1.3, return_entropy=True,
                                      backend="chunked", chunk_size=6)

    @jax.jit
    def run(h, y):
        vm = jax.vmap(f)(h, y)
        # vmap of the gradient too (per-example gradients w.r.t. hidden).
        g = jax.vmap(jax.grad(lambda h1, y1: jnp.sum(f(h1, y1)[0])))(h, y)
        g_ref = jax.grad(lambda h: jnp.sum(token_logprobs(h, w, y, temperature=1.3,
                                                          backend="reference")))(h)
        return vm, f(h, y), g, g_ref

    (vm_logp, vm_ent), (logp, ent), g, g_ref = run(h, y)
    assert_close(vm_logp, logp, 1e-6)
    assert_close(vm_ent, ent, 1e-6)
    assert_close(g, g_ref, 1e-5)


def test_changing_temperature_never_retraces():
    h, w, y = make_inputs(4, (3,), 8, 20)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(h, w, tau):
        return token_logprobs(h, w, y, temperature=tau, backend="chunked", chunk_size=7)

    outs = [f(h, w, jnp.float32(t)) for t in (0.5, 1.0, 2.0)]
    for t, out in zip((0.5, 1.0, 2.0), outs):
        ref, _ = numpy_logprobs(np.asarray(h, np.float64) @ np.asarray(w, np.float64), y,
                                np.full((3,), t))
        assert_close(out, ref, 1e-5)
    chex.clear_trace_counter()


def test_bfloat16_inputs_within_bfloat16_tolerance():
    h, w, y = make_inputs(5, (4, 3), 32, 50, dtype=jnp.bfloat16)
    # Same bf16 products with float32 accumulation: values agree to float32 precision; the
    # gradients are rounded to bfloat16 (their dtype) by both backends.
    assert_backends_agree(_fn("reference", y=y), _fn("chunked", 16, y), h, w, jnp.float32(0.9),
                          tol=1e-5, grad_tol=2e-2)


def test_chunk_size_rules():
    assert resolve_chunk_size(None, 8192, 151936) == auto_chunk_size(8192, 151936) == 2048
    assert auto_chunk_size(3, 100) == 100  # never more than the vocabulary
    assert resolve_chunk_size(500, 10, 64) == 64
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            resolve_chunk_size(bad, 10, 64)
