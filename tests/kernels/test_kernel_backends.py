"""Backend selection (one place) and input validation of token_logprobs."""

import jax
import jax.numpy as jnp
import pytest

from kernels_testutil import make_inputs
from r1jax_kernels import pallas_available, resolve_backend, token_logprobs
from r1jax_kernels.pallas_logprobs import PallasBlocks


def test_auto_is_chunked_without_a_gpu_and_pallas_is_refused():
    assert jax.default_backend() == "cpu"
    ok, why = pallas_available()
    assert not ok and "cpu" in why
    assert resolve_backend("auto") == "chunked"
    assert resolve_backend("reference") == "reference"
    assert resolve_backend("pallas", interpret=True) == "pallas"
    h, w, y = make_inputs(0, (2,), 4, 8)
    with pytest.raises(ValueError, match=r"backend='pallas' cannot run here.*interpret=True"):
        token_logprobs(h, w, y, backend="pallas")


def test_auto_stays_chunked_where_pallas_could_run(monkeypatch):
    """Measured on an H200 (benchmarks/results/kernels_gpu_h200.json): chunked beats the Pallas kernel
    forward (12.8 vs 32.4 ms) and forward + backward (40.9 vs 401.5 ms), so ``auto`` never picks it."""
    import r1jax_kernels.logprobs as lp

    monkeypatch.setattr(lp, "pallas_available", lambda: (True, ""))
    assert resolve_backend("auto") == "chunked"
    assert resolve_backend("pallas") == "pallas"  # an explicit choice still runs it


def test_bad_backend_arguments():
    h, w, y = make_inputs(0, (2,), 4, 8)
    with pytest.raises(ValueError, match="backend: expected one of"):
        token_logprobs(h, w, y, backend="triton")
    with pytest.raises(ValueError, match="interpret=True only applies to backend='pallas'"):
        token_logprobs(h, w, y, backend="chunked", interpret=True)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(h, w, y, backend="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="PallasBlocks.block_vocab"):
        PallasBlocks(block_vocab=24)
    with pytest.raises(ValueError, match="PallasBlocks.block_tokens"):
        PallasBlocks(block_tokens=8)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_bad_inputs_name_the_field(backend):
    h, w, y = make_inputs(0, (2, 3), 4, 8)
    call = lambda *a, **k: token_logprobs(*a, backend=backend, **k)
    with pytest.raises(ValueError, match=r"lm_head: first dimension 5 does not match"):
        call(h, jnp.zeros((5, 8)), y)
    with pytest.raises(ValueError, match=r"lm_head: expected shape \[D, V\]"):
        call(h, jnp.zeros((4,)), y)
    with pytest.raises(ValueError, match=r"targets: expected shape \(2, 3\)"):
        call(h, w, y[:, :2])
    with pytest.raises(TypeError, match="targets: expected an integer"):
        call(h, w, y.astype(jnp.float32))
    with pytest.raises(TypeError, match="hidden: expected a floating"):
        call(h.astype(jnp.int32), w, y)
    with pytest.raises(ValueError, match=r"targets: token id 8 at position \(1, 2\)"):
        call(h, w, y.at[1, 2].set(8))
    with pytest.raises(ValueError, match="temperature: must be > 0"):
        call(h, w, y, temperature=0.0)
    with pytest.raises(ValueError, match="temperature: shape"):
        call(h, w, y, temperature=jnp.ones((3, 2)))


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_out_of_vocabulary_targets_under_jit_are_nan(backend):
    h, w, y = make_inputs(1, (4,), 4, 8)
    f = jax.jit(lambda h, w, y: token_logprobs(h, w, y, backend=backend, chunk_size=3))
    out = f(h, w, y.at[1].set(-1).at[3].set(8))
    assert bool(jnp.isnan(out[1])) and bool(jnp.isnan(out[3]))
    assert bool(jnp.all(jnp.isfinite(out[jnp.array([0, 2])])))
