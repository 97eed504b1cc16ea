"""Per-token GRPO quantities computed from per-token log-probs: the one elementwise mirror.

The per-token GRPO maths has ONE home, :mod:`r1jax.algos`:

* the clipped surrogate: :func:`r1jax.algos.losses.clipped_surrogate_loss` (asymmetric clip,
  optional dual clip, log-ratio clamped before ``exp``; ``old_logp`` and advantages constant;
  the returned ``ratio`` is a constant-valued diagnostic);
* the KL estimators: :func:`r1jax.algos.kl.kl_estimate` with ``k1``/``k2``/``k3`` of
  ``log r = ref_logp - logp`` clamped to ``[-log_ratio_clamp, log_ratio_clamp]``, the estimate
  optionally clamped to ``[-kl_clamp, kl_clamp]``.

The non-fused backends call those functions (:func:`grpo_terms_from_logprobs`). Only the fused
Pallas kernel (:mod:`r1jax_kernels.pallas_logprobs`), which must evaluate them inside the kernel on a
block of tokens right after the log-probs are known, uses :func:`terms_core`: the same formulas
restated elementwise in plain ``jnp`` (no masks, no checks: kernel-safe), tested equal to
``r1jax.algos`` (``tests/kernels``). Change the maths in ``r1jax.algos`` first, then here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from r1jax import algos
from r1jax.algos import DEFAULT_LOG_RATIO_CLAMP

Array = jax.Array

NUM_HPARAMS = 8  # packed hyper-parameter vector (padded to a power of 2 for the GPU kernel)


class TokenTerms(NamedTuple):
    """Per-token outputs of :func:`r1jax_kernels.grpo_token_terms`; every field float32 ``[...]``.

    ``policy_loss`` is ``PolicyLossOutput.loss`` of ``clipped_surrogate_loss`` (the negated
    clipped surrogate, to minimise, not aggregated); ``ratio`` its constant-valued ratio;
    ``k1``/``k2``/``k3`` the KL estimates of ``kl_estimate(logp, ref_logp, kind=...)``.
    """

    logp: Array
    entropy: Array
    ratio: Array
    policy_loss: Array
    k1: Array
    k2: Array
    k3: Array


def pack_hparams(eps_low: Any, eps_high: Any, dual_clip: Any, log_ratio_clamp: Any,
                 kl_clamp: Any) -> Array:
    """The traced hyper-parameters as one float32 vector (None -> +inf: "off")."""
    eps_high = eps_low if eps_high is None else eps_high
    dual_clip = jnp.inf if dual_clip is None else dual_clip
    kl_clamp = jnp.inf if kl_clamp is None else kl_clamp
    vals = [eps_low, eps_high, dual_clip, log_ratio_clamp, kl_clamp]
    vals = [jnp.asarray(v, jnp.float32).reshape(()) for v in vals]
    vals += [jnp.zeros((), jnp.float32)] * (NUM_HPARAMS - len(vals))
    return jnp.stack(vals)


def terms_core(logp: Array, old_logp: Array, ref_logp: Array, adv: Array,
               eps_low, eps_high, dual_clip, log_ratio_clamp, kl_clamp):
    """``(ratio, policy_loss, k1, k2, k3)`` elementwise; kernel-safe (no stop_gradient, no checks).

    Mirrors ``r1jax.algos.losses.clipped_surrogate_loss`` (``_clipped_objective``, mask=None) and
    ``r1jax.algos.kl.k1``/``k2``/``k3`` via ``kl_estimate`` (mask=None).
    """
    ratio = jnp.exp(jnp.clip(logp - old_logp, -log_ratio_clamp, log_ratio_clamp))
    low, high = 1.0 - eps_low, 1.0 + eps_high
    clipped_high = (adv > 0) & (ratio > high)
    clipped_low = (adv < 0) & (ratio < low)
    objective = jnp.where(clipped_high, high * adv, jnp.where(clipped_low, low * adv, ratio * adv))
    objective = jnp.where((adv < 0) & (ratio > dual_clip), dual_clip * adv, objective)
    log_r = jnp.clip(ref_logp - logp, -log_ratio_clamp, log_ratio_clamp)
    k1 = jnp.clip(-log_r, -kl_clamp, kl_clamp)
    k2 = jnp.clip(0.5 * log_r * log_r, -kl_clamp, kl_clamp)
    k3 = jnp.clip(jnp.expm1(log_r) - log_r, -kl_clamp, kl_clamp)
    return ratio, -objective, k1, k2, k3


def terms_from_packed(logp: Array, old_logp: Array, ref_logp: Array, adv: Array, hp: Array):
    """:func:`terms_core` with the hyper-parameters of :func:`pack_hparams`, differentiable as
    ``r1jax.algos`` is: ``old_logp`` and ``adv`` constant, ``ratio`` a constant-valued output."""
    ratio, loss, k1, k2, k3 = terms_core(
        logp, jax.lax.stop_gradient(old_logp), ref_logp, jax.lax.stop_gradient(adv),
        hp[0], hp[1], hp[2], hp[3], hp[4])
    return jax.lax.stop_gradient(ratio), loss, k1, k2, k3


def grpo_terms_from_logprobs(logp: Any, old_logp: Any, ref_logp: Any, advantages: Any, *,
                             eps_low: Any = 0.2, eps_high: Any = None, dual_clip: Any = None,
                             log_ratio_clamp: Any = DEFAULT_LOG_RATIO_CLAMP,
                             kl_clamp: Any = None) -> tuple[Array, Array, Array, Array, Array]:
    """``(ratio, policy_loss, k1, k2, k3)`` from per-token log-probs (unmasked, float32).

    The elementwise epilogue of :func:`r1jax_kernels.grpo_token_terms` for the non-fused backends:
    :func:`r1jax.algos.clipped_surrogate_loss` and :func:`r1jax.algos.kl_estimate` themselves.

    Args:
      logp: ``[...]`` current log-probs (differentiable).
      old_logp: ``[...]`` behaviour log-probs (constant).
      ref_logp: ``[...]`` reference-policy log-probs.
      advantages: broadcastable to ``logp`` (constant).
      eps_low, eps_high, dual_clip, log_ratio_clamp: as ``clipped_surrogate_loss`` (traced).
      kl_clamp: as ``kl_estimate``'s ``clamp`` (traced; None: off).

    Returns:
      Five float32 arrays shaped like ``logp``.

    References:
      Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3-4; Schulman 2020,
      "Approximating KL Divergence"; Yu et al. 2025, "DAPO", arXiv 2503.14476, eq. 10.
    """
    logp = jnp.asarray(logp, jnp.float32)
    shape = logp.shape
    rows = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), shape).reshape(1, -1)  # noqa: E731
    out = algos.clipped_surrogate_loss(rows(logp), rows(old_logp), rows(advantages), eps_low=eps_low,
                                       eps_high=eps_high, dual_clip=dual_clip, log_ratio_clamp=log_ratio_clamp)
    kl = [algos.kl_estimate(rows(logp), rows(ref_logp), kind=kind, log_ratio_clamp=log_ratio_clamp, clamp=kl_clamp)
          for kind in ("k1", "k2", "k3")]
    return tuple(x.reshape(shape) for x in (out.ratio, out.loss, *kl))
