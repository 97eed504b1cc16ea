"""r1jax.algos: the pure RL maths of r1jax.

Arrays in, arrays out; every function is ``jit``, ``vmap`` and ``grad`` safe and computes in
float32. Numeric hyper-parameters (eps, gamma, lam, clip ranges, beta, caps) are traceable
arguments; string options (modes, kinds, methods) are static — under ``jax.jit`` close over
them or mark them ``static_argnames``.

Shapes: outcome rewards ``[num_groups, G]``; token arrays ``[B, T]`` with a bool ``mask[B, T]``
of valid tokens. A typical GRPO step::

    adv = grpo_advantages(rewards.reshape(num_groups, G), group_mask)          # [N, G]
    adv = broadcast_to_tokens(adv, mask)                                      # [B, T]
    out = clipped_surrogate_loss(logp, old_logp, adv, mask, eps_low=0.2, eps_high=0.28)
    per_token = out.loss + beta * kl_estimate(logp, ref_logp, mask, kind="k3")
    den = loss_denominator(full_batch_mask, "token_mean")                    # once per batch
    loss = aggregate_loss(per_token, mask, "token_mean", denominator=den)     # per micro-batch
"""

from r1jax.algos._common import DEFAULT_LOG_RATIO_CLAMP
from r1jax.algos.advantages import (GROUP_ADVANTAGE_ESTIMATORS, STD_SCALINGS, broadcast_to_tokens,
                                    drgrpo_advantages, grpo_advantages, last_token_values,
                                    process_advantages, reinforce_pp_advantages, rloo_advantages,
                                    whiten)
from r1jax.algos.aggregation import (AGGREGATION_MODES, aggregate_loss, loss_denominator,
                                     loss_numerator, token_weights)
from r1jax.algos.gae import GAE_METHODS, GaeOutput, discounted_returns, gae_advantages
from r1jax.algos.importance import (IS_LEVELS, IS_MODES, ImportanceWeights,
                                    truncated_is_weights)
from r1jax.algos.kl import KL_ESTIMATORS, k1, k2, k3, kl_estimate, kl_penalty_rewards
from r1jax.algos.estimators import (ADVANTAGES, AdvantageInputs, AdvantageOutput,
                                    register_advantage)
from r1jax.algos.losses import (POLICY_LOSSES, PolicyLossOutput, ValueLossOutput, cispo_loss,
                                clipped_surrogate_loss, clipped_value_loss, entropy_from_logits,
                                gspo_loss, nll_loss, policy_gradient_loss, register_policy_loss)
from r1jax.algos.registry import Registry
from r1jax.algos.shaping import apply_overlong_penalty, dynamic_sampling_mask, overlong_penalty

__all__ = [
    # advantages
    "GROUP_ADVANTAGE_ESTIMATORS", "STD_SCALINGS",
    "grpo_advantages", "drgrpo_advantages", "rloo_advantages", "process_advantages",
    "reinforce_pp_advantages", "broadcast_to_tokens", "last_token_values", "whiten",
    # registries (what a config names)
    "Registry", "ADVANTAGES", "AdvantageInputs", "AdvantageOutput", "register_advantage",
    "POLICY_LOSSES", "register_policy_loss", "DEFAULT_LOG_RATIO_CLAMP",
    "GAE_METHODS", "GaeOutput", "gae_advantages", "discounted_returns",
    # policy / value losses
    "PolicyLossOutput", "clipped_surrogate_loss", "gspo_loss", "cispo_loss", "nll_loss",
    "policy_gradient_loss", "ValueLossOutput", "clipped_value_loss", "entropy_from_logits",
    # importance sampling
    "IS_LEVELS", "IS_MODES", "ImportanceWeights", "truncated_is_weights",
    # KL
    "KL_ESTIMATORS", "k1", "k2", "k3", "kl_estimate", "kl_penalty_rewards",
    # aggregation
    "AGGREGATION_MODES", "aggregate_loss", "loss_numerator", "loss_denominator", "token_weights",
    # shaping
    "overlong_penalty", "apply_overlong_penalty", "dynamic_sampling_mask",
]
