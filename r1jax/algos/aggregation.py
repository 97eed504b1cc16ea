"""Reduce a per-token loss ``[..., T]`` to a scalar, split-invariantly.

Each mode is ``numerator / denominator`` where the numerator is a SUM over sequences (so it
adds up across micro-batches, devices and padding rows) and the denominator describes the
WHOLE optimisation batch. Compute the denominator once on the full batch with
:func:`loss_denominator` and pass it to every micro-batch: the sum of the micro-batch losses
(and of their gradients) then equals the full-batch loss (and gradient), whatever the split.

===========================  ================================  =============================
mode                         numerator (sum over sequences i)  denominator (whole batch)
===========================  ================================  =============================
``token_mean``               sum_i sum_t l_it                  number of valid tokens
``seq_mean_token_mean``      sum_i (sum_t l_it) / |y_i|        number of sequences
``seq_mean_token_sum``       sum_i sum_t l_it                  number of sequences
``seq_mean_token_sum_norm``  sum_i sum_t l_it                  number of sequences * max_len
===========================  ================================  =============================

A sequence is a row (all leading axes); ``|y_i|`` is its number of valid tokens. Rows without
a valid token contribute nothing and are not counted. Sequences must not be split across
micro-batches (``seq_mean_token_mean`` needs the whole ``|y_i|``).
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from r1jax.algos._common import (Array, ArrayLike, check_choice, check_range, check_shape, f32,
                                 masked_where, safe_div)

AggregationMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                          "seq_mean_token_sum_norm"]
AGGREGATION_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                      "seq_mean_token_sum_norm")


def _mask(mask: ArrayLike, shape, name: str = "mask") -> Array:
    mask = jnp.asarray(mask)
    check_shape(mask, shape, name)
    if mask.ndim < 1:
        raise ValueError(f"{name}: expected at least one (token) axis, got a scalar")
    return mask.astype(bool)


def loss_numerator(per_token: ArrayLike, mask: ArrayLike, mode: AggregationMode) -> Array:
    """The additive part of the aggregated loss: sums over the sequences given.

    Args:
      per_token: ``[..., T]`` per-token loss (any leading batch axes).
      mask: bool ``[..., T]`` of valid tokens.
      mode: static; one of :data:`AGGREGATION_MODES`.

    Returns:
      A float32 scalar; ``loss = numerator / loss_denominator(full_batch_mask, mode, ...)``.

    References:
      Yu et al. 2025, "DAPO", arXiv 2503.14476, eq. 12 (token-level mean).
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3 (mean of per-sequence means).
      Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr.GRPO), arXiv 2503.20783,
      §3.1 and eq. 3 (per-sequence sums, constant normaliser).
    """
    check_choice("mode", mode, AGGREGATION_MODES)
    per_token = f32(per_token, "per_token")
    mask = _mask(mask, per_token.shape)
    token_sums = jnp.sum(masked_where(mask, per_token), axis=-1)
    if mode == "seq_mean_token_mean":
        lengths = jnp.sum(mask, axis=-1).astype(jnp.float32)
        return jnp.sum(safe_div(token_sums, lengths))
    return jnp.sum(token_sums)


def loss_denominator(mask: ArrayLike, mode: AggregationMode, *,
                     max_len: ArrayLike | None = None, num_sequences: ArrayLike | None = None) -> Array:
    """The denominator of ``mode`` for the batch whose ``mask`` is given (pass the WHOLE batch).

    Args:
      mask: bool ``[..., T]`` of valid tokens of the whole optimisation batch.
      mode: static; one of :data:`AGGREGATION_MODES`.
      max_len: the constant length normaliser of ``seq_mean_token_sum_norm`` (Dr.GRPO uses the
        generation budget); required for that mode, ignored otherwise (traceable).
      num_sequences: the number of sequences when rows are packed several to a row (traceable);
        default: the rows of ``mask`` with a valid token.

    Returns:
      A float32 scalar: valid tokens, sequences with at least one valid token, or that times
      ``max_len``.

    References:
      See :func:`loss_numerator`.
    """
    check_choice("mode", mode, AGGREGATION_MODES)
    mask = _mask(mask, jnp.shape(mask))
    if mode == "token_mean":
        return jnp.sum(mask).astype(jnp.float32)
    if num_sequences is None:
        num_sequences = jnp.sum(jnp.any(mask, axis=-1))
    num_sequences = jnp.asarray(num_sequences, jnp.float32)
    if mode == "seq_mean_token_sum_norm":
        if max_len is None:
            raise ValueError("max_len: required by mode 'seq_mean_token_sum_norm' "
                             "(Dr.GRPO's constant normaliser, e.g. the max completion length)")
        check_range("max_len", max_len, gt=0.0)
        return num_sequences * jnp.asarray(max_len, jnp.float32)
    return num_sequences


def token_weights(mask: ArrayLike, mode: AggregationMode) -> Array:
    """Per-token weights ``w`` with ``sum(where(mask, x, 0) * w) == loss_numerator(x, mask, mode)``.

    ``1 / |y_i|`` on the valid tokens of sequence ``i`` for ``seq_mean_token_mean``, 1 on valid
    tokens for the other modes, 0 elsewhere. Computed once on whole sequences (rows), the weights
    travel with their tokens: the numerator stays exact when sequences are later packed several to
    a row or split across micro-batches.

    Args:
      mask: bool ``[..., T]`` of valid tokens, one sequence per row.
      mode: static; one of :data:`AGGREGATION_MODES`.

    Returns:
      float32 ``[..., T]``.

    References:
      See :func:`loss_numerator`.
    """
    check_choice("mode", mode, AGGREGATION_MODES)
    mask = _mask(mask, jnp.shape(mask))
    ones = mask.astype(jnp.float32)
    if mode != "seq_mean_token_mean":
        return ones
    lengths = jnp.sum(ones, axis=-1, keepdims=True)
    return safe_div(ones, jnp.broadcast_to(lengths, ones.shape))


def aggregate_loss(per_token: ArrayLike, mask: ArrayLike, mode: AggregationMode, *,
                   denominator: ArrayLike | None = None,
                   max_len: ArrayLike | None = None) -> Array:
    """Aggregates a per-token loss to a scalar: ``loss_numerator / denominator``.

    Args:
      per_token: ``[..., T]`` per-token loss (e.g. ``PolicyLossOutput.loss``).
      mask: bool ``[..., T]`` of valid tokens.
      mode: static; one of :data:`AGGREGATION_MODES`.
      denominator: the whole optimisation batch's :func:`loss_denominator` (traceable). When
        None it is computed from ``mask``: right for a full batch, NOT split-invariant for a
        micro-batch. A zero denominator gives 0.
      max_len: only for ``seq_mean_token_sum_norm`` when ``denominator`` is None.

    Returns:
      A float32 scalar.

    References:
      See :func:`loss_numerator`.
    """
    numerator = loss_numerator(per_token, mask, mode)
    if denominator is None:
        denominator = loss_denominator(mask, mode, max_len=max_len)
    return safe_div(numerator, jnp.asarray(denominator, jnp.float32))
