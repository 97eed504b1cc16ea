"""Pure train steps: ``step(state, batch, hparams) -> (state, metrics)``.

The state is a pytree (:class:`TrainState`); the batch is a pytree of arrays (:class:`RLBatch`);
``hparams`` are the traced numbers (:class:`Hyper`), so sweeping β, ε or the temperature never
recompiles. Static choices (loss variant, aggregation, estimator, kernel backend) come from the
frozen configs captured when the step is built.

One optimizer step consumes one mini-batch. The mini-batch is split into ``num_microbatches``
micro-batches whose gradients are summed in a ``lax.scan``; every loss is aggregated with the
mini-batch's global denominator (``RLBatch.denominator``), so the summed gradient equals the
unsplit one (split invariance, :mod:`r1jax.algos.aggregation`).

A non-finite loss or gradient skips the update (parameters and optimizer state unchanged) and is
reported in ``metrics["skipped"]``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from r1jax import algos
from r1jax.models import ModelConfig, forward, lm_head_weight, value
from r1jax.train.config import AlgoConfig, KernelConfig, OptimConfig
from r1jax_kernels import grpo_token_terms, token_logprobs

Params = Any

__all__ = [
    "TrainState", "RLBatch", "Hyper", "make_optimizer", "policy_logprobs", "make_logprob_fn",
    "make_value_fn", "make_train_step", "grpo_loss", "ppo_policy_loss", "critic_loss",
    "SFTBatch", "sft_loss", "make_sft_step",
]


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree; checkpointed whole).

    ``critic_params`` / ``critic_opt_state`` are empty dicts for GRPO.
    """

    step: jax.Array              # int32 scalar: RL steps completed
    params: Params               # the policy
    opt_state: Any
    ref_params: Params           # the KL reference, refreshed every algo.ref_update_every steps
    critic_params: Params
    critic_opt_state: Any
    key: jax.Array               # uint32[2] PRNG key
    skipped: jax.Array           # int32 scalar: updates skipped for non-finite loss / gradient


class RLBatch(NamedTuple):
    """One mini-batch of N sequences (prompt + completion, right-padded to T).

    Arrays named ``[N, T-1]`` are aligned with the targets ``tokens[:, 1:]``.
    """

    tokens: jax.Array        # [N, T] int32
    attention_mask: jax.Array  # [N, T] bool: real (non-pad) tokens
    loss_mask: jax.Array     # [N, T-1] bool: completion tokens that are trained on
    advantages: jax.Array    # [N, T-1] float32
    old_logp: jax.Array      # [N, T-1] float32: behaviour policy (the trainer's weights at rollout)
    ref_logp: jax.Array      # [N, T-1] float32: the reference policy
    sampler_logp: jax.Array  # [N, T-1] float32: what the rollout engine reported
    old_values: jax.Array    # [N, T-1] float32 (PPO; zeros for GRPO)
    returns: jax.Array       # [N, T-1] float32 (PPO; zeros for GRPO)
    denominator: jax.Array   # float32 scalar: the WHOLE mini-batch's loss denominator
    num_tokens: jax.Array    # float32 scalar: the WHOLE mini-batch's trained tokens (for diagnostics)


class Hyper(NamedTuple):
    """Traced hyper-parameters of a step."""

    kl_coef: jax.Array
    eps_low: jax.Array
    eps_high: jax.Array
    temperature: jax.Array
    entropy_coef: jax.Array
    value_coef: jax.Array

    @classmethod
    def from_config(cls, algo: AlgoConfig, temperature: float) -> "Hyper":
        f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(f(algo.kl_coef), f(algo.clip_eps_low), f(algo.clip_eps_high), f(temperature),
                   f(algo.entropy_coef), f(algo.value_coef))


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


# ------------------------------------------------------------------------------------------------
# Log-probs and values of a batch.


def policy_logprobs(params: Params, model: ModelConfig, kernels: KernelConfig, tokens: jax.Array,
                    attention_mask: jax.Array, temperature: jax.Array, *, entropy: bool = False):
    """Per-target log-probs ``[N, T-1]`` (and entropies) of ``tokens[:, 1:]`` under ``params``.

    The same "processed" log-probs as the sampler: ``log_softmax(logits / temperature)``.
    """
    hidden = forward(params, model, tokens, attention_mask=attention_mask)
    return token_logprobs(hidden[:, :-1], lm_head_weight(params, model), tokens[:, 1:],
                          temperature=temperature, return_entropy=entropy, **_kernel_kwargs(kernels))


def _kernel_kwargs(kernels: KernelConfig) -> dict:
    kw: dict = {"backend": kernels.logprob_backend, "interpret": kernels.interpret}
    if kernels.logprob_backend != "pallas":
        kw["chunk_size"] = kernels.chunk_size
    return kw


def critic_values(critic_params: Params, model: ModelConfig, tokens: jax.Array,
                  attention_mask: jax.Array) -> jax.Array:
    """``V(s_t)`` aligned with the targets: the value of the prefix ending at token t, ``[N, T-1]``."""
    hidden = forward(critic_params, model, tokens, attention_mask=attention_mask)
    return value(critic_params, model, hidden[:, :-1])


def make_logprob_fn(model: ModelConfig, kernels: KernelConfig) -> Callable:
    """A jitted ``(params, tokens, attention_mask, temperature) -> logp [N, T-1]``."""
    return jax.jit(lambda p, t, m, temp: policy_logprobs(p, model, kernels, t, m, temp))


def make_value_fn(model: ModelConfig) -> Callable:
    """A jitted ``(critic_params, tokens, attention_mask) -> values [N, T-1]``."""
    return jax.jit(lambda p, t, m: critic_values(p, model, t, m))


# ------------------------------------------------------------------------------------------------
# Losses: pure functions of (params, batch, hparams) returning (scalar, metric numerators).


def _policy_objective(logp, batch: RLBatch, hp: Hyper, algo: AlgoConfig):
    """The per-token policy loss (surrogate, times TIS weights when enabled) and diagnostics."""
    mask = batch.loss_mask
    if algo.policy_loss == "clip":
        out = algos.clipped_surrogate_loss(
            logp, batch.old_logp, batch.advantages, mask, eps_low=hp.eps_low, eps_high=hp.eps_high,
            dual_clip=algo.dual_clip, log_ratio_clamp=algo.logratio_clamp)
    elif algo.policy_loss == "gspo":
        out = algos.gspo_loss(logp, batch.old_logp, batch.advantages, mask, eps_low=hp.eps_low,
                              eps_high=hp.eps_high, log_ratio_clamp=algo.logratio_clamp)
    else:
        out = algos.policy_gradient_loss(logp, batch.old_logp, batch.advantages, mask)
    return _tis_weighted(out.loss, batch, algo), out


def _tis_weighted(per_token, batch: RLBatch, algo: AlgoConfig):
    """The policy loss times the truncated importance weights π_trainer/π_sampler (when enabled)."""
    if algo.tis == "off":
        return per_token
    return per_token * algos.truncated_is_weights(
        batch.old_logp, batch.sampler_logp, batch.loss_mask, cap=algo.tis_cap, level=algo.tis, mode=algo.tis_mode,
        log_ratio_clamp=algo.logratio_clamp).weights


def _token_sum(x, mask, algo: AlgoConfig, denominator):
    """Aggregates a per-token quantity exactly like the loss (split-invariant)."""
    return algos.loss_numerator(x, mask, algo.loss_agg) / denominator


def _token_mean(x, batch: RLBatch):
    """A diagnostic's mean over the mini-batch's trained tokens (split-invariant)."""
    return algos.loss_numerator(x, batch.loss_mask, "token_mean") / batch.num_tokens


def _diagnostics(out, ent, batch: RLBatch) -> dict:
    return {
        "policy_loss": _token_mean(out.loss, batch),
        "entropy": _token_mean(ent, batch),
        "clip_frac/low": _token_mean(out.clipped_low, batch),
        "clip_frac/high": _token_mean(out.clipped_high, batch),
        "ratio": _token_mean(out.ratio, batch),
    }


def grpo_loss(params: Params, batch: RLBatch, hp: Hyper, *, model: ModelConfig, algo: AlgoConfig,
              kernels: KernelConfig):
    """GRPO's loss (DeepSeekMath eq. 3): clipped surrogate + β·KL(π‖π_ref) − entropy bonus.

    Returns:
      ``(loss, metrics)``: metrics are micro-batch contributions that sum to the mini-batch value.
    """
    if kernels.fused:
        logp, ent, per_token, kl, out = _fused_grpo_terms(params, batch, hp, model=model, algo=algo, kernels=kernels)
    else:
        logp, ent = policy_logprobs(params, model, kernels, batch.tokens, batch.attention_mask,
                                    hp.temperature, entropy=True)
        per_token, out = _policy_objective(logp, batch, hp, algo)
        kl = algos.kl_estimate(logp, batch.ref_logp, batch.loss_mask, kind=algo.kl_estimator,
                               log_ratio_clamp=algo.logratio_clamp, clamp=algo.kl_clamp)
    if algo.advantage != "reinforce_pp":  # REINFORCE++ has its KL in the token rewards already
        per_token = per_token + hp.kl_coef * kl
    per_token = per_token - hp.entropy_coef * ent
    loss = _token_sum(per_token, batch.loss_mask, algo, batch.denominator)
    return loss, {"loss": loss, "kl_ref": _token_mean(kl, batch), **_diagnostics(out, ent, batch)}


def _fused_grpo_terms(params, batch: RLBatch, hp: Hyper, *, model, algo, kernels):
    """The GRPO per-token terms from one fused pass over the vocabulary (r1jax_kernels)."""
    hidden = forward(params, model, batch.tokens, attention_mask=batch.attention_mask)
    terms = grpo_token_terms(
        hidden[:, :-1], lm_head_weight(params, model), batch.tokens[:, 1:], batch.old_logp, batch.ref_logp,
        batch.advantages, temperature=hp.temperature, eps_low=hp.eps_low, eps_high=hp.eps_high,
        dual_clip=algo.dual_clip, log_ratio_clamp=algo.logratio_clamp, kl_clamp=algo.kl_clamp,
        **_kernel_kwargs(kernels))
    mask = batch.loss_mask
    per_token = _tis_weighted(jnp.where(mask, terms.policy_loss, 0.0), batch, algo)
    kl = jnp.where(mask, {"k1": terms.k1, "k2": terms.k2, "k3": terms.k3}[algo.kl_estimator], 0.0)
    # Diagnostics only (no gradient): clip fractions from the one home of the surrogate.
    out = algos.clipped_surrogate_loss(jax.lax.stop_gradient(terms.logp), batch.old_logp, batch.advantages, mask,
                                       eps_low=hp.eps_low, eps_high=hp.eps_high, dual_clip=algo.dual_clip,
                                       log_ratio_clamp=algo.logratio_clamp)
    return terms.logp, terms.entropy, per_token, kl, out


def ppo_policy_loss(params: Params, batch: RLBatch, hp: Hyper, *, model: ModelConfig, algo: AlgoConfig,
                    kernels: KernelConfig):
    """PPO's actor loss: the clipped surrogate on GAE advantages (the KL is in the reward)."""
    logp, ent = policy_logprobs(params, model, kernels, batch.tokens, batch.attention_mask,
                                hp.temperature, entropy=True)
    per_token, out = _policy_objective(logp, batch, hp, algo)
    per_token = per_token - hp.entropy_coef * ent
    loss = _token_sum(per_token, batch.loss_mask, algo, batch.denominator)
    return loss, {"loss": loss, **_diagnostics(out, ent, batch)}


def critic_loss(critic_params: Params, batch: RLBatch, hp: Hyper, *, model: ModelConfig, algo: AlgoConfig):
    """PPO's clipped value loss, weighted by ``value_coef``."""
    values = critic_values(critic_params, model, batch.tokens, batch.attention_mask)
    out = algos.clipped_value_loss(values, batch.old_values, batch.returns, batch.loss_mask, clip=algo.value_clip)
    vloss = _token_mean(out.loss, batch)
    return hp.value_coef * vloss, {"value_loss": vloss}


# ------------------------------------------------------------------------------------------------
# The step.


def _split_micro(batch: RLBatch, m: int) -> RLBatch:
    def split(x):
        if x.ndim == 0:
            return jnp.broadcast_to(x, (m,))
        return x.reshape((m, x.shape[0] // m) + x.shape[1:])

    return jax.tree.map(split, batch)


def _accumulated_grad(loss_fn, params, batch: RLBatch, hp: Hyper, m: int):
    """Sum over micro-batches of ``(grad, metrics)`` in a scan: exact given global denominators."""
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if m == 1:
        return grad_fn(params, batch, hp)
    micro = _split_micro(batch, m)

    def body(acc, mb):
        g, mets = grad_fn(params, mb, hp)
        return jax.tree.map(jnp.add, acc, (g, mets)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), hp))
    total, _ = jax.lax.scan(body, zeros, micro)
    return total


def _finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _apply(tx, grads, opt_state, params, ok):
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    return keep(new_params, params), keep(new_opt, opt_state)


def make_train_step(model: ModelConfig, algo: AlgoConfig, kernels: KernelConfig,
                    tx: optax.GradientTransformation, critic_tx: optax.GradientTransformation | None = None,
                    *, jit: bool = True) -> Callable[[TrainState, RLBatch, Hyper], tuple[TrainState, dict]]:
    """Builds ``step(state, batch, hparams) -> (state, metrics)`` for ``algo.name`` (grpo | ppo).

    Args:
      model, algo, kernels: static configs.
      tx: the policy optimizer; critic_tx: the critic's (PPO).
      jit: return the jitted step (state buffers donated).

    Returns:
      The step function. ``metrics`` hold the mini-batch's loss terms, ``grad_norm`` and
      ``skipped`` (1.0 when a non-finite loss or gradient skipped the update).
    """
    m = algo.num_microbatches
    if algo.name == "grpo":
        policy_fn = lambda p, b, h: grpo_loss(p, b, h, model=model, algo=algo, kernels=kernels)  # noqa: E731
    else:
        policy_fn = lambda p, b, h: ppo_policy_loss(p, b, h, model=model, algo=algo, kernels=kernels)  # noqa: E731
        value_fn = lambda p, b, h: critic_loss(p, b, h, model=model, algo=algo)  # noqa: E731

    def step(state: TrainState, batch: RLBatch, hp: Hyper):
        grads, metrics = _accumulated_grad(policy_fn, state.params, batch, hp, m)
        ok = _finite(grads) & jnp.isfinite(metrics["loss"])
        metrics["grad_norm"] = optax.tree.norm(grads)
        critic_params, critic_opt_state = state.critic_params, state.critic_opt_state
        if algo.name == "ppo":  # one decision for actor and critic: both update or neither
            cgrads, cmetrics = _accumulated_grad(value_fn, critic_params, batch, hp, m)
            ok = ok & _finite(cgrads) & jnp.isfinite(cmetrics["value_loss"])
            metrics.update(cmetrics)
            metrics["critic_grad_norm"] = optax.tree.norm(cgrads)
            critic_params, critic_opt_state = _apply(critic_tx, cgrads, critic_opt_state, critic_params, ok)
        params, opt_state = _apply(tx, grads, state.opt_state, state.params, ok)
        metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
        new_state = state._replace(params=params, opt_state=opt_state, critic_params=critic_params,
                                   critic_opt_state=critic_opt_state,
                                   skipped=state.skipped + (1 - ok.astype(jnp.int32)))
        return new_state, metrics

    return jax.jit(step, donate_argnums=(0,)) if jit else step


# ------------------------------------------------------------------------------------------------
# Supervised fine-tuning (cold start, rejection-sampling SFT, distillation, base-model pre-training).


class SFTBatch(NamedTuple):
    tokens: jax.Array          # [N, T] int32
    attention_mask: jax.Array  # [N, T] bool
    loss_mask: jax.Array       # [N, T-1] bool: targets that are trained on (the completion)
    denominator: jax.Array     # float32 scalar: loss-mask tokens of the WHOLE mini-batch


def sft_loss(params: Params, batch: SFTBatch, hp: Hyper, *, model: ModelConfig, kernels: KernelConfig):
    """Token-mean negative log-likelihood of the masked targets (temperature 1)."""
    del hp
    logp = policy_logprobs(params, model, kernels, batch.tokens, batch.attention_mask, jnp.float32(1.0))
    nll = algos.loss_numerator(-logp, batch.loss_mask, "token_mean") / batch.denominator
    return nll, {"loss": nll}


def make_sft_step(model: ModelConfig, kernels: KernelConfig, tx: optax.GradientTransformation,
                  num_microbatches: int = 1, *, jit: bool = True):
    """``step(params, opt_state, batch) -> (params, opt_state, metrics)`` for supervised training."""
    loss_fn = lambda p, b, h: sft_loss(p, b, h, model=model, kernels=kernels)  # noqa: E731
    hp = None

    def step(params, opt_state, batch: SFTBatch):
        grads, metrics = _accumulated_grad(loss_fn, params, batch, hp, num_microbatches)
        ok = _finite(grads) & jnp.isfinite(metrics["loss"])
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
        params, opt_state = _apply(tx, grads, opt_state, params, ok)
        return params, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1)) if jit else step
