"""Generalised advantage estimation and discounted returns over token sequences.

Both are the reverse linear recurrence ``x_t = a_t + c_t * x_{t+1}`` and are computed with
``lax.associative_scan`` (O(log T) depth: fast on accelerators and on long sequences). A plain
reverse ``lax.scan`` is kept as the reference (``method="scan"``); tests prove them equal.

Masks. ``mask[B, T]`` marks valid tokens in any pattern (right padding, left padding, holes
such as tool-output tokens inside a multi-turn completion). Masked positions are transparent:
a valid token's successor is the next VALID token of its row, the value after a row's last
valid token is 0 (the episode ends there), and masked positions get advantage 0.
``segment_ids[B, T]`` (optional, packed rows) additionally ends an episode wherever the
segment id of the next valid token differs.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp
from jax import lax

from r1jax.algos._common import (Array, ArrayLike, check_choice, check_range, check_rank, f32,
                                 mask_or_ones, masked_where)

GaeMethod = Literal["associative_scan", "scan"]
GAE_METHODS: tuple[str, ...] = ("associative_scan", "scan")


class GaeOutput(NamedTuple):
    """Result of :func:`gae_advantages`; both ``[B, T]`` float32, 0 at masked tokens."""

    advantages: Array
    returns: Array  # advantages + values: the critic's regression target.


def _inputs(rewards, values, mask, segment_ids):
    rewards = f32(rewards, "rewards")
    check_rank(rewards, 2, "rewards", "[B, T]")
    values = jnp.zeros_like(rewards) if values is None else f32(values, "values")
    if values.shape != rewards.shape:
        raise ValueError(f"values: expected shape {rewards.shape} (as rewards), got {values.shape}")
    mask = mask_or_ones(mask, rewards.shape)
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        if segment_ids.shape != rewards.shape:
            raise ValueError(f"segment_ids: expected shape {rewards.shape} (as rewards), "
                             f"got {segment_ids.shape}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise TypeError(f"segment_ids: expected integers, got dtype {segment_ids.dtype}")
    return rewards, values, mask, segment_ids


def _successor(mask: Array, values: Array, segment_ids: Array | None) -> tuple[Array, Array]:
    """For each position: the value at the next valid position of its row, and whether the
    episode continues there (a next valid position exists, in the same segment)."""
    t = mask.shape[-1]
    index = jnp.where(mask, jnp.arange(t, dtype=jnp.int32), t)
    first_valid_from = lax.cummin(index, axis=index.ndim - 1, reverse=True)  # first valid >= s
    nxt = jnp.concatenate([first_valid_from[..., 1:], jnp.full_like(index[..., :1], t)], -1)
    exists = nxt < t
    nxt = jnp.minimum(nxt, t - 1)
    next_value = jnp.take_along_axis(values, nxt, axis=-1)
    if segment_ids is not None:
        exists = exists & (jnp.take_along_axis(segment_ids, nxt, axis=-1) == segment_ids)
    return next_value, exists


def _reverse_linear_recurrence(a: Array, c: Array) -> Array:
    """``x_t = a_t + c_t * x_{t+1}`` along the last axis with ``x_T = 0``, via associative_scan."""

    def compose(later, earlier):
        # In reverse order the element already scanned (``later`` in time) maps the carry in,
        # ``earlier`` is applied after it: x = a_e + c_e * (a_l + c_l * x_in).
        c_l, a_l = later
        c_e, a_e = earlier
        return c_l * c_e, a_e + c_e * a_l

    _, x = lax.associative_scan(compose, (c, a), reverse=True, axis=a.ndim - 1)
    return x


def _gae_associative(rewards, values, mask, segment_ids, gamma, lam):
    next_value, cont = _successor(mask, values, segment_ids)
    cont = cont.astype(jnp.float32)
    delta = rewards + gamma * cont * next_value - values
    a = masked_where(mask, delta)
    c = jnp.where(mask, gamma * lam * cont, 1.0)
    return masked_where(mask, _reverse_linear_recurrence(a, c))


def _gae_scan(rewards, values, mask, segment_ids, gamma, lam):
    """Reference: one reverse ``lax.scan`` over time carrying the next valid token's state."""
    seg = jnp.zeros(rewards.shape, jnp.int32) if segment_ids is None else segment_ids
    batch = rewards.shape[0]

    def step(carry, xs):
        next_value, next_adv, next_seg, has_next = carry
        r, v, m, s = xs
        cont = (has_next & (next_seg == s)).astype(jnp.float32)
        delta = r + gamma * cont * next_value - v
        adv = delta + gamma * lam * cont * next_adv
        new_carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv),
                     jnp.where(m, s, next_seg), has_next | m)
        return new_carry, jnp.where(m, adv, 0.0)

    init = (jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.float32),
            jnp.zeros((batch,), seg.dtype), jnp.zeros((batch,), bool))
    xs = (rewards.T, values.T, mask.T, seg.T)
    _, adv_t = lax.scan(step, init, xs, reverse=True)
    return adv_t.T


def gae_advantages(rewards: ArrayLike, values: ArrayLike | None, mask: ArrayLike | None = None, *,
                   gamma: ArrayLike = 1.0, lam: ArrayLike = 0.95,
                   segment_ids: ArrayLike | None = None,
                   method: GaeMethod = "associative_scan") -> GaeOutput:
    """Generalised advantage estimation over token sequences.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    where ``t+1`` is the next valid token of the same episode, and ``V = A = 0`` after the
    episode's last token (no bootstrap: an LLM completion ends its episode).
    ``lam = 1`` gives discounted return minus value; ``lam = 0`` gives the TD error.

    Args:
      rewards: ``[B, T]`` per-token rewards (e.g. from :func:`r1jax.algos.kl.kl_penalty_rewards`).
      values: ``[B, T]`` critic values ``V(s_t)`` (None: zeros).
      mask: optional bool ``[B, T]`` of valid tokens (see module docstring).
      gamma: discount, in [0, 1] (traceable: ``vmap`` over it freely).
      lam: GAE lambda, in [0, 1] (traceable).
      segment_ids: optional ``[B, T]`` ints for packed rows; an episode ends where the id of the
        next valid token differs.
      method: static. ``"associative_scan"`` (default) or ``"scan"`` (sequential reference).

    Returns:
      :class:`GaeOutput` ``(advantages, returns)``, ``[B, T]`` float32 each, ``returns =
      advantages + values``; both 0 at masked tokens.

    References:
      Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
      Estimation", arXiv 1506.02438, eq. 16 (and eq. 17-18 for lambda = 0 and 1).
      Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155, and DeepSeek-R1, arXiv 2501.12948 v2,
      Appendix (PPO with GAE lambda as the GRPO comparator).
    """
    check_choice("method", method, GAE_METHODS)
    check_range("gamma", gamma, ge=0.0, le=1.0)
    check_range("lam", lam, ge=0.0, le=1.0)
    rewards, values, mask, segment_ids = _inputs(rewards, values, mask, segment_ids)
    gamma = jnp.asarray(gamma, jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)
    impl = _gae_associative if method == "associative_scan" else _gae_scan
    adv = impl(rewards, values, mask, segment_ids, gamma, lam)
    return GaeOutput(advantages=adv, returns=masked_where(mask, adv + values))


def discounted_returns(rewards: ArrayLike, mask: ArrayLike | None = None, *,
                       gamma: ArrayLike = 1.0, segment_ids: ArrayLike | None = None,
                       method: GaeMethod = "associative_scan") -> Array:
    """Discounted reward-to-go ``G_t = sum_{s >= t} gamma^(s - t) r_s`` over valid tokens.

    The same recurrence as GAE with ``V = 0`` and ``lam = 1``; masks and segments as there.

    Args:
      rewards: ``[B, T]`` per-token rewards.
      mask: optional bool ``[B, T]`` of valid tokens; ``s`` runs over valid tokens only.
      gamma: discount, in [0, 1] (traceable).
      segment_ids: optional ``[B, T]`` ints for packed rows.
      method: static; ``"associative_scan"`` or ``"scan"``.

    Returns:
      ``[B, T]`` float32 returns, 0 at masked tokens.

    References:
      Sutton & Barto 2018, "Reinforcement Learning: An Introduction", eq. 3.8.
    """
    return gae_advantages(rewards, None, mask, gamma=gamma, lam=1.0, segment_ids=segment_ids,
                          method=method).advantages

