"""Outcome and process advantages for group-sampled completions.

Layout. A rollout batch holds ``num_groups`` prompts with ``G`` completions each. Outcome
rewards come as ``rewards[num_groups, G]`` (a flat ``[B]`` batch with contiguous groups is
``rewards.reshape(num_groups, G)``), with an optional bool ``mask[num_groups, G]`` marking the
completions that are present: groups left ragged by filtering keep their static shape and
mask out the missing members. Masked entries never influence a statistic and get advantage 0.

Every function here is pure, ``jit``/``vmap``/``grad`` safe, computes in float32, and takes
numbers such as ``eps`` as (traceable) arguments. String options are static.

Token-level estimators (GAE, discounted returns) live in :mod:`r1jax.algos.gae`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from r1jax.algos import gae as _gae
from r1jax.algos._common import (Array, ArrayLike, check_choice, check_range, check_rank,
                                 check_shape, f32, mask_or_ones, masked_where, safe_div)

StdScaling = Literal["group", "batch", "none"]
STD_SCALINGS: tuple[str, ...] = ("group", "batch", "none")


def _shifted(x: Array, valid: Array, axes: tuple[int, ...]) -> Array:
    """``x`` minus the smallest valid entry over ``axes`` (a constant: the statistics below do not
    depend on it). Equal rewards then become exact zeros, so a group of equal, non-representable
    rewards (0.1, 0.1, ...) gets advantage exactly 0 instead of rounding noise divided by eps."""
    low = jnp.min(jnp.where(valid, x, jnp.inf), axis=axes, keepdims=True)
    low = jax.lax.stop_gradient(jnp.where(jnp.isfinite(low), low, 0.0))
    return x - low


def _masked_mean(x: Array, valid: Array, axes: tuple[int, ...]) -> Array:
    n = jnp.sum(valid, axis=axes, keepdims=True).astype(jnp.float32)
    return safe_div(jnp.sum(masked_where(valid, x), axis=axes, keepdims=True), n)


def _masked_std(x: Array, valid: Array, axes: tuple[int, ...], ddof: int) -> Array:
    """Standard deviation of the valid entries of ``x`` over ``axes`` (kept dims); 0 when too few."""
    x = _shifted(x, valid, axes)
    n = jnp.sum(valid, axis=axes, keepdims=True).astype(jnp.float32)
    sq = jnp.sum(masked_where(valid, jnp.square(x - _masked_mean(x, valid, axes))), axis=axes,
                 keepdims=True)
    var = safe_div(sq, n - ddof)
    positive = var > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def _group_normalise(x: Array, valid: Array, std_scaling: str, eps: ArrayLike, ddof: int) -> Array:
    """``(x - group mean) / (std + eps)`` over the valid entries; groups lie along axis 0.

    The group of ``x[i]`` is every valid entry of ``x[i, ...]``. ``std_scaling`` picks the std:
    of the same group ("group"), of every valid entry of the batch ("batch"), or none ("none").
    A zero std with ``eps = 0`` (all rewards equal) gives 0, not NaN.
    """
    check_choice("std_scaling", std_scaling, STD_SCALINGS)
    check_range("eps", eps, ge=0.0)
    if ddof not in (0, 1):
        raise ValueError(f"ddof: expected 0 (population std) or 1 (unbiased std), got {ddof!r}")
    group_axes = tuple(range(1, x.ndim))
    shifted = _shifted(x, valid, group_axes)
    centred = shifted - _masked_mean(shifted, valid, group_axes)
    if std_scaling == "group":
        centred = safe_div(centred, _masked_std(x, valid, group_axes, ddof) + eps)
    elif std_scaling == "batch":
        centred = safe_div(centred, _masked_std(x, valid, tuple(range(x.ndim)), ddof) + eps)
    return masked_where(valid, centred)


def grpo_advantages(rewards: ArrayLike, mask: ArrayLike | None = None, *,
                    std_scaling: StdScaling = "group", eps: ArrayLike = 1e-6,
                    ddof: int = 0) -> Array:
    """GRPO outcome advantages: each reward normalised within its group.

    ``A_i = (r_i - mean(r_group)) / (std + eps)``, the same value on every token of completion i.

    Args:
      rewards: ``[num_groups, G]`` scalar reward of each completion.
      mask: optional bool ``[num_groups, G]``; False marks a missing completion (ragged group).
      std_scaling: static. ``"group"``: std of the completion's group (GRPO). ``"batch"``: std of
        all valid rewards of the batch, with the group mean kept (Lite PPO's "group mean, batch
        std"); computed over the arrays passed in, so pass the whole rollout batch. ``"none"``:
        no std division (Dr.GRPO).
      eps: added to the std before dividing (traceable).
      ddof: static. 0: population std; 1: unbiased std (as ``torch.std`` in TRL / verl).

    Returns:
      ``[num_groups, G]`` float32 advantages; 0 at masked entries and for groups whose rewards
      are all equal. They sum to 0 over the valid members of each group.

    References:
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, §4.1.2 (outcome supervision, eq. 3).
      Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr.GRPO), arXiv 2503.20783, §3.1.
      Liu et al. 2025, "Tricks or Traps?", arXiv 2508.08221, §4.1 (batch-level std).
    """
    rewards = f32(rewards, "rewards")
    check_rank(rewards, 2, "rewards", "[num_groups, G]")
    valid = mask_or_ones(mask, rewards.shape)
    return _group_normalise(rewards, valid, std_scaling, eps, ddof)


def drgrpo_advantages(rewards: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Dr.GRPO outcome advantages: ``r_i - mean(r_group)``, without the std division.

    Args:
      rewards: ``[num_groups, G]`` scalar reward of each completion.
      mask: optional bool ``[num_groups, G]``; False marks a missing completion.

    Returns:
      ``[num_groups, G]`` float32 advantages, 0 at masked entries.

    References:
      Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
      arXiv 2503.20783, §3.1 (eq. 3: GRPO's std normalisation removed).
    """
    return grpo_advantages(rewards, mask, std_scaling="none")


def rloo_advantages(rewards: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """RLOO advantages: each reward minus the mean reward of the OTHER members of its group.

    ``A_i = r_i - (sum_{j != i} r_j) / (n - 1) = n / (n - 1) * (r_i - mean)`` with ``n`` the
    number of valid members of the group.

    Args:
      rewards: ``[num_groups, G]`` scalar reward of each completion.
      mask: optional bool ``[num_groups, G]``; False marks a missing completion.

    Returns:
      ``[num_groups, G]`` float32 advantages; 0 at masked entries and in groups with fewer than
      two valid members (no leave-one-out baseline exists there).

    References:
      Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!", ICLR workshop, eq. 8.
      Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
      from Human Feedback in LLMs", arXiv 2402.14740, §3.2 (eq. 6).
    """
    rewards = f32(rewards, "rewards")
    check_rank(rewards, 2, "rewards", "[num_groups, G]")
    valid = mask_or_ones(mask, rewards.shape)
    rewards = _shifted(rewards, valid, (1,))  # equal rewards -> advantages exactly 0
    n = jnp.sum(valid, axis=-1, keepdims=True).astype(jnp.float32)
    total = jnp.sum(masked_where(valid, rewards), axis=-1, keepdims=True)
    baseline = safe_div(total - rewards, n - 1.0)
    return masked_where(valid & (n > 1.0), rewards - baseline)


def process_advantages(step_rewards: ArrayLike, step_mask: ArrayLike,
                       token_mask: ArrayLike | None = None, *,
                       std_scaling: StdScaling = "group", eps: ArrayLike = 1e-6,
                       ddof: int = 0) -> Array:
    """DeepSeekMath process-supervision advantages.

    Each reasoning step ``j`` of completion ``i`` ends at token ``index(j)`` and has a reward
    ``r_i^index(j)``. The step rewards are normalised over ALL steps of ALL completions of the
    group, ``r~ = (r - mean(R)) / std(R)``, and the advantage of token ``t`` is the sum of the
    normalised rewards of the steps ending at or after ``t``:
    ``A_{i,t} = sum_{index(j) >= t} r~_i^index(j)``.

    Args:
      step_rewards: ``[num_groups, G, T]``; the reward of a step sits on the step's last token.
        Entries where ``step_mask`` is False are ignored.
      step_mask: bool ``[num_groups, G, T]``, True exactly at the last token of each step.
      token_mask: optional bool ``[num_groups, G, T]`` of valid completion tokens; advantages are
        0 elsewhere. Defaults to all True.
      std_scaling: static; ``"group"`` (the paper), ``"batch"`` or ``"none"``, as in
        :func:`grpo_advantages`.
      eps: added to the std before dividing (traceable).
      ddof: static; 0 population std, 1 unbiased std.

    Returns:
      ``[num_groups, G, T]`` float32 per-token advantages; tokens after a completion's last step
      get 0.

    References:
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, §4.1.3 (process supervision).
    """
    step_rewards = f32(step_rewards, "step_rewards")
    check_rank(step_rewards, 3, "step_rewards", "[num_groups, G, T]")
    step_mask = mask_or_ones(step_mask, step_rewards.shape, "step_mask")
    token_mask = mask_or_ones(token_mask, step_rewards.shape, "token_mask")
    normalised = _group_normalise(step_rewards, step_mask, std_scaling, eps, ddof)
    from_here_on = jnp.flip(jnp.cumsum(jnp.flip(normalised, -1), axis=-1), -1)
    return masked_where(token_mask, from_here_on)


def reinforce_pp_advantages(token_rewards: ArrayLike, mask: ArrayLike | None = None, *,
                            gamma: ArrayLike = 1.0, eps: ArrayLike = 1e-8,
                            segment_ids: ArrayLike | None = None) -> Array:
    """REINFORCE++ advantages: discounted returns, normalised over every valid token of the batch.

    ``G_t = sum_{s >= t} gamma^(s-t) r_s`` (see :func:`r1jax.algos.gae.discounted_returns`), then
    ``A_t = (G_t - mean(G)) / (std(G) + eps)`` with mean and population std over all valid
    tokens of the arrays passed in (pass the whole rollout batch).

    Args:
      token_rewards: ``[B, T]`` per-token rewards: typically ``-beta * kl_t`` on every token plus
        the outcome reward on the last one (:func:`r1jax.algos.kl.kl_penalty_rewards`).
      mask: optional bool ``[B, T]`` of valid tokens.
      gamma: discount (traceable), in [0, 1].
      eps: added to the std (traceable).
      segment_ids: optional ``[B, T]`` ints for packed rows: returns never cross a change of id.

    Returns:
      ``[B, T]`` float32 advantages, 0 at masked tokens.

    References:
      Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
      arXiv 2501.03262, §3 (token-level KL penalty, eq. 2-3; global advantage normalisation).
    """
    token_rewards = f32(token_rewards, "token_rewards")
    check_rank(token_rewards, 2, "token_rewards", "[B, T]")
    check_range("eps", eps, ge=0.0)
    valid = mask_or_ones(mask, token_rewards.shape)
    returns = _gae.discounted_returns(token_rewards, valid, gamma=gamma, segment_ids=segment_ids)
    return whiten(returns, valid, eps=eps)


def whiten(x: ArrayLike, mask: ArrayLike | None = None, *, eps: ArrayLike = 1e-8) -> Array:
    """``(x - mean) / (std + eps)`` over every valid entry (population std); 0 at masked entries.

    PPO's advantage whitening (per rollout batch) and REINFORCE++'s global normalisation.

    Args:
      x: any shape, e.g. ``[B, T]`` per-token advantages.
      mask: optional bool of the same shape.
      eps: added to the std (traceable).

    Returns:
      float32, same shape; all 0 when the valid entries are all equal.

    References:
      Andrychowicz et al. 2021, "What Matters In On-Policy Reinforcement Learning?",
      arXiv 2006.05990, §3.5 (per-batch advantage normalisation).
    """
    x = f32(x, "x")
    check_range("eps", eps, ge=0.0)
    valid = mask_or_ones(mask, x.shape)
    axes = tuple(range(x.ndim))
    shifted = _shifted(x, valid, axes)
    centred = shifted - _masked_mean(shifted, valid, axes)
    return masked_where(valid, safe_div(centred, _masked_std(x, valid, axes, 0) + eps))


def last_token_values(values: ArrayLike, mask: ArrayLike) -> Array:
    """Places one value per sequence on its last valid token, 0 elsewhere.

    Args:
      values: ``[B]`` one number per sequence (e.g. its outcome reward).
      mask: bool ``[B, T]`` of valid tokens (any pattern; the LAST True of each row is used).

    Returns:
      ``[B, T]`` float32; rows without a valid token are all 0.

    References:
      Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155, eq. 2 (the reward model's score is
      given at the end of the completion).
    """
    values = f32(values, "values")
    check_rank(values, 1, "values", "[B]")
    mask = jnp.asarray(mask)
    check_rank(mask, 2, "mask", "[B, T]")
    check_shape(values, mask.shape[:1], "values")
    mask = mask.astype(bool)
    t = mask.shape[-1]
    last = t - 1 - jnp.argmax(jnp.flip(mask, -1), axis=-1)
    onehot = (jnp.arange(t)[None, :] == last[:, None]) & jnp.any(mask, axis=-1, keepdims=True)
    return jnp.where(onehot, values[:, None], 0.0)


def broadcast_to_tokens(sequence_advantages: ArrayLike, mask: ArrayLike) -> Array:
    """Gives every valid token of a sequence the sequence's advantage.

    Args:
      sequence_advantages: ``[B]`` (or ``[num_groups, G]``, flattened row-major to ``[B]``).
      mask: bool ``[B, T]`` of valid tokens.

    Returns:
      ``[B, T]`` float32, 0 at masked tokens.

    References:
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, §4.1.2 (outcome supervision sets the
      advantage of every token of o_i to the normalised reward r~_i).
    """
    adv = f32(sequence_advantages, "sequence_advantages").reshape(-1)
    mask = jnp.asarray(mask)
    check_rank(mask, 2, "mask", "[B, T]")
    check_shape(adv, mask.shape[:1], "sequence_advantages (flattened)")
    return masked_where(mask.astype(bool), jnp.broadcast_to(adv[:, None], mask.shape))


GROUP_ADVANTAGE_ESTIMATORS = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}
"""Outcome estimators by name, all ``fn(rewards[num_groups, G], mask=None, **kw) -> [num_groups, G]``.
The token-level estimators the trainer selects by name are :data:`r1jax.algos.ADVANTAGES`."""
