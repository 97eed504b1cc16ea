"""Chunked log-probs: vocabulary chunks, an online logsumexp, and a backward that recomputes.

Neither pass ever holds the ``[tokens, vocab]`` logits: the forward scans over vocabulary chunks
of ``hidden @ lm_head`` keeping per-token running statistics, and the ``custom_vjp`` backward
scans again, recomputing each chunk's logits to form that chunk's logit gradient, which it
immediately contracts into ``d hidden`` (accumulated) and ``d lm_head`` (that chunk's columns).
Peak temporary memory is ``O(tokens * chunk)`` instead of ``O(tokens * vocab)``.

The core, :func:`vocab_stats`, returns three per-token statistics of the tempered logits
``z = (hidden @ lm_head) / temperature`` over the columns it sees::

    lse = log sum_v exp(z_v)          mu = sum_v softmax(z)_v z_v          zt = z_target

from which ``log p(target) = zt - lse`` and ``entropy = lse - mu``. The same statistics combine
across vocabulary shards (``r1jax_kernels.sharded``), which is why the core returns them rather
than the log-prob itself. Their logit gradient, used by every backward here and in the Pallas
kernel, is::

    d/dz_v = p_v * (g_lse + g_mu * (1 + z_v - mu)) + g_zt * [v == target]

A ragged vocabulary (``V % chunk != 0``) ends with one extra step over the ``V % chunk`` tail
columns (a static shape), so ``lm_head`` is never padded or copied and no column is masked.

References:
    Online softmax normaliser: Milakov & Gimelshein, "Online normalizer calculation for softmax"
    (arXiv 1805.02867), Algorithm 3. Blockwise cross-entropy with recomputation: Wijmans et al.,
    "Cut Your Losses in Large-Vocabulary Language Models" (arXiv 2411.09009), Sec. 3.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from r1jax_kernels import _common

Array = jax.Array

#: The automatic chunk size keeps one ``[tokens, chunk]`` float32 buffer near this many elements.
AUTO_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32
#: Chunk sizes chosen automatically are multiples of this (lane-friendly on accelerators).
CHUNK_ALIGN = 128


def auto_chunk_size(num_tokens: int, vocab_size: int) -> int:
    """The vocabulary chunk used when ``chunk_size`` is None.

    About ``AUTO_CHUNK_ELEMENTS / num_tokens`` columns, a multiple of ``CHUNK_ALIGN`` (at least
    one such block), and never more than the vocabulary.
    """
    per_token = AUTO_CHUNK_ELEMENTS // max(num_tokens, 1)
    chunk = max(CHUNK_ALIGN, (per_token // CHUNK_ALIGN) * CHUNK_ALIGN)
    return int(min(chunk, vocab_size))


def resolve_chunk_size(chunk_size: int | None, num_tokens: int, vocab_size: int) -> int:
    """Validates a user chunk size (positive int) and clips it to the vocabulary."""
    if chunk_size is None:
        return auto_chunk_size(num_tokens, vocab_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    return int(min(chunk_size, vocab_size))


def _as_bits(x: Array) -> Array:
    """16-bit floats as same-width unsigned ints (other dtypes unchanged).

    Slicing / updating the ``[D, V]`` arrays through their bits keeps XLA's CPU backend, which
    computes in float32 what it cannot do in bfloat16, from materialising a float32 copy of the
    whole matrix around a dynamic slice. On GPU the bitcast is free."""
    return lax.bitcast_convert_type(x, jnp.uint16) if x.dtype.itemsize == 2 else x


def _from_bits(x: Array, dtype) -> Array:
    return lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x


def _chunk_logits(h: Array, w: Array, tau: Array, start, size: int):
    """Tempered logits ``[N, size]`` of the vocabulary columns ``start:start+size``."""
    w_chunk = _from_bits(lax.dynamic_slice_in_dim(_as_bits(w), start, size, axis=1), w.dtype)
    z = jnp.dot(h, w_chunk, preferred_element_type=jnp.float32) / tau[:, None]
    return z, w_chunk, start + jnp.arange(size)


def _over_chunks(step, carry, vocab: int, chunk: int):
    """``carry = step(carry, start, size)`` over the full chunks (a scan), then the ragged tail
    (``vocab % chunk`` columns, static shape) if any."""
    n_full, tail = divmod(vocab, chunk)
    if n_full:
        carry, _ = lax.scan(lambda c, j: (step(c, j * chunk, chunk), None), carry,
                            jnp.arange(n_full))
    if tail:
        carry = step(carry, n_full * chunk, tail)
    return carry


def _vary(tree, axes: tuple[str, ...]):
    """Marks fresh constants (scan carries) as varying over the manual mesh ``axes`` when
    called inside ``shard_map``, so that they type-check against the carries the loop body
    produces from per-device data. A no-op for ``axes == ()``."""
    if not axes:
        return tree
    return jax.tree.map(lambda x: lax.pcast(x, axes, to="varying"), tree)


def _forward_stats(h, w, targets, tau, chunk, vary_axes=()):
    n = h.shape[0]

    def step(carry, start, size):
        m, s, a, zt = carry
        z, _, cols = _chunk_logits(h, w, tau, start, size)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        e = jnp.exp(z - m_new[:, None])
        rescale = jnp.exp(m - m_new)
        s = s * rescale + jnp.sum(e, axis=-1)
        a = a * rescale + jnp.sum(e * z, axis=-1)
        zt = zt + jnp.sum(jnp.where(cols == targets[:, None], z, 0.0), axis=-1)
        return m_new, s, a, zt

    init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
    m, s, a, zt = _over_chunks(step, _vary(init, vary_axes), w.shape[1], chunk)
    lse = m + jnp.log(s)
    mu = a / s
    return lse, mu, zt


def logit_grad(z: Array, lse: Array, mu: Array, g_lse: Array, g_mu: Array, g_zt: Array,
               is_target: Array, valid: Array | None = None) -> Array:
    """The gradient w.r.t. tempered logits ``z`` of ``(lse, mu, zt)`` with cotangents ``g_*``.

    ``z`` is ``[n, c]``; ``lse, mu, g_*`` are ``[n]``; ``is_target`` and ``valid`` are boolean
    ``[n, c]`` (``valid``, when given, is false on columns that must not contribute).
    """
    p = jnp.exp(z - lse[:, None])
    if valid is not None:
        p = jnp.where(valid, p, 0.0)
        is_target = is_target & valid
    gz = p * (g_lse[:, None] + g_mu[:, None] * (1.0 + z - mu[:, None]))
    return gz + jnp.where(is_target, g_zt[:, None], 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def vocab_stats(h: Array, w: Array, targets: Array, tau: Array, chunk: int,
                vary_axes: tuple[str, ...] = ()):
    """``(lse, mu, zt)`` per token of ``z = (h @ w) / tau``, chunked over the vocabulary.

    Args:
        h: ``[N, D]`` hidden states (any float dtype).
        w: ``[D, V]`` output projection (same or promotable dtype).
        targets: ``[N]`` int32 column index of the target in ``w``; an index outside ``[0, V)``
            (e.g. a target owned by another vocabulary shard) contributes ``zt = 0``.
        tau: ``[N]`` float32 temperature per token.
        chunk: static number of vocabulary columns per step, ``1 <= chunk <= V``.
        vary_axes: static; inside ``shard_map``, the manual mesh axes all inputs vary over
            (see :mod:`r1jax_kernels.sharded`); ``()`` elsewhere.

    Returns:
        ``(lse, mu, zt)``, each float32 ``[N]`` (see the module docstring).
    """
    return _forward_stats(h, w, targets, tau, chunk, vary_axes)


def _vocab_stats_fwd(h, w, targets, tau, chunk, vary_axes):
    lse, mu, zt = _forward_stats(h, w, targets, tau, chunk, vary_axes)
    return (lse, mu, zt), (h, w, targets, tau, lse, mu)


def _vocab_stats_bwd(chunk, vary_axes, residuals, cotangents):
    h, w, targets, tau, lse, mu = residuals
    g_lse, g_mu, g_zt = cotangents
    mm_dtype = jnp.result_type(h.dtype, w.dtype)

    def step(carry, start, size):
        dh, dw, g_tau = carry
        z, w_chunk, cols = _chunk_logits(h, w, tau, start, size)
        gz = logit_grad(z, lse, mu, g_lse, g_mu, g_zt, cols == targets[:, None])
        g_tau = g_tau + jnp.sum(gz * z, axis=-1)  # dz/dtau = -z / tau, applied at the end
        gu = (gz / tau[:, None]).astype(mm_dtype)  # gradient w.r.t. the raw logits h @ w
        dh = dh + jnp.dot(gu, w_chunk.T.astype(mm_dtype), preferred_element_type=jnp.float32)
        dw_chunk = jnp.einsum("nd,nc->dc", h.astype(mm_dtype), gu,
                              preferred_element_type=jnp.float32)
        dw = lax.dynamic_update_slice_in_dim(dw, _as_bits(dw_chunk.astype(w.dtype)), start, axis=1)
        return dh, dw, g_tau

    init = (jnp.zeros(h.shape, jnp.float32), _as_bits(jnp.zeros(w.shape, w.dtype)),
            jnp.zeros(tau.shape, jnp.float32))
    dh, dw, g_tau = _over_chunks(step, _vary(init, vary_axes), w.shape[1], chunk)
    return dh.astype(h.dtype), _from_bits(dw, w.dtype), None, -g_tau / tau


vocab_stats.defvjp(_vocab_stats_fwd, _vocab_stats_bwd)


def token_logprobs_chunked(hidden: Array, lm_head: Array, targets: Array, *,
                           temperature=1.0, return_entropy: bool = False,
                           chunk_size: int | None = None) -> Array | tuple[Array, Array]:
    """Chunked backend of ``token_logprobs`` (inputs assumed validated by the dispatcher).

    Args:
        hidden: ``[..., D]``; lm_head: ``[D, V]``; targets: ``[...]`` int.
        temperature: scalar or broadcastable to ``targets.shape``; traced.
        return_entropy: also return the entropy.
        chunk_size: vocabulary columns per step (None: :func:`auto_chunk_size`).

    Returns:
        ``logp[...]`` float32, or ``(logp, entropy)``.
    """
    batch_shape = tuple(targets.shape)
    n = _common.num_tokens(batch_shape)
    vocab = lm_head.shape[1]
    chunk = resolve_chunk_size(chunk_size, n, vocab)
    tau = _common.temperature_per_token(temperature, batch_shape).reshape(n)
    h = hidden.reshape(n, hidden.shape[-1])
    y = targets.reshape(n).astype(jnp.int32)
    lse, mu, zt = vocab_stats(h, lm_head, y, tau, chunk)
    logp = jnp.where(_common.invalid_target_mask(y, vocab), jnp.nan, zt - lse).reshape(batch_shape)
    if not return_entropy:
        return logp
    return logp, (lse - mu).reshape(batch_shape)
