"""Token-level advantage estimators by name: what ``algo.advantage`` selects.

Each estimator adapts the pure functions of :mod:`r1jax.algos.advantages` / :mod:`r1jax.algos.gae`
to one trainer-facing shape: it reads an :class:`AdvantageInputs` (outcome rewards per group, the
token mask, and log-probs / critic values when it needs them) and returns per-token ``[B, T]``
advantages (and the critic's targets). Register a new one with :func:`register_advantage`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from r1jax.algos import gae as _gae
from r1jax.algos import kl as _kl
from r1jax.algos._common import Array, ArrayLike
from r1jax.algos.advantages import (StdScaling, broadcast_to_tokens, drgrpo_advantages, grpo_advantages,
                                    reinforce_pp_advantages, rloo_advantages, whiten)
from r1jax.algos.registry import Registry

__all__ = ["AdvantageInputs", "AdvantageOutput", "ADVANTAGES", "register_advantage"]


class AdvantageInputs(NamedTuple):
    """What a token-level advantage estimator may read; rows are prompt-major (row = p * G + g)."""

    rewards: Array            # [P, G] outcome score of each completion (after shaping)
    group_mask: Array         # [P, G] bool: completions that count (dynamic sampling drops groups)
    mask: Array               # [B, T] bool: trained tokens, B = P * G
    logp: Array | None        # [B, T] behaviour-policy log-probs (estimators with the KL in the reward)
    ref_logp: Array | None    # [B, T] reference log-probs (None when the KL is off)
    values: Array | None      # [B, T] critic values (estimators that need a critic)


class AdvantageOutput(NamedTuple):
    advantages: Array  # [B, T] float32, 0 at masked tokens
    returns: Array     # [B, T] float32 critic targets (zeros without a critic)


ADVANTAGES = Registry("advantage estimator", {"needs_critic": False, "kl_in_reward": False, "group_relative": False})
"""Token-level advantage estimators by name: ``fn(inputs: AdvantageInputs, **keywords) -> AdvantageOutput``.

Metadata: ``needs_critic`` (the trainer keeps a critic and fills ``inputs.values``) and
``kl_in_reward`` (the estimator puts the KL penalty into the token rewards, so the policy loss has
no KL term) and ``group_relative`` (a completion's advantage is relative to the other completions of
its prompt, so a group of one sample has advantage 0)."""
register_advantage = ADVANTAGES.register


def _outcome(inputs: AdvantageInputs, seq_adv: Array) -> AdvantageOutput:
    adv = broadcast_to_tokens(seq_adv, inputs.mask)
    return AdvantageOutput(adv, jnp.zeros_like(adv))


@register_advantage("grpo", group_relative=True)
def grpo_token_advantages(inputs: AdvantageInputs, *, std_scaling: StdScaling = "group", adv_eps: ArrayLike = 1e-6,
                          std_ddof: int = 0) -> AdvantageOutput:
    """:func:`grpo_advantages` of the outcome rewards on every token of each completion."""
    return _outcome(inputs, grpo_advantages(inputs.rewards, inputs.group_mask, std_scaling=std_scaling,
                                            eps=adv_eps, ddof=std_ddof))


@register_advantage("drgrpo", group_relative=True)
def drgrpo_token_advantages(inputs: AdvantageInputs) -> AdvantageOutput:
    """:func:`drgrpo_advantages` (no std division) on every token of each completion."""
    return _outcome(inputs, drgrpo_advantages(inputs.rewards, inputs.group_mask))


@register_advantage("rloo", group_relative=True)
def rloo_token_advantages(inputs: AdvantageInputs) -> AdvantageOutput:
    """:func:`rloo_advantages` on every token of each completion."""
    return _outcome(inputs, rloo_advantages(inputs.rewards, inputs.group_mask))


def _kl_token_rewards(inputs: AdvantageInputs, kl_coef, log_ratio_clamp, kl_clamp) -> Array:
    """Outcome score on the last token minus ``kl_coef * k1`` on every token (the KL-in-reward form)."""
    if inputs.ref_logp is None:
        kl = jnp.zeros(inputs.mask.shape, jnp.float32)
    else:
        kl = _kl.kl_estimate(inputs.logp, inputs.ref_logp, inputs.mask, kind="k1",
                             log_ratio_clamp=log_ratio_clamp, clamp=kl_clamp)
    return _kl.kl_penalty_rewards(inputs.rewards.reshape(-1), kl, inputs.mask, beta=kl_coef)


@register_advantage("reinforce_pp", kl_in_reward=True)
def reinforce_pp_token_advantages(inputs: AdvantageInputs, *, gamma: ArrayLike, kl_coef: ArrayLike,
                                  log_ratio_clamp: ArrayLike, kl_clamp: ArrayLike) -> AdvantageOutput:
    """:func:`reinforce_pp_advantages` of the KL-penalised token rewards."""
    rewards = _kl_token_rewards(inputs, kl_coef, log_ratio_clamp, kl_clamp)
    adv = reinforce_pp_advantages(rewards, inputs.mask, gamma=gamma)
    return AdvantageOutput(adv, jnp.zeros_like(adv))


@register_advantage("gae", needs_critic=True, kl_in_reward=True)
def gae_token_advantages(inputs: AdvantageInputs, *, gamma: ArrayLike, gae_lambda: ArrayLike, kl_coef: ArrayLike,
                         log_ratio_clamp: ArrayLike, kl_clamp: ArrayLike,
                         whiten_advantages: bool = True) -> AdvantageOutput:
    """PPO: GAE over the critic's values of the KL-penalised token rewards; returns are the critic's
    targets. ``whiten_advantages`` normalises the advantages over the batch (as verl and TRL do)."""
    rewards = _kl_token_rewards(inputs, kl_coef, log_ratio_clamp, kl_clamp)
    out = _gae.gae_advantages(rewards, inputs.values, inputs.mask, gamma=gamma, lam=gae_lambda)
    adv = whiten(out.advantages, inputs.mask) if whiten_advantages else out.advantages
    return AdvantageOutput(adv, out.returns)
