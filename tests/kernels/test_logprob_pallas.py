"""The Pallas kernel, run in interpret mode on CPU, equals the reference in values and gradients.

Shapes are tiny (interpret mode is slow) but cover ragged tails on every axis: tokens, hidden
size and vocabulary none of them a multiple of the tile.
"""

import jax.numpy as jnp
import pytest

from kernels_testutil import assert_backends_agree, make_inputs
from r1jax_kernels import token_logprobs
from r1jax_kernels.pallas_logprobs import PallasBlocks

SMALL = PallasBlocks(block_tokens=16, block_vocab=16, block_hidden=16)

# (batch shape, D, V, blocks, temperature)
CASES = [
    ((3, 7), 24, 37, SMALL, 0.7),                                       # ragged on all axes
    ((16,), 32, 32, SMALL, 1.0),                                        # exact tiles
    ((2, 9), 20, 50, PallasBlocks(16, 32, 16), "per-token"),           # other tiles, tau per token
]


def _fn(backend, y, **kw):
    return lambda h, w, tau: token_logprobs(h, w, y, temperature=tau, return_entropy=True,
                                            backend=backend, **kw)


@pytest.mark.parametrize("batch_shape,d,v,blocks,tau", CASES)
def test_interpret_values_and_gradients_equal_reference(batch_shape, d, v, blocks, tau):
    h, w, y = make_inputs(10, batch_shape, d, v)
    if tau == "per-token":
        tau = jnp.linspace(0.6, 1.4, h.size // d).reshape(batch_shape)
    else:
        tau = jnp.float32(tau)
    assert_backends_agree(_fn("reference", y),
                          _fn("pallas", y, interpret=True, pallas_blocks=blocks), h, w, tau)


def test_interpret_bfloat16_within_bfloat16_tolerance():
    h, w, y = make_inputs(11, (3, 6), 24, 40, dtype=jnp.bfloat16)
    # Same bf16 products, float32 accumulation: values agree to float32 precision; gradients
    # go through bf16 matmul operands (as on the GPU) and are rounded to bf16 (their dtype).
    assert_backends_agree(_fn("reference", y),
                          _fn("pallas", y, interpret=True, pallas_blocks=SMALL),
                          h, w, jnp.float32(0.8), tol=1e-5, grad_tol=2e-2)


def test_chunk_size_is_for_the_chunked_backend_only():
    h, w, y = make_inputs(12, (5,), 16, 20)
    with pytest.raises(ValueError, match="chunk_size: applies to the chunked backend only"):
        token_logprobs(h, w, y, backend="pallas", interpret=True, chunk_size=16)
    with pytest.raises(TypeError, match="pallas_blocks"):
        token_logprobs(h, w, y, backend="pallas", interpret=True, pallas_blocks=(16, 16, 16))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_through_the_pallas_triton_backend_for_cuda(dtype, monkeypatch):
    """Cross-platform lowering (no GPU needed): the forward and backward kernels, plain and
    fused, pass Pallas's Triton lowering for CUDA at default (GPU) tile sizes. Compiling the
    Triton IR to PTX and running it needs a GPU: ``benchmarks/kernels_gpu.py``."""
    import jax
    from r1jax_kernels import grpo_token_terms

    s = jax.ShapeDtypeStruct
    args = (s((100, 96), dtype), s((96, 300), dtype), s((100,), jnp.int32), s((100,), jnp.float32))

    def loss(h, w, y, old):
        logp, ent = token_logprobs(h, w, y, return_entropy=True, backend="pallas",
                                   interpret=False)
        t = grpo_token_terms(h, w, y, old, old, old, backend="pallas")
        return jnp.sum(logp) + jnp.sum(ent) + jnp.sum(t.policy_loss) + jnp.sum(t.k3)

    from r1jax_kernels import logprobs as dispatch
    # Lower as if on a GPU: the dispatcher's availability check is about the running machine.
    monkeypatch.setattr(dispatch, "pallas_available", lambda: (True, ""))
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(*args).lower(
        lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert text.count("__gpu$xla.gpu.triton") == 4  # plain fwd + bwd, fused fwd + bwd
