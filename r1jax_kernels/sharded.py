"""Vocabulary-parallel log-probs under ``jax.shard_map``.

With the output projection split by columns over the ``tensor`` mesh axis (the ``vocab ->
tensor`` rule of :mod:`r1jax.models.sharding`) and tokens split over ``data``/``fsdp``, each
device computes chunked statistics of its own ``V / tensor`` columns with
:func:`r1jax_kernels.chunked.vocab_stats` — never materialising its logits either — and the
shards combine per token::

    M   = pmax(lse_k)                      (a constant shift, outside the gradient)
    lse = M + log psum(exp(lse_k - M))
    mu  = psum(exp(lse_k - lse) * mu_k)    (softmax-weighted mean logit -> entropy = lse - mu)
    zt  = psum(zt_k)                       (only the shard owning the target has it; others add 0)

Gradients flow through ``psum`` and the per-shard ``custom_vjp``; the hidden-state gradient is
summed over the vocabulary shards by ``shard_map``'s transpose. Tested against the single-device
reference on 8 fake CPU devices.

References:
    Shoeybi et al. 2019, "Megatron-LM" (arXiv 1909.08053), Sec. 3: vocabulary-parallel output
    layer with a fused cross-entropy that exchanges per-token scalars instead of logits.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from r1jax_kernels import _common
from r1jax_kernels.chunked import resolve_chunk_size, vocab_stats

Array = jax.Array


def _local_logprobs(h, w, y, tau, *, token_axes: tuple[str, ...], vocab_axis: str, chunk: int):
    """Per-device body: statistics of the local vocabulary shard, combined across shards."""
    # Make every input vary over the token AND vocabulary axes (the transposes of these casts are
    # the psums that sum d hidden / d temperature over vocabulary shards).
    axes = token_axes + (vocab_axis,)
    h, y, tau = (lax.pcast(x, (vocab_axis,), to="varying") for x in (h, y, tau))
    if token_axes:
        w = lax.pcast(w, token_axes, to="varying")
    v_local = w.shape[1]
    offset = lax.axis_index(vocab_axis) * v_local
    lse_k, mu_k, zt_k = vocab_stats(h, w, y - offset, tau, chunk, axes)
    m = lax.pmax(lax.stop_gradient(lse_k), vocab_axis)
    lse = m + jnp.log(lax.psum(jnp.exp(lse_k - m), vocab_axis))
    mu = lax.psum(jnp.exp(lse_k - lse) * mu_k, vocab_axis)
    zt = lax.psum(zt_k, vocab_axis)
    return zt - lse, lse - mu


def sharded_token_logprobs(hidden: Any, lm_head: Any, targets: Any, *, mesh: Mesh,
                           temperature: Any = 1.0, return_entropy: bool = False,
                           token_axes: Sequence[str] = ("data", "fsdp"),
                           vocab_axis: str = "tensor",
                           chunk_size: int | None = None) -> Array | tuple[Array, Array]:
    """``token_logprobs`` with the vocabulary sharded over ``vocab_axis`` and tokens over
    ``token_axes`` of ``mesh`` (``jax.shard_map``; chunked within each shard).

    Args:
      hidden: ``[..., D]`` hidden states; lm_head: ``[D, V]``; targets: ``[...]`` int ids.
      mesh: the device mesh (e.g. ``r1jax.models.sharding.make_mesh``).
      temperature: scalar or broadcastable to ``targets.shape`` (traced).
      return_entropy: also return the entropy.
      token_axes: mesh axes the flattened tokens are split over (those absent from ``mesh`` are
        ignored). The token count must divide evenly.
      vocab_axis: mesh axis the vocabulary columns are split over; ``V`` must divide evenly.
      chunk_size: vocabulary chunk within a shard (None: automatic).

    Returns:
      ``logp[...]`` float32 (or ``(logp, entropy)``), equal to the single-device result.

    References:
      Megatron-LM (arXiv 1909.08053), Sec. 3 (vocabulary-parallel cross-entropy).
    """
    hidden, lm_head, targets = _common.check_logprob_inputs(hidden, lm_head, targets)
    if vocab_axis not in mesh.axis_names:
        raise ValueError(f"vocab_axis: {vocab_axis!r} is not an axis of the mesh "
                         f"{tuple(mesh.axis_names)}")
    tok = tuple(a for a in token_axes if a in mesh.axis_names)
    if vocab_axis in tok:
        raise ValueError(f"token_axes: {tok} must not contain the vocab_axis {vocab_axis!r}")
    shape = tuple(targets.shape)
    n, d, v = _common.num_tokens(shape), hidden.shape[-1], lm_head.shape[1]
    n_tok = math.prod(mesh.shape[a] for a in tok)
    n_voc = mesh.shape[vocab_axis]
    if v % n_voc:
        raise ValueError(f"lm_head: vocabulary size {v} is not divisible by the {n_voc} shards of "
                         f"mesh axis {vocab_axis!r} (pad the vocabulary)")
    if n % n_tok:
        raise ValueError(f"targets: {n} tokens are not divisible by the {n_tok} shards of mesh "
                         f"axes {tok}")
    chunk = resolve_chunk_size(chunk_size, n // n_tok, v // n_voc)
    tau = _common.temperature_per_token(temperature, shape).reshape(n)
    h = hidden.reshape(n, d)
    y = targets.reshape(n).astype(jnp.int32)
    tok_spec = tok if len(tok) > 1 else (tok[0] if tok else None)
    body = functools.partial(_local_logprobs, token_axes=tok, vocab_axis=vocab_axis, chunk=chunk)
    logp, ent = jax.shard_map(
        body, mesh=mesh,
        in_specs=(P(tok_spec, None), P(None, vocab_axis), P(tok_spec), P(tok_spec)),
        out_specs=(P(tok_spec), P(tok_spec)))(h, lm_head, y, tau)
    logp = jnp.where(_common.invalid_target_mask(y, v), jnp.nan, logp).reshape(shape)
    if not return_entropy:
        return logp
    return logp, ent.reshape(shape)
