"""Per-token policy losses, the clipped value loss and the entropy of logits.

Every policy loss has the signature ``fn(logp, old_logp, advantages, mask=None, **hparams)``
and returns a :class:`PolicyLossOutput` of ``[B, T]`` arrays: the loss to MINIMISE (the negated
surrogate objective), NOT aggregated — aggregate with :func:`r1jax.algos.aggregation.aggregate_loss`
and the whole batch's denominator — plus per-token diagnostics (aggregate them the same way,
e.g. ``token_mean`` of ``clipped_high`` is the high clip fraction).

``logp`` (current policy, differentiated) and ``old_logp`` (behaviour policy, constant) are
per-token log-probabilities ``[B, T]``; ``advantages`` is ``[B, T]`` or ``[B]`` (one per
sequence, broadcast over tokens). Log-ratios are clamped to ``[-log_ratio_clamp,
log_ratio_clamp]`` before ``exp``. Masked tokens get loss 0 and gradient 0, even when their
log-probs are garbage (``-inf``/NaN padding never leaks).

Clip boundaries. A token is clipped (constant objective, zero gradient) only when its ratio is
STRICTLY beyond the boundary on the side the advantage pushes it to: ``A > 0 and ratio > 1 +
eps_high`` or ``A < 0 and ratio < 1 - eps_low`` (dual clip: ``A < 0 and ratio > c``). A ratio
exactly on a boundary is inside the trust region and keeps its gradient; the loss value is the
same either way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.algos.registry import Registry
from r1jax.algos._common import (DEFAULT_LOG_RATIO_CLAMP, Array, ArrayLike, check_range, check_rank, f32, mask_or_ones,
                                 masked_where, safe_div)



class PolicyLossOutput(NamedTuple):
    """Per-token outputs of a policy loss; every field is ``[B, T]`` float32, 0 at masked tokens."""

    loss: Array          # the per-token loss to minimise (negated surrogate).
    ratio: Array         # the importance ratio the surrogate used (constant-valued diagnostics).
    clipped_low: Array   # 1.0 where A < 0 and ratio < 1 - eps_low (clipped, no gradient).
    clipped_high: Array  # 1.0 where A > 0 and ratio > 1 + eps_high (clipped, no gradient).
    dual_clipped: Array  # 1.0 where A < 0 and ratio > dual_clip (clipped, no gradient).


POLICY_LOSSES = Registry("policy loss", {"sequence_level": False})
"""Policy losses by name: ``fn(logp, old_logp, advantages, mask, **keywords) -> PolicyLossOutput``.

``POLICY_LOSSES[name]`` is the function; the trainer passes the keyword-only parameters it declares
(``eps_low``, ``eps_high``, ``dual_clip``, ``log_ratio_clamp``, ...) from its hyper-parameters.
Metadata: ``sequence_level`` (the loss reduces over each row, one sequence per row, as GSPO's
sequence ratio does; such a loss cannot train on packed rows)."""
register_policy_loss = POLICY_LOSSES.register


def _token_inputs(logp, old_logp, advantages, mask):
    logp = f32(logp, "logp")
    check_rank(logp, 2, "logp", "[B, T]")
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    old_logp = f32(old_logp, "old_logp")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp: expected shape {logp.shape} (as logp), got {old_logp.shape}")
    adv = f32(advantages, "advantages")
    if adv.shape == logp.shape[:1]:
        adv = adv[:, None]
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages: expected shape {logp.shape} or {logp.shape[:1]} "
                         f"(as logp, or one per sequence), got {adv.shape}")
    adv = jnp.broadcast_to(jax.lax.stop_gradient(adv), logp.shape)
    mask = mask_or_ones(mask, logp.shape)
    return logp, jax.lax.stop_gradient(old_logp), adv, mask


def _check_clip(eps_low, eps_high, log_ratio_clamp):
    check_range("eps_low", eps_low, ge=0.0, le=1.0)
    check_range("eps_high", eps_high, ge=0.0)
    check_range("log_ratio_clamp", log_ratio_clamp, gt=0.0)


def _clipped_objective(ratio, adv, mask, eps_low, eps_high, dual_clip):
    """PPO's ``min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``, optionally dual-clipped
    with ``max(., dual_clip * A)`` for ``A < 0``, written with explicit branches (see module doc)."""
    low, high = 1.0 - eps_low, 1.0 + eps_high
    clipped_high = (adv > 0) & (ratio > high) & mask
    clipped_low = (adv < 0) & (ratio < low) & mask
    objective = jnp.where(clipped_high, high * adv, jnp.where(clipped_low, low * adv, ratio * adv))
    if dual_clip is None:
        dual = jnp.zeros_like(mask)
    else:
        dual = (adv < 0) & (ratio > dual_clip) & mask
        objective = jnp.where(dual, dual_clip * adv, objective)
    return objective, clipped_low, clipped_high, dual


def _clipped_output(ratio, adv, mask, eps_low, eps_high, dual_clip) -> PolicyLossOutput:
    """The per-token loss and diagnostics of the clipped objective at ``ratio`` (shared by the token-
    and sequence-ratio losses)."""
    objective, c_low, c_high, dual = _clipped_objective(ratio, adv, mask, eps_low, eps_high, dual_clip)
    return PolicyLossOutput(
        loss=masked_where(mask, -objective),
        ratio=masked_where(mask, jax.lax.stop_gradient(ratio)),
        clipped_low=c_low.astype(jnp.float32),
        clipped_high=c_high.astype(jnp.float32),
        dual_clipped=dual.astype(jnp.float32),
    )


@register_policy_loss("clip")
def clipped_surrogate_loss(logp: ArrayLike, old_logp: ArrayLike, advantages: ArrayLike,
                           mask: ArrayLike | None = None, *, eps_low: ArrayLike = 0.2,
                           eps_high: ArrayLike | None = None, dual_clip: ArrayLike | None = None,
                           log_ratio_clamp: ArrayLike = DEFAULT_LOG_RATIO_CLAMP
                           ) -> PolicyLossOutput:
    """PPO / GRPO clipped surrogate with asymmetric clip range and optional dual clip.

    ``loss_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)``,
    ``rho_t = exp(logp_t - old_logp_t)``; with dual clip, for ``A_t < 0`` the objective is
    ``max(that, c * A_t)``, bounding the loss of tokens whose ratio exploded.

    Args:
      logp: ``[B, T]`` log-probs of the sampled tokens under the current policy.
      old_logp: ``[B, T]`` log-probs under the behaviour policy (treated as constant).
      advantages: ``[B, T]`` or ``[B]`` (treated as constant).
      mask: optional bool ``[B, T]`` of valid tokens.
      eps_low: lower clip range, ratio floor ``1 - eps_low`` (traceable), in [0, 1].
      eps_high: upper clip range, ratio ceiling ``1 + eps_high`` (traceable); None means
        ``eps_low`` (symmetric PPO). DAPO's clip-higher uses e.g. 0.2 / 0.28.
      dual_clip: None (off) or ``c > 1`` (traceable; ``jnp.inf`` also means off).
      log_ratio_clamp: bound on ``|logp - old_logp|`` before ``exp`` (traceable).

    Returns:
      :class:`PolicyLossOutput`.

    References:
      Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347, eq. 7.
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3 (GRPO's per-token surrogate).
      Yu et al. 2025, "DAPO", arXiv 2503.14476, §3.1 and eq. 10 (clip-higher, eps_low/eps_high).
      Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning",
      arXiv 1912.09729, eq. 4 (dual clip).
    """
    eps_high = eps_low if eps_high is None else eps_high
    _check_clip(eps_low, eps_high, log_ratio_clamp)
    if dual_clip is not None:
        check_range("dual_clip", dual_clip, gt=1.0)
    logp, old_logp, adv, mask = _token_inputs(logp, old_logp, advantages, mask)
    log_ratio = jnp.clip(masked_where(mask, logp - old_logp), -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    return _clipped_output(ratio, adv, mask, eps_low, eps_high, dual_clip)


@register_policy_loss("gspo", sequence_level=True)
def gspo_loss(logp: ArrayLike, old_logp: ArrayLike, advantages: ArrayLike,
              mask: ArrayLike | None = None, *, eps_low: ArrayLike = 3e-4,
              eps_high: ArrayLike | None = 4e-4,
              log_ratio_clamp: ArrayLike = DEFAULT_LOG_RATIO_CLAMP) -> PolicyLossOutput:
    """GSPO: the clipped surrogate on the length-normalised SEQUENCE importance ratio.

    ``s_i = exp((1/|y_i|) sum_t (logp_{i,t} - old_logp_{i,t}))``, written in GSPO-token form
    ``s_{i,t} = sg[s_i] * exp(logp_{i,t} - sg[logp_{i,t}])``: equal to ``s_i`` in value, with
    gradient ``s_i * grad logp_{i,t}``. With one advantage per sequence and
    ``seq_mean_token_mean`` aggregation this is exactly GSPO's sequence-level objective
    (value and gradient); per-token advantages give GSPO-token.

    Args:
      logp: ``[B, T]`` current log-probs.
      old_logp: ``[B, T]`` behaviour log-probs (constant).
      advantages: ``[B]`` or ``[B, T]`` (constant).
      mask: optional bool ``[B, T]`` of valid tokens; ``|y_i|`` is its row sum.
      eps_low, eps_high: clip range of the sequence ratio (traceable); the paper uses 3e-4 and
        4e-4. ``eps_high`` None means ``eps_low``.
      log_ratio_clamp: bound on the sequence log-ratio before ``exp`` (traceable).

    Returns:
      :class:`PolicyLossOutput`; ``ratio`` is ``s_i`` on every valid token of sequence ``i``.

    References:
      Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071, eq. 5-7
      (sequence ratio, length-normalised) and eq. 13-14 (GSPO-token).
    """
    eps_high = eps_low if eps_high is None else eps_high
    _check_clip(eps_low, eps_high, log_ratio_clamp)
    logp, old_logp, adv, mask = _token_inputs(logp, old_logp, advantages, mask)
    safe_logp = masked_where(mask, logp)
    token_log_ratio = masked_where(mask, logp - old_logp)
    lengths = jnp.sum(mask, axis=-1, keepdims=True).astype(jnp.float32)
    seq_log_ratio = safe_div(jnp.sum(token_log_ratio, axis=-1, keepdims=True), lengths)
    seq_log_ratio = jnp.clip(seq_log_ratio, -log_ratio_clamp, log_ratio_clamp)
    log_ratio = jax.lax.stop_gradient(seq_log_ratio) + safe_logp - jax.lax.stop_gradient(safe_logp)
    ratio = jnp.exp(log_ratio)
    return _clipped_output(ratio, adv, mask, eps_low, eps_high, None)


@register_policy_loss("pg")
def policy_gradient_loss(logp: ArrayLike, old_logp: ArrayLike | None, advantages: ArrayLike,
                         mask: ArrayLike | None = None, *,
                         log_ratio_clamp: ArrayLike = DEFAULT_LOG_RATIO_CLAMP) -> PolicyLossOutput:
    """Plain (REINFORCE) policy gradient: ``loss_t = -A_t * logp_t``; no ratio, no clipping.

    Args:
      logp: ``[B, T]`` current log-probs.
      old_logp: ``[B, T]`` behaviour log-probs, used only for the ``ratio`` diagnostic
        (None: ratio 1).
      advantages: ``[B]`` or ``[B, T]`` (constant).
      mask: optional bool ``[B, T]`` of valid tokens.
      log_ratio_clamp: bound on the diagnostic log-ratio before ``exp``.

    Returns:
      :class:`PolicyLossOutput`; the clip indicators are all 0.

    References:
      Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist
      Reinforcement Learning", Machine Learning 8, eq. 11 (REINFORCE).
    """
    check_range("log_ratio_clamp", log_ratio_clamp, gt=0.0)
    logp, old_logp, adv, mask = _token_inputs(logp, old_logp, advantages, mask)
    log_ratio = jnp.clip(masked_where(mask, logp - old_logp), -log_ratio_clamp, log_ratio_clamp)
    zeros = jnp.zeros(logp.shape, jnp.float32)
    return PolicyLossOutput(
        loss=masked_where(mask, -adv * masked_where(mask, logp)),
        ratio=masked_where(mask, jax.lax.stop_gradient(jnp.exp(log_ratio))),
        clipped_low=zeros, clipped_high=zeros, dual_clipped=zeros,
    )


@register_policy_loss("cispo")
def cispo_loss(logp: ArrayLike, old_logp: ArrayLike, advantages: ArrayLike,
               mask: ArrayLike | None = None, *, eps_low: ArrayLike = 1.0,
               eps_high: ArrayLike | None = 2.0,
               log_ratio_clamp: ArrayLike = DEFAULT_LOG_RATIO_CLAMP) -> PolicyLossOutput:
    """CISPO: REINFORCE weighted by a clipped, stop-gradient importance ratio.

    ``loss_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) * A_t * logp_t`` with
    ``rho_t = exp(logp_t - old_logp_t)``. Unlike PPO's clipped surrogate, a clipped token keeps
    its gradient (only its weight is bounded), so rare tokens with large ratios still learn.

    Args:
      logp: ``[B, T]`` current log-probs (differentiated).
      old_logp: ``[B, T]`` behaviour log-probs (constant).
      advantages: ``[B]`` or ``[B, T]`` (constant).
      mask: optional bool ``[B, T]`` of valid tokens.
      eps_low, eps_high: the IS-weight clip range (traceable); MiniMax-M1 leaves the lower bound
        open (``eps_low = 1``: weight floor 0) and tunes only ``eps_high``. ``eps_high`` None
        means ``eps_low``.
      log_ratio_clamp: bound on the log-ratio before ``exp`` (traceable).

    Returns:
      :class:`PolicyLossOutput`; ``clipped_low`` / ``clipped_high`` mark tokens whose WEIGHT was
      clipped (their gradient is kept).

    References:
      MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
      arXiv 2506.13585, §3.1, eq. 4-5 (CISPO objective, clipped IS weight).
    """
    eps_high = eps_low if eps_high is None else eps_high
    check_range("eps_low", eps_low, ge=0.0)
    check_range("eps_high", eps_high, ge=0.0)
    check_range("log_ratio_clamp", log_ratio_clamp, gt=0.0)
    logp, old_logp, adv, mask = _token_inputs(logp, old_logp, advantages, mask)
    log_ratio = jnp.clip(masked_where(mask, logp - old_logp), -log_ratio_clamp, log_ratio_clamp)
    ratio = jax.lax.stop_gradient(jnp.exp(log_ratio))
    low, high = 1.0 - eps_low, 1.0 + eps_high
    weight = jnp.clip(ratio, low, high)
    zeros = jnp.zeros(logp.shape, jnp.float32)
    return PolicyLossOutput(
        loss=masked_where(mask, -weight * adv * masked_where(mask, logp)),
        ratio=masked_where(mask, ratio),
        clipped_low=((ratio < low) & mask).astype(jnp.float32),
        clipped_high=((ratio > high) & mask).astype(jnp.float32),
        dual_clipped=zeros,
    )


@register_policy_loss("nll")
def nll_loss(logp: ArrayLike, old_logp: ArrayLike | None, advantages: ArrayLike,
             mask: ArrayLike | None = None) -> PolicyLossOutput:
    """Supervised fine-tuning as a policy loss: ``loss_t = -logp_t`` (advantages ignored).

    SFT (cold start, rejection-sampling SFT, distillation, pre-training) runs through the same
    update machinery as RL with this loss.

    Args:
      logp: ``[B, T]`` log-probs of the target tokens (differentiated).
      old_logp, advantages: ignored (the policy-loss signature).
      mask: optional bool ``[B, T]`` of trained tokens.

    Returns:
      :class:`PolicyLossOutput` with ratio 1 and no clipping.

    References:
      DeepSeek-AI 2025, "DeepSeek-R1", arXiv 2501.12948, §2.3.1 / §3.2 (cold-start SFT) and §2.3.3
      (rejection sampling and supervised fine-tuning): maximum likelihood of the completion tokens.
    """
    del old_logp, advantages
    logp = f32(logp, "logp")
    check_rank(logp, 2, "logp", "[B, T]")
    mask = mask_or_ones(mask, logp.shape)
    zeros = jnp.zeros(logp.shape, jnp.float32)
    return PolicyLossOutput(loss=masked_where(mask, -logp), ratio=mask.astype(jnp.float32),
                            clipped_low=zeros, clipped_high=zeros, dual_clipped=zeros)



class ValueLossOutput(NamedTuple):
    """Per-token outputs of :func:`clipped_value_loss`, ``[B, T]`` float32, 0 at masked tokens."""

    loss: Array     # 0.5 * max((V - R)^2, (V_clipped - R)^2)
    clipped: Array  # 1.0 where the clipped term is the larger one (no gradient there).


def clipped_value_loss(values: ArrayLike, old_values: ArrayLike, returns: ArrayLike,
                       mask: ArrayLike | None = None, *,
                       clip: ArrayLike | None = 0.2) -> ValueLossOutput:
    """PPO's clipped value loss.

    ``V_clip = old_V + clip(V - old_V, -clip, clip)``;
    ``loss_t = 0.5 * max((V_t - R_t)^2, (V_clip_t - R_t)^2)``. A token where the clipped
    term is STRICTLY larger takes it (zero gradient); a tie keeps the unclipped gradient.

    Args:
      values: ``[B, T]`` current critic values (differentiated).
      old_values: ``[B, T]`` critic values at rollout time (constant).
      returns: ``[B, T]`` regression targets, e.g. ``GaeOutput.returns`` (constant).
      mask: optional bool ``[B, T]`` of valid tokens.
      clip: value clip range (traceable), >= 0; None disables clipping (``0.5 (V - R)^2``).

    Returns:
      :class:`ValueLossOutput`.

    References:
      Schulman et al. 2017, PPO, arXiv 1707.06347, §5 (value loss term); the clipped form of
      OpenAI baselines' ``ppo2``; Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155, §C.
    """
    values = f32(values, "values")
    check_rank(values, 2, "values", "[B, T]")
    old_values = jax.lax.stop_gradient(f32(old_values, "old_values"))
    returns = jax.lax.stop_gradient(f32(returns, "returns"))
    for name, x in (("old_values", old_values), ("returns", returns)):
        if x.shape != values.shape:
            raise ValueError(f"{name}: expected shape {values.shape} (as values), got {x.shape}")
    mask = mask_or_ones(mask, values.shape)
    err = jnp.square(values - returns)
    if clip is None:
        return ValueLossOutput(loss=masked_where(mask, 0.5 * err),
                               clipped=jnp.zeros(values.shape, jnp.float32))
    check_range("clip", clip, ge=0.0)
    # Written as a select so that inside the clip range V_clip is V bit for bit (no rounding of
    # old + (V - old)), and the tie "clipped term == unclipped term" really is a tie.
    delta = values - old_values
    clipped_values = jnp.where(delta > clip, old_values + clip,
                               jnp.where(delta < -clip, old_values - clip, values))
    err_clipped = jnp.square(clipped_values - returns)
    is_clipped = (err_clipped > err) & mask
    loss = 0.5 * jnp.where(is_clipped, err_clipped, err)
    return ValueLossOutput(loss=masked_where(mask, loss), clipped=is_clipped.astype(jnp.float32))


def entropy_from_logits(logits: ArrayLike, temperature: ArrayLike = 1.0) -> Array:
    """Entropy of ``softmax(logits / temperature)`` over the last axis, computed stably.

    ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` with ``z = logits / temperature`` in float32;
    ``-inf`` logits (banned tokens) contribute 0, NaN-free in value and gradient.

    Args:
      logits: ``[..., V]`` (any float dtype; computed in float32).
      temperature: > 0 (traceable).

    Returns:
      ``[...]`` float32 entropies in nats.

    References:
      Shannon 1948; the entropy bonus of Mnih et al. 2016 (A3C), arXiv 1602.01783, §4, and of
      PPO, arXiv 1707.06347, eq. 9.
    """
    check_range("temperature", temperature, gt=0.0)
    z = f32(logits, "logits") / temperature
    # Shift by the (constant) row max: logsumexp(z) - E_p[z] is shift-invariant, and the two
    # terms no longer cancel catastrophically when the logits are large.
    z_max = jax.lax.stop_gradient(jnp.max(jnp.where(jnp.isfinite(z), z, -jnp.inf), axis=-1,
                                          keepdims=True))
    z = z - jnp.where(jnp.isfinite(z_max), z_max, 0.0)
    log_z = jax.nn.logsumexp(z, axis=-1)
    p = jax.nn.softmax(z, axis=-1)
    finite_z = jnp.where(jnp.isfinite(z), z, 0.0)
    return log_z - jnp.sum(p * finite_z, axis=-1)
