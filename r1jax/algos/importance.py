"""Truncated importance sampling for the rollout-engine vs trainer mismatch.

The sampler (vLLM, or the JAX sampler in another precision) and the trainer compute slightly
different probabilities for the same tokens, so even "on-policy" samples are off-policy for
the trainer. The correction multiplies each token's policy loss by a constant weight
``w = pi_trainer(y) / pi_rollout(y)``, capped at ``C`` to bound its variance:

* ``mode="truncate"`` (TIS): ``min(w, C)``;
* ``mode="mask"`` (MIS): ``w`` where ``w <= C``, else 0 (the token or sequence is dropped).

``level="token"`` uses each token's own ratio; ``level="sequence"`` the product of the
sequence's token ratios (one weight per sequence, broadcast over its tokens);
``level="geometric"`` their geometric mean (the length-normalised sequence ratio).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from r1jax.algos._common import (DEFAULT_LOG_RATIO_CLAMP, Array, ArrayLike, check_choice, check_range, check_rank,
                                 check_shape, f32, mask_or_ones, masked_where, safe_div)

IsLevel = Literal["token", "sequence", "geometric"]
IsMode = Literal["truncate", "mask"]
IS_LEVELS: tuple[str, ...] = ("token", "sequence", "geometric")
IS_MODES: tuple[str, ...] = ("truncate", "mask")


class ImportanceWeights(NamedTuple):
    """Result of :func:`truncated_is_weights`; ``[B, T]`` float32 each, 0 at masked tokens."""

    weights: Array  # multiply the per-token policy loss by these (constants: no gradient).
    capped: Array   # 1.0 where the raw weight exceeded the cap (truncated or masked).
    raw: Array      # the uncapped weight (diagnostic).


def truncated_is_weights(trainer_logp: ArrayLike, sampler_logp: ArrayLike,
                         mask: ArrayLike | None = None, *, cap: ArrayLike = 2.0,
                         level: IsLevel = "token", mode: IsMode = "truncate",
                         log_ratio_clamp: ArrayLike = DEFAULT_LOG_RATIO_CLAMP
                         ) -> ImportanceWeights:
    """Capped importance weights ``pi_trainer / pi_rollout`` of the sampled tokens.

    Args:
      trainer_logp: ``[B, T]`` log-probs of the sampled tokens recomputed by the trainer with
        the weights that generated them (the ``old_logp`` of the policy loss).
      sampler_logp: ``[B, T]`` log-probs reported by the rollout engine.
      mask: optional bool ``[B, T]`` of valid tokens.
      cap: ``C`` (traceable), > 0. A weight exactly equal to ``C`` is kept as is.
      level: static; ``"token"``, ``"sequence"`` (product over the sequence) or ``"geometric"``
        (geometric mean over the sequence).
      mode: static; ``"truncate"`` (``min(w, C)``) or ``"mask"`` (``w * [w <= C]``).
      log_ratio_clamp: bound on the (token, sequence or mean) log-ratio before ``exp``.

    Returns:
      :class:`ImportanceWeights`; ``weights`` carry no gradient.

    References:
      Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training",
      https://fengyao.notion.site/off-policy-rl (truncated importance sampling, token level).
      Liu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse from the
      Training-Inference Mismatch", https://yingru.notion.site/When-Speed-Kills-Stability
      (sequence-level and masked importance sampling).
      Espeholt et al. 2018, "IMPALA", arXiv 1802.01561, eq. 1 (truncated ratios).
    """
    check_choice("level", level, IS_LEVELS)
    check_choice("mode", mode, IS_MODES)
    check_range("cap", cap, gt=0.0)
    check_range("log_ratio_clamp", log_ratio_clamp, gt=0.0)
    trainer_logp = jax.lax.stop_gradient(f32(trainer_logp, "trainer_logp"))
    check_rank(trainer_logp, 2, "trainer_logp", "[B, T]")
    sampler_logp = jax.lax.stop_gradient(f32(sampler_logp, "sampler_logp"))
    check_shape(sampler_logp, trainer_logp.shape, "sampler_logp")
    mask = mask_or_ones(mask, trainer_logp.shape)
    log_ratio = masked_where(mask, trainer_logp - sampler_logp)
    if level != "token":
        log_ratio = jnp.sum(log_ratio, axis=-1, keepdims=True)
        if level == "geometric":
            log_ratio = safe_div(log_ratio, jnp.sum(mask, axis=-1, keepdims=True).astype(jnp.float32))
        log_ratio = jnp.broadcast_to(log_ratio, trainer_logp.shape)
    raw = jnp.exp(jnp.clip(log_ratio, -log_ratio_clamp, log_ratio_clamp))
    over = raw > cap
    weights = jnp.minimum(raw, cap) if mode == "truncate" else jnp.where(over, 0.0, raw)
    return ImportanceWeights(weights=masked_where(mask, weights),
                             capped=(over & mask).astype(jnp.float32),
                             raw=masked_where(mask, raw))
