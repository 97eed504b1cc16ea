"""Per-token KL estimators between the policy and a reference policy, and the KL reward penalty.

Tokens are sampled from the current policy ``pi``; with ``log r = ref_logp - logp`` the
estimators of ``KL(pi || pi_ref)`` are (Schulman 2020):

* ``k1 = -log r``                  unbiased, high variance, can be negative;
* ``k2 = (log r)^2 / 2``           biased, low variance, non-negative;
* ``k3 = (r - 1) - log r``         unbiased, low variance, non-negative (GRPO's estimator).

The log-ratio is clamped before ``exp`` (``log_ratio_clamp``); the estimate itself can be
clamped too (``clamp``: to ``[-clamp, clamp]``), as some recipes do for ``k3``.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax.numpy as jnp

from r1jax.algos._common import (DEFAULT_LOG_RATIO_CLAMP, Array, ArrayLike, check_choice, check_range, check_rank,
                                 check_shape, f32, mask_or_ones, masked_where)
from r1jax.algos.advantages import last_token_values

KlKind = Literal["k1", "k2", "k3"]


def k1(log_ratio: Array) -> Array:
    """``k1 = -log r``: unbiased, high variance, can be negative.

    Args:
      log_ratio: ``log r = ref_logp - logp`` (any shape).

    Returns:
      The elementwise estimate, same shape.

    References:
      Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
    """
    return -log_ratio


def k2(log_ratio: Array) -> Array:
    """``k2 = (log r)^2 / 2``: biased, low variance, non-negative.

    Args:
      log_ratio: ``log r = ref_logp - logp`` (any shape).

    Returns:
      The elementwise estimate, same shape.

    References:
      Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
    """
    return 0.5 * jnp.square(log_ratio)


def k3(log_ratio: Array) -> Array:
    """``k3 = exp(log r) - log r - 1``: unbiased, low variance, non-negative (GRPO's estimator).

    ``expm1`` keeps it accurate near ``log r = 0`` (where ``exp(x) - 1`` would cancel), and
    ``expm1(x) >= x`` survives rounding, so the estimate stays >= 0 in floating point.

    Args:
      log_ratio: ``log r = ref_logp - logp`` (any shape).

    Returns:
      The elementwise estimate, same shape.

    References:
      Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 4.
    """
    return jnp.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Array], Array]] = {"k1": k1, "k2": k2, "k3": k3}
"""KL estimators by name; each maps ``log r = ref_logp - logp`` to a per-token estimate."""


def kl_estimate(logp: ArrayLike, ref_logp: ArrayLike, mask: ArrayLike | None = None, *,
                kind: KlKind = "k3", log_ratio_clamp: ArrayLike = DEFAULT_LOG_RATIO_CLAMP,
                clamp: ArrayLike | None = None) -> Array:
    """Per-token estimate of ``KL(pi || pi_ref)`` from log-probs of tokens sampled from ``pi``.

    Used as GRPO's KL loss term (aggregate it like the policy loss and add ``beta *`` it), as
    the per-token KL of the PPO reward penalty (:func:`kl_penalty_rewards`), or as a metric
    (e.g. trainer-vs-sampler KL: pass the sampler's log-probs as ``ref_logp``).

    Args:
      logp: ``[...]`` log-probs of the sampled tokens under ``pi`` (differentiable).
      ref_logp: same shape, under the reference policy.
      mask: optional bool of the same shape; masked entries are 0.
      kind: static; ``"k1"``, ``"k2"`` or ``"k3"``.
      log_ratio_clamp: bound on ``|ref_logp - logp|`` before the estimator (traceable).
      clamp: None, or a bound (traceable) to clamp the estimate to ``[-clamp, clamp]``.

    Returns:
      float32 per-token estimates, same shape as ``logp``.

    References:
      Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 4 (k3 in the GRPO objective).
    """
    check_choice("kind", kind, tuple(KL_ESTIMATORS))
    check_range("log_ratio_clamp", log_ratio_clamp, gt=0.0)
    if clamp is not None:
        check_range("clamp", clamp, gt=0.0)
    logp = f32(logp, "logp")
    ref_logp = f32(ref_logp, "ref_logp")
    check_shape(ref_logp, logp.shape, "ref_logp")
    mask = mask_or_ones(mask, logp.shape)
    log_ratio = jnp.clip(masked_where(mask, ref_logp - logp), -log_ratio_clamp, log_ratio_clamp)
    kl = KL_ESTIMATORS[kind](log_ratio)
    if clamp is not None:
        kl = jnp.clip(kl, -clamp, clamp)
    return masked_where(mask, kl)


def kl_penalty_rewards(scores: ArrayLike, kl: ArrayLike, mask: ArrayLike, *,
                       beta: ArrayLike) -> Array:
    """PPO's per-token rewards: ``r_t = -beta * kl_t``, plus the sequence score on its last token.

    Args:
      scores: ``[B]`` scalar (outcome) reward of each sequence.
      kl: ``[B, T]`` per-token KL, e.g. ``kl_estimate(old_logp, ref_logp, mask, kind="k1")``
        (treat it as a constant: it is a reward).
      mask: bool ``[B, T]`` of valid tokens; the score goes on the last valid token of each row.
      beta: KL coefficient (traceable), >= 0.

    Returns:
      ``[B, T]`` float32 token rewards, 0 at masked tokens.

    References:
      Ouyang et al. 2022 (InstructGPT), arXiv 2203.02155, eq. 2; Stiennon et al. 2020,
      arXiv 2009.01325, eq. 1 (reward with a per-token KL penalty).
    """
    check_range("beta", beta, ge=0.0)
    kl = f32(kl, "kl")
    check_rank(kl, 2, "kl", "[B, T]")
    mask = mask_or_ones(mask, kl.shape)
    return masked_where(mask, last_token_values(scores, mask) - beta * kl)
