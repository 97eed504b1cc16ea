"""The reference log-prob maths: materialised logits, ``log_softmax``, gather.

This is the definition every other backend is tested against, and what the sampler uses on the
logits it already has, so that trainer and sampler compute the same "processed" log-probs
(after temperature, before any top-p/top-k truncation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from r1jax_kernels import _common

Array = jax.Array


def logprobs_from_logits(logits: Any, targets: Any, temperature: Any = 1.0,
                         return_entropy: bool = False) -> Array | tuple[Array, Array]:
    """Per-token log-probabilities (and entropy) of ``softmax(logits / temperature)``.

    ``log p(y) = log_softmax(logits.astype(float32) / temperature)[y]`` — the "processed"
    log-probs: temperature applied, no top-p/top-k truncation.

    Args:
        logits: ``[..., V]`` floating logits (any float dtype; computed in float32). ``-inf`` entries
            (masked tokens) are allowed: they get probability 0 and contribute 0 to the entropy,
            with finite gradients.
        targets: ``[...]`` integer token ids. An id outside ``[0, V)`` raises ValueError when the
            ids are concrete and gives a NaN log-prob under ``jit`` (never a silent wrong value).
        temperature: positive scalar, or an array broadcastable to ``targets.shape`` (per-row or
            per-token temperature). Traced: changing it never recompiles.
        return_entropy: also return the entropy ``-sum_v p_v log p_v`` of the same distribution.

    Returns:
        ``logp[...]`` float32, or ``(logp, entropy)`` (both float32 ``[...]``).

    References:
        DeepSeek-R1 (arXiv 2501.12948), sampling at temperature 1.0 for RL rollouts; the
        importance ratio of GRPO (DeepSeekMath, arXiv 2402.03300, Eq. 3) uses these log-probs.
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits: expected a floating array [..., V], got dtype {logits.dtype}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets: expected an integer array of token ids, got dtype {targets.dtype}")
    if logits.ndim < 1 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])} (logits' shape "
                         f"without V), got {tuple(targets.shape)}")
    vocab = logits.shape[-1]
    _common.check_targets_in_range(targets, vocab)
    tau = _common.temperature_per_token(temperature, tuple(targets.shape))

    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / tau[..., None], axis=-1)
    bad = _common.invalid_target_mask(targets, vocab)
    safe_targets = jnp.where(bad, 0, targets)
    logp = jnp.take_along_axis(logp_all, safe_targets[..., None], axis=-1)[..., 0]
    logp = jnp.where(bad, jnp.nan, logp)
    if not return_entropy:
        return logp
    probs = jnp.exp(logp_all)
    # 0 * log 0 = 0; the inner where keeps the gradient finite at masked (-inf) logits.
    safe_logp_all = jnp.where(probs > 0, logp_all, 0.0)
    entropy = -jnp.sum(probs * safe_logp_all, axis=-1)
    return logp, entropy


def token_logprobs_reference(hidden: Array, lm_head: Array, targets: Array, *,
                             temperature: Any = 1.0,
                             return_entropy: bool = False) -> Array | tuple[Array, Array]:
    """``logprobs_from_logits(hidden @ lm_head, ...)`` with the full ``[..., V]`` logits in memory.

    The matmul accumulates in float32 (``preferred_element_type``), as the other backends do.
    Inputs are assumed validated by the dispatcher (``r1jax_kernels.token_logprobs``).
    """
    logits = jnp.einsum("...d,dv->...v", hidden, lm_head, preferred_element_type=jnp.float32)
    return logprobs_from_logits(logits, targets, temperature, return_entropy)
