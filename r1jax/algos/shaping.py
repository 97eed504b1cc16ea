"""Reward shaping and batch filtering from DAPO: the overlong penalty and dynamic sampling."""

from __future__ import annotations

import jax.numpy as jnp

from r1jax.algos._common import (Array, ArrayLike, check_range, check_rank, f32, mask_or_ones,
                                 masked_where)


def overlong_penalty(lengths: ArrayLike, *, max_len: ArrayLike, cache_len: ArrayLike) -> Array:
    """DAPO's soft overlong punishment, added to the task reward.

    ``0`` for ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache`` (from 0 down
    to -1, linear) for ``L_max - L_cache < |y| <= L_max``; ``-1`` for ``|y| > L_max``.

    Args:
      lengths: ``[...]`` completion lengths ``|y|`` in tokens.
      max_len: ``L_max``, the maximum completion length (traceable), > 0.
      cache_len: ``L_cache``, the length of the punishment buffer (traceable), in (0, L_max].

    Returns:
      ``[...]`` float32 penalties in ``[-1, 0]``.

    References:
      Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
      arXiv 2503.14476, §3.4, eq. 13 (soft overlong punishment).
    """
    check_range("max_len", max_len, gt=0.0)
    check_range("cache_len", cache_len, gt=0.0)
    if isinstance(max_len, (int, float)) and isinstance(cache_len, (int, float)):
        check_range("cache_len", cache_len, le=max_len)
    lengths = f32(lengths, "lengths")
    max_len = jnp.asarray(max_len, jnp.float32)
    cache_len = jnp.asarray(cache_len, jnp.float32)
    start = max_len - cache_len
    in_buffer = (start - lengths) / cache_len
    return jnp.where(lengths <= start, 0.0, jnp.where(lengths <= max_len, in_buffer, -1.0))


def dynamic_sampling_mask(rewards: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """DAPO dynamic sampling: which groups carry a learning signal (their rewards differ).

    A group whose valid rewards are all equal (all correct or all wrong) has zero group-relative
    advantage everywhere and only dilutes the batch; DAPO over-samples and keeps the others.

    Args:
      rewards: ``[num_groups, G]`` rewards.
      mask: optional bool ``[num_groups, G]`` of present completions.

    Returns:
      ``[num_groups]`` bool: True for groups with at least two valid members whose rewards are
      not all exactly equal.

    References:
      Yu et al. 2025, "DAPO", arXiv 2503.14476, §3.2 and eq. 11
      (``0 < |{o_i : is_equivalent(a, o_i)}| < G``).
    """
    rewards = f32(rewards, "rewards")
    check_rank(rewards, 2, "rewards", "[num_groups, G]")
    valid = mask_or_ones(mask, rewards.shape)
    high = jnp.max(jnp.where(valid, rewards, -jnp.inf), axis=-1)
    low = jnp.min(jnp.where(valid, rewards, jnp.inf), axis=-1)
    return (jnp.sum(valid, axis=-1) >= 2) & (high > low)


def apply_overlong_penalty(rewards: ArrayLike, lengths: ArrayLike, *, max_len: ArrayLike,
                           cache_len: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """``rewards + overlong_penalty(lengths)``, 0 at masked entries.

    Args:
      rewards: ``[...]`` task rewards.
      lengths: ``[...]`` completion lengths, same shape.
      max_len, cache_len: as in :func:`overlong_penalty` (traceable).
      mask: optional bool of the same shape.

    Returns:
      ``[...]`` float32 shaped rewards.

    References:
      Yu et al. 2025, "DAPO", arXiv 2503.14476, eq. 13.
    """
    rewards = f32(rewards, "rewards")
    lengths = f32(lengths, "lengths")
    if lengths.shape != rewards.shape:
        raise ValueError(f"lengths: expected shape {rewards.shape} (as rewards), got {lengths.shape}")
    valid = mask_or_ones(mask, rewards.shape)
    return masked_where(valid, rewards + overlong_penalty(lengths, max_len=max_len,
                                                          cache_len=cache_len))
