"""Vocabulary-parallel log-probs (shard_map over 8 fake CPU devices) equal the single-device
reference in values and gradients."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType

from kernels_testutil import assert_backends_agree, make_inputs
from r1jax_kernels import sharded_token_logprobs, token_logprobs

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8,
                                reason="needs 8 devices (tests/conftest.py sets 8 fake CPU devices)")


def _mesh(shape):
    return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


@pytest.mark.parametrize("mesh_shape,chunk", [((2, 1, 4), 4), ((1, 2, 4), None), ((2, 2, 2), 3)])
def test_sharded_equals_single_device_reference(mesh_shape, chunk):
    mesh = _mesh(mesh_shape)
    h, w, y = make_inputs(30, (4, 3), 8, 40)  # 40 = 4 shards x 10 columns; chunk 4 leaves a tail
    tau = jnp.linspace(0.6, 1.4, 12).reshape(4, 3)
    ref = lambda h, w, t: token_logprobs(h, w, y, temperature=t, return_entropy=True,
                                         backend="reference")
    shd = lambda h, w, t: sharded_token_logprobs(h, w, y, mesh=mesh, temperature=t,
                                                 return_entropy=True, chunk_size=chunk)
    assert_backends_agree(ref, shd, h, w, tau)


def test_sharded_inputs_and_errors():
    mesh = _mesh((2, 1, 4))
    h, w, y = make_inputs(31, (8,), 8, 40)
    with pytest.raises(ValueError, match="not divisible by the 4 shards of mesh axis 'tensor'"):
        sharded_token_logprobs(h, w[:, :38], y % 38, mesh=mesh)
    with pytest.raises(ValueError, match="7 tokens are not divisible by the 2 shards"):
        sharded_token_logprobs(h[:7], w, y[:7], mesh=mesh)
    with pytest.raises(ValueError, match="vocab_axis"):
        sharded_token_logprobs(h, w, y, mesh=mesh, vocab_axis="model")
    # Each target id is owned by exactly one shard, whichever that is.
    y_edges = jnp.array([0, 9, 10, 19, 20, 29, 30, 39])
    out = jax.jit(lambda h, w: sharded_token_logprobs(h, w, y_edges, mesh=mesh))(h, w)
    ref = token_logprobs(h, w, y_edges, backend="reference")
    assert float(jnp.max(jnp.abs(out - ref))) <= 1e-5
