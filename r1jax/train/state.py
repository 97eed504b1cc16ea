"""The train state and the traced hyper-parameters: the two pytrees every update takes.

:class:`TrainState` holds everything that changes during training — policy, optimizer state,
reference policy, critic, step counter, PRNG key, skip counters — and is checkpointed whole. RL,
SFT and reward-model training all use it (the parts a stage does not need are empty dicts).

:class:`Hyper` holds every numeric hyper-parameter as a float32 scalar. The update traces them,
so changing a number between steps never recompiles, and ``jax.vmap`` over a vector of them
(GAE λ, clip ε, β, ...) runs several arms of an ablation as one program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from r1jax.train.config import AlgoConfig, OptimConfig

Params = Any

__all__ = ["TrainState", "Hyper", "make_optimizer", "init_state"]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed whole).

    ``ref_params`` is an empty dict when the KL term is off (β = 0: no reference model is kept);
    ``critic_params`` / ``critic_opt_state`` are empty dicts without a critic.
    """

    step: jax.Array              # int32 scalar: updates completed (RL steps, or SFT steps)
    params: Params               # the policy
    opt_state: Any
    ref_params: Params           # the KL reference, refreshed every algo.ref_update_every steps
    critic_params: Params
    critic_opt_state: Any
    key: jax.Array               # PRNG key (mini-batch order)
    skipped: jax.Array           # int32 scalar: optimizer steps skipped for a non-finite loss / gradient / update
    skipped_in_a_row: jax.Array  # int32 scalar: consecutive skipped optimizer steps (0 after one applied)


@flax.struct.dataclass
class Hyper:
    """The traced numbers of an update (float32 scalars, or vectors under ``jax.vmap``).

    Field names are the keyword names the registered losses and advantage estimators declare
    (:mod:`r1jax.algos.registry`); "off" is +inf for ``dual_clip``, ``kl_clamp`` and ``value_clip``.
    """

    lr_scale: jax.Array          # multiplies the optimizer's update (the learning rate)
    temperature: jax.Array       # of the trainer's log-probs (the sampler's)
    eps_low: jax.Array
    eps_high: jax.Array
    dual_clip: jax.Array
    log_ratio_clamp: jax.Array
    kl_coef: jax.Array
    kl_clamp: jax.Array
    entropy_coef: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    value_coef: jax.Array
    value_clip: jax.Array
    tis_cap: jax.Array
    overlong_penalty: jax.Array

    @classmethod
    def from_config(cls, algo: AlgoConfig, temperature: float = 1.0, lr_scale: float = 1.0) -> "Hyper":
        """The numbers of ``algo`` (None → +inf: off) and the sampling temperature."""
        values = {f.name: getattr(algo, f.name, None) for f in dataclasses.fields(cls)}
        values.update(lr_scale=lr_scale, temperature=temperature)
        return cls(**{k: jnp.float32(jnp.inf if v is None else v) for k, v in values.items()})

    def as_dict(self) -> dict[str, jax.Array]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def make_optimizer(optim: OptimConfig, lr_scale: float = 1.0, total_steps: int | None = None
                   ) -> optax.GradientTransformation:
    """AdamW with warm-up, optional cosine decay and global-norm clipping.

    Args:
      optim: the optimiser config.
      lr_scale: multiplies ``optim.lr`` (the PPO critic's ``critic_lr_scale``).
      total_steps: optimizer steps of the whole run; the cosine schedule decays to 0 over them.
    """
    lr = optim.lr * lr_scale
    if optim.schedule == "cosine":
        if total_steps is None:
            raise ValueError("make_optimizer: the cosine schedule needs total_steps (optimizer steps of the run)")
        warmup = max(optim.warmup_steps, 1)
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
    elif optim.warmup_steps:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, optim.warmup_steps), optax.constant_schedule(lr)],
            [optim.warmup_steps])
    else:
        schedule = optax.constant_schedule(lr)
    chain = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip else []
    chain.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
    return optax.chain(*chain)


def init_state(params: Params, tx: optax.GradientTransformation, key: jax.Array, *,
               reference: bool = False, critic_params: Params | None = None,
               critic_tx: optax.GradientTransformation | None = None) -> TrainState:
    """A fresh :class:`TrainState` around ``params``.

    Args:
      params: the initial policy.
      tx: the policy optimizer.
      key: the PRNG key of the state.
      reference: keep a reference copy of the policy (the KL term is on).
      critic_params, critic_tx: the critic and its optimizer (PPO).
    """
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - distinct buffers: the update donates the state
    critic = {} if critic_params is None else critic_params
    return TrainState(
        step=jnp.int32(0), params=params, opt_state=tx.init(params),
        ref_params=copy(params) if reference else {},
        critic_params=critic, critic_opt_state=critic_tx.init(critic) if critic_tx is not None else {},
        key=key, skipped=jnp.int32(0), skipped_in_a_row=jnp.int32(0))
