"""Group-relative advantages over RAGGED groups, with XLA segment reductions.

A rollout batch keeps its completions flat, ``rewards[B]``, each tagged with the id of the prompt
(group) it answers, ``group_ids[B]``; groups may have different sizes (filtering, dynamic
sampling, failed generations) and need not be contiguous. Statistics per group are
``jax.ops.segment_sum`` reductions, so no ``[num_groups, max_group_size]`` padding is built.

The maths has its home in :mod:`r1jax.algos.advantages` (``grpo_advantages``,
``drgrpo_advantages``, ``rloo_advantages`` on a padded ``[num_groups, G]`` layout with a mask);
this module restates it with segment reductions and is tested equal to it. Change the maths in
``r1jax.algos`` first, then here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from r1jax_kernels import _common

Array = jax.Array

ESTIMATORS = ("grpo", "rloo")
STD_SCALINGS = ("group", "batch", "none")


def _safe_div(num, den):
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _safe_sqrt(x):
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def segment_group_advantages(rewards: Any, group_ids: Any, num_groups: int, *,
                             mask: Any = None, estimator: str = "grpo",
                             std_scaling: str = "group", eps: Any = 1e-6,
                             ddof: int = 0) -> Array:
    """Outcome advantages of completions grouped by prompt, for groups of any sizes.

    ``"grpo"``: ``A_i = (r_i - mean_g) / (std_g + eps)`` over the valid members of ``i``'s group
    ``g`` (``std_scaling="batch"``: the std of all valid rewards; ``"none"``: no division,
    Dr.GRPO). ``"rloo"``: ``A_i = r_i - (sum_g - r_i) / (n_g - 1)``.

    Args:
      rewards: ``[B]`` scalar reward per completion.
      group_ids: ``[B]`` integer group (prompt) id per completion, in ``[0, num_groups)``; any
        order. Concrete ids out of range raise ValueError; under ``jit`` they give NaN.
      num_groups: static number of groups (segments).
      mask: optional bool ``[B]``; False marks a completion that must not count (advantage 0,
        its id is not checked).
      estimator: static; ``"grpo"`` or ``"rloo"``.
      std_scaling: static; ``"group"`` | ``"batch"`` | ``"none"`` (``"grpo"`` only), as
        ``r1jax.algos.advantages.grpo_advantages``.
      eps: added to the std (traced).
      ddof: static; 0 population std, 1 unbiased std.

    Returns:
      ``[B]`` float32 advantages; 0 at masked entries, in groups whose rewards are all equal
      (``"grpo"``), and in groups with fewer than two members (``"rloo"``).

    References:
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, §4.1.2 (GRPO outcome advantages).
      Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr.GRPO), arXiv 2503.20783, §3.1.
      Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!" (RLOO), eq. 8.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
    if std_scaling not in STD_SCALINGS:
        raise ValueError(f"std_scaling: expected one of {STD_SCALINGS}, got {std_scaling!r}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof: expected 0 (population std) or 1 (unbiased std), got {ddof!r}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise ValueError(f"num_groups: expected a positive (static) int, got {num_groups!r}")
    rewards = jnp.asarray(rewards)
    group_ids = jnp.asarray(group_ids)
    if not (jnp.issubdtype(rewards.dtype, jnp.floating) or jnp.issubdtype(rewards.dtype, jnp.integer)):
        raise TypeError(f"rewards: expected a numeric array, got dtype {rewards.dtype}")
    if rewards.ndim != 1:
        raise ValueError(f"rewards: expected shape [B], got {tuple(rewards.shape)}")
    if not jnp.issubdtype(group_ids.dtype, jnp.integer):
        raise TypeError(f"group_ids: expected an integer array, got dtype {group_ids.dtype}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids: expected shape {tuple(rewards.shape)} (as rewards), "
                         f"got {tuple(group_ids.shape)}")
    if mask is None:
        mask = jnp.ones(rewards.shape, bool)
    mask = jnp.asarray(mask)
    if mask.shape != rewards.shape:
        raise ValueError(f"mask: expected shape {tuple(rewards.shape)} (as rewards), "
                         f"got {tuple(mask.shape)}")
    mask = mask.astype(bool)
    if _common.is_concrete(eps) and np.any(np.asarray(eps, np.float64) < 0):
        raise ValueError(f"eps: must be >= 0, got {eps}")
    in_range = (group_ids >= 0) & (group_ids < num_groups)
    if _common.is_concrete(group_ids) and _common.is_concrete(mask):
        bad = np.asarray(mask & ~in_range)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"group_ids: id {int(group_ids[i])} at position {i} is outside "
                             f"[0, num_groups={num_groups})")

    r = rewards.astype(jnp.float32)
    valid = mask & in_range
    ids = jnp.where(valid, group_ids, 0)
    seg = lambda x: jax.ops.segment_sum(jnp.where(valid, x, 0.0), ids, num_segments=num_groups)
    count = seg(jnp.ones_like(r))[ids]
    total = seg(r)[ids]
    if estimator == "rloo":  # mirrors r1jax.algos.advantages.rloo_advantages
        adv = jnp.where(count > 1.0, r - _safe_div(total - r, count - 1.0), 0.0)
    else:  # mirrors r1jax.algos.advantages.grpo_advantages (_group_normalise, _masked_std)
        mean = _safe_div(total, count)
        adv = r - mean
        if std_scaling == "group":
            var = _safe_div(seg(jnp.square(r - mean))[ids], count - ddof)
            adv = adv / (_safe_sqrt(var) + eps)
        elif std_scaling == "batch":
            n = jnp.sum(valid).astype(jnp.float32)
            batch_mean = _safe_div(jnp.sum(jnp.where(valid, r, 0.0)), n)
            sq = jnp.sum(jnp.where(valid, jnp.square(r - batch_mean), 0.0))
            adv = adv / (_safe_sqrt(_safe_div(sq, n - ddof)) + eps)
    adv = jnp.where(valid, adv, 0.0)
    return jnp.where(mask & ~in_range, jnp.nan, adv)
