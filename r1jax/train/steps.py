"""The pure updates: ``update(state, batch, hp) -> (state, metrics)``, one jitted call each.

:func:`make_rl_update` builds the whole RL algorithm after sampling and scoring: reward shaping
and dynamic sampling, the old-policy / reference / critic forwards it needs (decided at trace
time), advantages through the registry :data:`r1jax.algos.ADVANTAGES`, then ``num_epochs ×
num_minibatches`` optimizer steps as a ``lax.scan`` over a ``jax.random.permutation`` of the rows,
the step counter and the reference refresh. :func:`make_sft_update` runs supervised fine-tuning
through the same optimizer step with the registered ``nll`` loss.

Every optimizer step splits its mini-batch into ``num_microbatches`` micro-batches (or more, to keep
each within ``algo.microbatch_tokens`` tokens on CPU: :func:`microbatch_count`) whose gradients are summed
in a scan; losses use the mini-batch's global denominator, so the sum equals the unsplit
gradient (split invariance, :mod:`r1jax.algos.aggregation`). The forwards without gradient (old
policy, reference, critic values) run over chunks of the same number of rows. An optimizer step
whose loss, gradient, new parameters or new optimizer state is non-finite is skipped (state
unchanged) and counted.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from r1jax import algos
from r1jax.models import ModelConfig, forward, lm_head_weight, value
from r1jax.models.transformer import (PromptCache, forward_continuations, prompt_cache, restack_layers,
                                     unstack_layers)
from r1jax.train.config import AlgoConfig, KernelConfig, microbatch_token_budget
from r1jax.train.state import Hyper, TrainState
from r1jax_kernels import grpo_token_terms, sharded_token_logprobs, token_logprobs

Params = Any

__all__ = ["Rollout", "SFTBatch", "policy_logprobs", "critic_values", "make_rl_update", "make_sft_update", "optimizer_step",
           "microbatch_count", "STATIC_HPARAMS"]

STATIC_HPARAMS = ("std_scaling", "std_ddof", "whiten_advantages")
"""Keyword options of the registered functions that are static (shape or control flow): from AlgoConfig."""


class Rollout(NamedTuple):
    """A scored rollout batch: P prompts × G samples, rows prompt-major (row = p * G + g).

    Arrays named ``[B, T-1]`` are aligned with the targets ``tokens[:, 1:]``.
    """

    tokens: jax.Array          # [B, T] int32: prompt + completion, right-padded
    attention_mask: jax.Array  # [B, T] bool: real (non-pad) tokens
    loss_mask: jax.Array       # [B, T-1] bool: completion tokens
    sampler_logp: jax.Array    # [B, T-1] float32: what the rollout engine reported
    rewards: jax.Array         # [P, G] float32: total reward of each sample
    lengths: jax.Array         # [P, G] float32: completion lengths in tokens
    packed: "Packed | None" = None  # the same sequences packed into rows: what the forwards read
    grouped: "Grouped | None" = None  # or the completions with each prompt held once per group


class Packed(NamedTuple):
    """A rollout's sequences packed several to a row (``algo.packing``): the layout the model runs on.

    Per-token quantities that need whole sequences (advantages, aggregation weights, GAE) are
    computed on the padded rows, one sequence per row, and moved with two gathers: ``gather``
    takes padded targets to packed ones, ``scatter`` packed targets back to padded ones. Index
    ``B * (T-1)`` (resp. ``R * (L-1)``) names an extra zero slot: a target with no counterpart.
    """

    tokens: jax.Array          # [R, L] int32
    attention_mask: jax.Array  # [R, L] bool
    segment_ids: jax.Array     # [R, L] int32: k >= 1 for the k-th sequence of a row, 0 on padding
    gather: jax.Array          # [R, L-1] int32: index of each packed target in the flat padded targets
    scatter: jax.Array         # [B, T-1] int32: index of each padded target in the flat packed targets
    row_of_seq: jax.Array      # [B] int32: the packed row of each sequence


class Grouped(NamedTuple):
    """A rollout's completions with each group's prompt held once (``algo.share_prompts``): the
    layout the model runs on (:func:`r1jax.models.forward_grouped`).

    Target ``t`` of row ``b`` is completion token ``t`` (predicted from the prompt's last token when
    ``t = 0``): there are no prompt targets. ``gather`` / ``scatter`` move per-target arrays from
    and to the padded rows as :class:`Packed`'s do.
    """

    prompt_tokens: jax.Array   # [P, Lp] int32: the prompts, left-padded
    prompt_mask: jax.Array     # [P, Lp] bool
    tokens: jax.Array          # [B, Tc] int32: row p * G + g is completion g of prompt p, right-padded
    attention_mask: jax.Array  # [B, Tc] bool
    gather: jax.Array          # [B, Tc] int32: index of each target in the flat padded targets
    scatter: jax.Array         # [B, T-1] int32: index of each padded target in the flat grouped targets


class SFTBatch(NamedTuple):
    tokens: jax.Array          # [N, T] int32
    attention_mask: jax.Array  # [N, T] bool
    loss_mask: jax.Array       # [N, T-1] bool: targets that are trained on (the completion)
    segment_ids: jax.Array | None = None  # [N, T] int32 packed sequences (0 = pad); None: one per row


class _Rows(NamedTuple):
    """What one optimizer step reads, per row (sliced by the mini-batch permutation); rows are the
    padded sequences or, with packing, the packed rows."""

    tokens: jax.Array
    attention_mask: jax.Array
    segment_ids: jax.Array | None  # None: one sequence per row
    loss_mask: jax.Array
    weights: jax.Array             # per-token aggregation weights (algos.token_weights of whole sequences)
    num_seqs: jax.Array            # [rows] float32: trained sequences in each row
    advantages: jax.Array
    sampler_logp: jax.Array
    old_logp: jax.Array | None     # None: on-policy single pass, old = stop_gradient(logp)
    ref_logp: jax.Array | None     # None: no KL term in the loss
    old_values: jax.Array | None   # None: no critic
    returns: jax.Array | None
    prompt_tokens: jax.Array | None = None  # [P, Lp] with grouped rows (Grouped), else None
    prompt_mask: jax.Array | None = None
    prompt_cache: PromptCache | None = None  # the prompts' keys and values, when computed once per mini-batch


# ------------------------------------------------------------------------------------------------
# Log-probs and values.


def target_hidden(params: Params, model: ModelConfig, tokens: jax.Array, attention_mask: jax.Array, *,
                  segment_ids: jax.Array | None = None, prompt: tuple | None = None):
    """``(hidden, targets)``: the final hidden state that predicts each target, and the targets.

    Rows of whole sequences (padded, or packed with ``segment_ids``): the targets are
    ``tokens[:, 1:]``. Grouped rows (``prompt = (prompt_tokens [P, Lp], prompt_mask)``, left-padded,
    and optionally their :class:`~r1jax.models.transformer.PromptCache` under ``params`` as a
    third item; ``tokens`` the ``[P * G, Tc]`` completions, see :class:`Grouped`): the targets are
    every completion token, the first predicted from the prompt's last position.
    """
    if prompt is None:
        hidden = forward(params, model, tokens, attention_mask=attention_mask, segment_ids=segment_ids)
        return hidden[:, :-1], tokens[:, 1:]
    prompt_tokens, prompt_mask, *cached = prompt
    cache = cached[0] if cached and cached[0] is not None else prompt_cache(params, model, prompt_tokens,
                                                                           prompt_mask=prompt_mask)
    hidden = forward_continuations(params, model, cache, tokens, prompt_mask=prompt_mask,
                                   attention_mask=attention_mask)
    first = jnp.repeat(cache.hidden[:, -1:], tokens.shape[0] // prompt_tokens.shape[0], axis=0)
    return jnp.concatenate([first, hidden[:, :-1]], axis=1), tokens


def policy_logprobs(params: Params, model: ModelConfig, kernels: KernelConfig, tokens: jax.Array,
                    attention_mask: jax.Array, temperature: jax.Array, *, entropy: bool = False,
                    mesh: jax.sharding.Mesh | None = None, segment_ids: jax.Array | None = None,
                    prompt: tuple | None = None):
    """Per-target log-probs (and entropies) under ``params``: ``[N, T-1]`` of ``tokens[:, 1:]``, or
    ``[P * G, Tc]`` of grouped rows' completions (``prompt``, see :func:`target_hidden`).

    The same "processed" log-probs as the sampler: ``log_softmax(logits / temperature)``. On a mesh
    with a tensor axis > 1 the vocabulary is sharded over it (vocabulary-parallel log-softmax).
    With ``segment_ids`` (packed rows) each sequence attends only to itself and its positions restart
    at 0; a target that starts the next sequence of a row is garbage, and masked by the caller.
    """
    hidden, targets = target_hidden(params, model, tokens, attention_mask, segment_ids=segment_ids, prompt=prompt)
    head = lm_head_weight(params, model)
    if mesh is not None and mesh.shape.get("tensor", 1) > 1 and _vocab_shardable(mesh, model, targets):
        return sharded_token_logprobs(hidden, head, targets, mesh=mesh, temperature=temperature,
                                      return_entropy=entropy, chunk_size=kernels.chunk_size)
    return token_logprobs(hidden, head, targets, temperature=temperature, return_entropy=entropy,
                          **_kernel_kwargs(kernels))


def _vocab_shardable(mesh, model: ModelConfig, targets) -> bool:
    rows = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    return model.vocab_size % mesh.shape["tensor"] == 0 and targets.size % rows == 0


def _kernel_kwargs(kernels: KernelConfig) -> dict:
    kw: dict = {"backend": kernels.logprob_backend, "interpret": kernels.interpret}
    if kernels.logprob_backend != "pallas":
        kw["chunk_size"] = kernels.chunk_size
    return kw


def critic_values(critic_params: Params, model: ModelConfig, tokens: jax.Array,
                  attention_mask: jax.Array, segment_ids: jax.Array | None = None,
                  prompt: tuple | None = None) -> jax.Array:
    """``V(s_t)`` aligned with the targets (:func:`target_hidden`): the value of the prefix before each."""
    hidden, _ = target_hidden(critic_params, model, tokens, attention_mask, segment_ids=segment_ids, prompt=prompt)
    return value(critic_params, model, hidden)


# ------------------------------------------------------------------------------------------------
# The optimizer step shared by every update.


def _token_mean(x, mask, num_tokens):
    """A diagnostic's mean over the mini-batch's trained tokens (split-invariant)."""
    return algos.loss_numerator(x, mask, "token_mean") / num_tokens


def _accumulated_grad(loss_fn, params, rows, m: int, model: ModelConfig | None = None):
    """Sum over ``m`` micro-batches of ``(grad, metrics)`` in a scan: exact given global denominators.

    With ``model`` (``loss_fn`` reads the parameters only through :func:`r1jax.models.forward`):
    - layers unrolled (not scanned): the micro-batches read one array per layer, sliced once, and
      each layer's gradient is summed into its own buffer. Summed into the stacked ``[L, ...]``
      arrays, every micro-batch rebuilds them (a pad and an add per layer): 2-7% of
      benchmarks/grpo_step.py's bfloat16 update on one core. The sums are the same.
    - grouped rows (:class:`Grouped`): the prompts run once for the mini-batch
      (:func:`~r1jax.models.transformer.prompt_cache`, a few tall matmuls instead of small ones in
      every micro-batch); each micro-batch also returns the gradient of its prompts' keys and
      values, pulled back through the prompts' layers once at the end.
    """
    per_layer = model is not None and not model.scan_layers and isinstance(params.get("layers"), dict)
    read = unstack_layers(params) if per_layer else params
    restack = restack_layers if per_layer else (lambda g: g)  # noqa: E731
    if model is not None and getattr(rows, "prompt_tokens", None) is not None:
        grads, metrics = _grouped_grad(loss_fn, read, rows, m, model)
        return restack(grads), metrics
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if m == 1:
        return grad_fn(params, rows)
    micro = _split_rows(rows, m)

    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, grad_fn(read, mb)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, read, jax.tree.map(lambda x: x[0], micro)))
    (grads, metrics), _ = jax.lax.scan(body, zeros, micro)
    return restack(grads), metrics


def _grouped_grad(loss_fn, params, rows: _Rows, m: int, model: ModelConfig):
    """:func:`_accumulated_grad` of grouped rows: the prompts' layers run once, outside the scan."""
    cache, pull_back = jax.vjp(lambda p: prompt_cache(p, model, rows.prompt_tokens, prompt_mask=rows.prompt_mask),
                               params)
    grad_fn = jax.grad(lambda p, c, mb: loss_fn(p, mb._replace(prompt_cache=c)), argnums=(0, 1), has_aux=True)

    def body(acc, micro_batch):
        mb, mb_cache = micro_batch
        (grad, cache_grad), metrics = grad_fn(params, mb_cache, mb)
        return jax.tree.map(jnp.add, acc, (grad, metrics)), cache_grad

    micro = _split_rows((rows, cache), m)
    first_mb, first_cache = jax.tree.map(lambda x: x[0], micro)
    (grad_shape, _), metric_shape = jax.eval_shape(grad_fn, params, first_cache, first_mb)
    zeros = jax.tree.map(jnp.zeros_like, (grad_shape, metric_shape))
    (grads, metrics), cache_grads = jax.lax.scan(body, zeros, micro)
    (through_prompts,) = pull_back(jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), cache_grads))
    return jax.tree.map(jnp.add, grads, through_prompts), metrics


def _split_rows(rows, m: int):
    """Every leaf ``[N, ...]`` of ``rows`` as ``[m, N / m, ...]``: ``m`` micro-batches of consecutive rows."""
    return jax.tree.map(lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), rows)


def _in_microbatches(fn, rows, m: int):
    """``fn(rows)`` (a forward without gradient, per row) over ``m`` row chunks in a ``lax.map``: the
    activations of one micro-batch at a time stay in cache, as in :func:`_accumulated_grad`."""
    if m == 1:
        return fn(rows)
    return jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:]), jax.lax.map(fn, _split_rows(rows, m)))


def microbatch_count(rows: int, row_length: int, *, at_least: int = 1, max_tokens: int | None = None) -> int:
    """The micro-batches a mini-batch of ``rows × row_length`` tokens is split into: ``at_least`` or,
    with ``max_tokens``, the fewest multiple of it that divides ``rows`` and keeps each micro-batch
    within ``max_tokens`` (one row each when no split does)."""
    if max_tokens is None or rows % at_least:
        return at_least
    for m in range(at_least, rows + 1, at_least):
        if rows % m == 0 and (rows // m) * row_length <= max_tokens:
            return m
    return rows


def _finite(*trees) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _proposed(tx, grads, opt_state, params, lr_scale):
    updates, new_opt = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * lr_scale, updates)
    return optax.apply_updates(params, updates), new_opt


def _move(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x`` flattened, with a zero slot appended, gathered at ``index``: one layout to the other."""
    flat = jnp.concatenate([x.reshape(-1), jnp.zeros((1,), x.dtype)])
    return flat[index]


def _select(ok, new, old):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def optimizer_step(state: TrainState, rows, hp: Hyper, *, policy_loss, tx, m: int,
                    critic_loss=None, critic_tx=None, model: ModelConfig | None = None) -> tuple[TrainState, dict]:
    """One optimizer step of the policy (and critic) on a mini-batch; skipped when anything is non-finite.

    ``model``: the policy's architecture, when ``policy_loss`` reads the parameters only through
    :func:`r1jax.models.forward` (see :func:`_accumulated_grad`)."""
    grads, metrics = _accumulated_grad(policy_loss, state.params, rows, m, model)
    params, opt_state = _proposed(tx, grads, state.opt_state, state.params, hp.lr_scale)
    ok = _finite(grads, metrics["loss"], params, opt_state)
    metrics["grad_norm"] = optax.tree.norm(grads)
    critic_params, critic_opt = state.critic_params, state.critic_opt_state
    if critic_loss is not None:  # one decision for actor and critic: both update or neither
        cgrads, cmetrics = _accumulated_grad(critic_loss, critic_params, rows, m)
        critic_params, critic_opt = _proposed(critic_tx, cgrads, critic_opt, critic_params, hp.lr_scale)
        ok = ok & _finite(cgrads, cmetrics["value_loss"], critic_params, critic_opt)
        metrics.update(cmetrics, critic_grad_norm=optax.tree.norm(cgrads))
        critic_params = _select(ok, critic_params, state.critic_params)
        critic_opt = _select(ok, critic_opt, state.critic_opt_state)
    bad = 1 - ok.astype(jnp.int32)
    metrics["skipped"] = bad.astype(jnp.float32)
    return state.replace(
        params=_select(ok, params, state.params), opt_state=_select(ok, opt_state, state.opt_state),
        critic_params=critic_params, critic_opt_state=critic_opt, skipped=state.skipped + bad,
        skipped_in_a_row=(state.skipped_in_a_row + 1) * bad), metrics


def _over_minibatches(state: TrainState, rows, step_fn, *, num_epochs: int, num_minibatches: int):
    """``num_epochs`` passes of ``num_minibatches`` optimizer steps, as one ``lax.scan``.

    Each pass visits the rows in a fresh ``jax.random.permutation`` (in order when there is one
    mini-batch); a mini-batch without a trained token takes no optimizer step (``lax.cond``).
    Metrics are averaged over the steps taken; ``skipped`` is their sum.
    """
    grouped = getattr(rows, "prompt_tokens", None) is not None  # mini-batches of whole groups (Grouped rows)
    n = (rows.prompt_tokens if grouped else rows.tokens).shape[0]
    key, *pass_keys = jax.random.split(state.key, num_epochs + 1)
    if num_minibatches == 1:
        order = jnp.tile(jnp.arange(n), (num_epochs, 1))
    else:
        order = jax.vmap(lambda k: jax.random.permutation(k, n))(jnp.stack(pass_keys))
    index = order.reshape(num_epochs * num_minibatches, n // num_minibatches)

    def take(idx):
        if not grouped:
            return jax.tree.map(lambda x: x[idx], rows)
        group = rows.tokens.shape[0] // n
        row_idx = (idx[:, None] * group + jnp.arange(group)).reshape(-1)
        mb = jax.tree.map(lambda x: x[row_idx], rows._replace(prompt_tokens=None, prompt_mask=None))
        return mb._replace(prompt_tokens=rows.prompt_tokens[idx], prompt_mask=rows.prompt_mask[idx])

    like = jax.eval_shape(step_fn, state.replace(ref_params={}), take(index[0]))[1]

    def body(state, idx):
        mb = take(idx)
        ran = jnp.any(mb.loss_mask)
        skip = lambda s, _: (s, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), like))  # noqa: E731
        state, metrics = jax.lax.cond(ran, step_fn, skip, state, mb)
        return state, (metrics, ran)

    ref = state.ref_params  # constant over the passes: kept out of the scan's carry
    state, (metrics, ran) = jax.lax.scan(body, state.replace(key=key, ref_params={}), index)
    state = state.replace(ref_params=ref)
    count = jnp.maximum(jnp.sum(ran), 1).astype(jnp.float32)
    out = {k: jnp.sum(v * ran) / count for k, v in metrics.items()}
    out["skipped"] = jnp.sum(metrics["skipped"])
    out["optimizer_steps"] = jnp.sum(ran).astype(jnp.float32)
    return state, out


# ------------------------------------------------------------------------------------------------
# RL.


def _prompt(rows: _Rows) -> tuple | None:
    return None if rows.prompt_tokens is None else (rows.prompt_tokens, rows.prompt_mask, rows.prompt_cache)


def _hparams(hp: Hyper, algo: AlgoConfig) -> dict:
    """The keyword namespace of the registered functions: traced numbers plus static options."""
    return {**hp.as_dict(), **{k: getattr(algo, k) for k in STATIC_HPARAMS}}


def _policy_terms(params, rows: _Rows, hp: Hyper, *, model, algo: AlgoConfig, kernels, mesh):
    """Per-token log-probs, entropy, policy loss output and KL of a micro-batch."""
    hpd = _hparams(hp, algo)
    prompt = _prompt(rows)
    if kernels.fused:
        hidden, targets = target_hidden(params, model, rows.tokens, rows.attention_mask,
                                        segment_ids=rows.segment_ids, prompt=prompt)
        old = rows.old_logp  # the fused kernel takes the behaviour log-probs as an input (always computed)
        ref = rows.ref_logp if rows.ref_logp is not None else old
        terms = grpo_token_terms(
            hidden, lm_head_weight(params, model), targets, old, ref, rows.advantages,
            temperature=hp.temperature, eps_low=hp.eps_low, eps_high=hp.eps_high, dual_clip=hp.dual_clip,
            log_ratio_clamp=hp.log_ratio_clamp, kl_clamp=hp.kl_clamp, **_kernel_kwargs(kernels))
        logp, ent = terms.logp, terms.entropy
        out = algos.clipped_surrogate_loss(jax.lax.stop_gradient(logp), old, rows.advantages, rows.loss_mask,
                                           eps_low=hp.eps_low, eps_high=hp.eps_high, dual_clip=hp.dual_clip,
                                           log_ratio_clamp=hp.log_ratio_clamp)
        out = out._replace(loss=jnp.where(rows.loss_mask, terms.policy_loss, 0.0))
        kl = jnp.where(rows.loss_mask, getattr(terms, algo.kl_estimator), 0.0)
        return logp, ent, old, out, kl
    logp, ent = policy_logprobs(params, model, kernels, rows.tokens, rows.attention_mask, hp.temperature,
                                entropy=True, mesh=mesh, segment_ids=rows.segment_ids, prompt=prompt)
    old = jax.lax.stop_gradient(logp) if rows.old_logp is None else rows.old_logp
    out = algos.POLICY_LOSSES.call(algo.policy_loss, logp, old, rows.advantages, rows.loss_mask, hparams=hpd)
    kl = jnp.zeros_like(logp)
    if rows.ref_logp is not None:
        kl = algos.kl_estimate(logp, rows.ref_logp, rows.loss_mask, kind=algo.kl_estimator,
                               log_ratio_clamp=hp.log_ratio_clamp, clamp=hp.kl_clamp)
    return logp, ent, old, out, kl


def _rl_losses(algo: AlgoConfig, model: ModelConfig, kernels: KernelConfig, mesh, den, num_tokens):
    """The policy and critic loss functions of one mini-batch (its global denominators closed over)."""

    def policy_loss(params, rows: _Rows, hp: Hyper):
        logp, ent, old, out, kl = _policy_terms(params, rows, hp, model=model, algo=algo, kernels=kernels, mesh=mesh)
        mask = rows.loss_mask
        per_token = out.loss
        if algo.tis != "off":  # the trainer-vs-sampler mismatch: weights pi_trainer / pi_sampler, capped
            per_token = per_token * algos.truncated_is_weights(
                old, rows.sampler_logp, mask, cap=hp.tis_cap, level=algo.tis, mode=algo.tis_mode,
                log_ratio_clamp=hp.log_ratio_clamp).weights
        if not algo.kl_in_reward:
            per_token = per_token + hp.kl_coef * kl
        per_token = per_token - hp.entropy_coef * ent
        loss = jnp.sum(jnp.where(mask, per_token, 0.0) * rows.weights) / den
        mean = lambda x: _token_mean(x, mask, num_tokens)  # noqa: E731
        sampler_kl = algos.kl_estimate(rows.sampler_logp, old, mask, kind="k3")
        return loss, {"loss": loss, "policy_loss": mean(out.loss), "kl_ref": mean(kl), "entropy": mean(ent),
                      "clip_frac/low": mean(out.clipped_low), "clip_frac/high": mean(out.clipped_high),
                      "ratio": mean(out.ratio), "trainer_sampler_kl": mean(sampler_kl)}

    def critic_loss(critic_params, rows: _Rows, hp: Hyper):
        values = critic_values(critic_params, model, rows.tokens, rows.attention_mask, rows.segment_ids,
                               _prompt(rows))
        out = algos.clipped_value_loss(values, rows.old_values, rows.returns, rows.loss_mask, clip=hp.value_clip)
        vloss = _token_mean(out.loss, rows.loss_mask, num_tokens)
        return hp.value_coef * vloss, {"value_loss": vloss}

    return policy_loss, critic_loss


def _check_packable(algo: AlgoConfig) -> None:
    """Losses and weights that reduce over a row need one sequence per row."""
    if algos.POLICY_LOSSES.entry(algo.policy_loss).meta["sequence_level"]:
        raise ValueError(f"algo.packing: policy loss {algo.policy_loss!r} is sequence-level (it reduces over each "
                         f"row); it cannot train on packed rows")
    if algo.tis not in ("off", "token"):
        raise ValueError(f"algo.packing: tis level {algo.tis!r} reduces over each row; use tis: token or no packing")


def update_token_budget(algo: AlgoConfig, mesh: jax.sharding.Mesh | None) -> int | None:
    """The micro-batch token bound the update splits by (:func:`microbatch_count`): ``algo.microbatch_tokens``
    on the mesh's platform, and only on one data shard (micro-batches must split evenly over the mesh)."""
    data_parallel = 1 if mesh is None else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    return microbatch_token_budget(algo.microbatch_tokens, platform) if data_parallel == 1 else None


def make_rl_update(model: ModelConfig, algo: AlgoConfig, kernels: KernelConfig, tx: optax.GradientTransformation,
                   critic_tx: optax.GradientTransformation | None = None, *, max_new_tokens: int,
                   mesh: jax.sharding.Mesh | None = None, jit: bool = True
                   ) -> Callable[[TrainState, Rollout, Hyper], tuple[TrainState, dict]]:
    """Builds ``update(state, rollout, hp) -> (state, metrics)``: the whole RL algorithm after scoring.

    The rollout's rows are one sequence each, padded; when it carries a :class:`Packed` layout
    (``algo.packing``) or a :class:`Grouped` one (``algo.share_prompts``) every model forward runs
    on those rows instead, and the advantages and aggregation weights, computed on whole sequences,
    are moved to them (the loss is the same). Grouped rows split into mini- and micro-batches of
    whole groups.

    Decided at trace time from the static config: the old-policy forward runs only when the rows
    are visited more than once, the estimator needs behaviour log-probs or the fused kernel takes
    them as an input (otherwise
    ``old_logp = stop_gradient(logp)``); the reference forward only when β > 0
    (``algo.uses_reference``); the critic only for estimators that need one.

    Args:
      model, algo, kernels: static configs.
      tx: the policy optimizer; critic_tx: the critic's (estimators with ``needs_critic``).
      max_new_tokens: the generation budget (the ``seq_mean_token_sum_norm`` denominator, DAPO's limit).
      mesh: the device mesh (vocabulary-parallel log-probs when its tensor axis is > 1).
      jit: return the jitted update (the state is donated); False gives the plain function (to vmap).

    Returns:
      The update. Its metrics: the loss terms averaged over the optimizer steps taken, ``grad_norm``,
      ``skipped`` (optimizer steps skipped), ``skipped_in_a_row``, ``optimizer_steps``,
      ``groups_kept_frac`` and, for PPO, ``value_loss`` / ``critic_grad_norm``.
    """
    if algo.needs_critic and critic_tx is None:
        raise ValueError(f"make_rl_update: algo.advantage {algo.advantage!r} needs a critic optimizer")
    algos.POLICY_LOSSES.check_keywords(algo.policy_loss, set(Hyper.__dataclass_fields__) | set(STATIC_HPARAMS))
    algos.ADVANTAGES.check_keywords(algo.advantage, set(Hyper.__dataclass_fields__) | set(STATIC_HPARAMS))
    need_old = algo.passes > 1 or algo.kl_in_reward or kernels.fused
    max_tokens = update_token_budget(algo, mesh)

    def update(state: TrainState, rollout: Rollout, hp: Hyper):
        num_prompts, group = rollout.rewards.shape
        packed, grouped = rollout.packed, rollout.grouped
        if packed is not None:
            _check_packable(algo)
        if packed is not None and grouped is not None:
            raise ValueError("make_rl_update: a rollout carries one layout, packed or grouped, not both")
        rewards = rollout.rewards.astype(jnp.float32)
        if algo.overlong_buffer:
            rewards = rewards + hp.overlong_penalty * algos.overlong_penalty(
                rollout.lengths, max_len=max_new_tokens, cache_len=algo.overlong_buffer)
        keep = jnp.ones((num_prompts, group), bool)
        if algo.dynamic_sampling:
            keep = jnp.broadcast_to(algos.dynamic_sampling_mask(rewards)[:, None], keep.shape)
        mask = rollout.loss_mask & keep.reshape(-1)[:, None]
        # The forwards run on the rows of the layout (packed, grouped or padded); estimators read padded rows.
        layout = packed if packed is not None else grouped
        rows_of = layout if layout is not None else rollout
        seg = packed.segment_ids if packed is not None else None
        prompt = (grouped.prompt_tokens, grouped.prompt_mask) if grouped is not None else None
        to_rows = (lambda x: _move(x, layout.gather)) if layout is not None else (lambda x: x)  # noqa: E731
        to_seqs = (lambda x: _move(x, layout.scatter)) if layout is not None else (lambda x: x)  # noqa: E731

        # m micro-batches per optimizer step. The forwards without gradient run over chunks of as many
        # rows: activations that stay in cache (the reference forward alone, 8 × 8 × 64 tokens, one
        # core: 1.2x faster f32, 1.3x bf16 than over every row at once).
        # Grouped rows split by whole groups: a unit is a prompt with its rows.
        n_rows, row_len = rows_of.tokens.shape
        if grouped is not None:
            units, prompt_len = grouped.prompt_tokens.shape
            n_rows, row_len = units, prompt_len + n_rows // units * row_len
        m = microbatch_count(n_rows // algo.num_minibatches, row_len, at_least=algo.num_microbatches,
                             max_tokens=max_tokens)
        chunks = algo.num_minibatches * m
        if grouped is not None and n_rows % chunks:
            raise ValueError(f"make_rl_update: {n_rows} grouped prompts do not split into algo.num_minibatches x "
                             f"micro-batches = {algo.num_minibatches} x {m}; mini- and micro-batches hold whole groups")
        inputs = (rows_of.tokens, rows_of.attention_mask, seg, prompt)

        def logp_of(params):
            if not model.scan_layers:  # the layers sliced once, not in every micro-batch
                params = unstack_layers(params)
            chunk_inputs = inputs
            if prompt is not None:  # every prompt run once, its keys and values read by the chunks
                chunk_inputs = inputs[:3] + ((*prompt, prompt_cache(params, model, prompt[0], prompt_mask=prompt[1])),)
            return jax.lax.stop_gradient(_in_microbatches(
                lambda r: policy_logprobs(params, model, kernels, r[0], r[1], hp.temperature, mesh=mesh,
                                          segment_ids=r[2], prompt=r[3]), chunk_inputs, chunks))

        old_logp = logp_of(state.params) if need_old else None
        ref_logp = logp_of(state.ref_params) if algo.uses_reference else None
        values = (jax.lax.stop_gradient(_in_microbatches(
            lambda r: critic_values(state.critic_params, model, *r), inputs, chunks)) if algo.needs_critic else None)
        opt = lambda x, f: None if x is None else f(x)  # noqa: E731
        adv = algos.ADVANTAGES.call(
            algo.advantage, algos.AdvantageInputs(rewards, keep, mask, opt(old_logp, to_seqs), opt(ref_logp, to_seqs),
                                                  opt(values, to_seqs)),
            hparams=_hparams(hp, algo))
        has_seq = jnp.any(mask, axis=-1).astype(jnp.float32)
        num_seqs = (jax.ops.segment_sum(has_seq, packed.row_of_seq, num_segments=packed.tokens.shape[0])
                    if packed is not None else has_seq)
        rows = _Rows(rows_of.tokens, rows_of.attention_mask, seg, to_rows(mask),
                     to_rows(algos.token_weights(mask, algo.loss_agg)), num_seqs,
                     to_rows(jax.lax.stop_gradient(adv.advantages)), to_rows(rollout.sampler_logp), old_logp,
                     None if algo.kl_in_reward else ref_logp, values,
                     to_rows(adv.returns) if algo.needs_critic else None, *(prompt or (None, None)))

        def step_fn(state, mb: _Rows):
            num_tokens = jnp.maximum(jnp.sum(mb.loss_mask), 1).astype(jnp.float32)
            den = jnp.maximum(algos.loss_denominator(mb.loss_mask, algo.loss_agg, max_len=max_new_tokens,
                                                     num_sequences=jnp.sum(mb.num_seqs)), 1.0)
            policy_loss, critic_loss = _rl_losses(algo, model, kernels, mesh, den, num_tokens)
            return optimizer_step(
                state, mb, hp, policy_loss=lambda p, r: policy_loss(p, r, hp), tx=tx, m=m,
                critic_loss=(lambda p, r: critic_loss(p, r, hp)) if algo.needs_critic else None, critic_tx=critic_tx,
                model=model)

        state, metrics = _over_minibatches(state, rows, step_fn, num_epochs=algo.num_epochs,
                                           num_minibatches=algo.num_minibatches)
        step = state.step + 1
        if algo.uses_reference and algo.ref_update_every:
            refresh = step % algo.ref_update_every == 0
            state = state.replace(ref_params=_select(refresh, state.params, state.ref_params))
        metrics.update(groups_kept_frac=jnp.mean(keep[:, 0].astype(jnp.float32)),
                       skipped_in_a_row=state.skipped_in_a_row.astype(jnp.float32))
        return state.replace(step=step), metrics

    return jax.jit(update, donate_argnums=(0,)) if jit else update


# ------------------------------------------------------------------------------------------------
# Supervised fine-tuning (cold start, rejection-sampling SFT, distillation, base-model pre-training).


def make_sft_update(model: ModelConfig, kernels: KernelConfig, tx: optax.GradientTransformation, *,
                    num_minibatches: int = 1, num_microbatches: int = 1, jit: bool = True
                    ) -> Callable[[TrainState, SFTBatch, Hyper], tuple[TrainState, dict]]:
    """``update(state, batch, hp) -> (state, metrics)``: token-mean NLL (the registered ``nll`` loss)
    of the masked targets at temperature 1, ``num_minibatches`` optimizer steps over the batch."""

    def step_fn(state, mb: SFTBatch, hp: Hyper):
        num_tokens = jnp.maximum(jnp.sum(mb.loss_mask), 1).astype(jnp.float32)

        def loss_fn(params, rows: SFTBatch):
            logp = policy_logprobs(params, model, kernels, rows.tokens, rows.attention_mask, jnp.float32(1.0),
                                   segment_ids=rows.segment_ids)
            out = algos.POLICY_LOSSES["nll"](logp, None, None, rows.loss_mask)
            nll = algos.loss_numerator(out.loss, rows.loss_mask, "token_mean") / num_tokens
            return nll, {"loss": nll}

        return optimizer_step(state, mb, hp, policy_loss=loss_fn, tx=tx, m=num_microbatches, model=model)

    def update(state: TrainState, batch: SFTBatch, hp: Hyper):
        state, metrics = _over_minibatches(state, batch, lambda s, mb: step_fn(s, mb, hp), num_epochs=1,
                                           num_minibatches=num_minibatches)
        metrics["skipped_in_a_row"] = state.skipped_in_a_row.astype(jnp.float32)
        return state.replace(step=state.step + 1), metrics

    return jax.jit(update, donate_argnums=(0,)) if jit else update
