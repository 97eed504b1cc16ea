"""The pure train steps: exact micro-batching, skipped non-finite updates, PPO's critic, SFT."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import algos
from r1jax.config import from_dict
from r1jax.models import ModelConfig, init_params, init_value_head
from r1jax.train.config import AlgoConfig, KernelConfig, OptimConfig
from r1jax.train.steps import (Hyper, RLBatch, SFTBatch, TrainState, make_optimizer, make_sft_step,
                               make_train_step, policy_logprobs)

MODEL = ModelConfig(architecture="qwen2", vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=64)
KERNELS = KernelConfig(logprob_backend="reference")
N, T = 8, 12


def _batch(seed=0, *, algo="grpo", mode="seq_mean_token_mean"):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, MODEL.vocab_size, (N, T)).astype(np.int32)
    lengths = rng.integers(T // 2, T + 1, N)
    attn = np.arange(T)[None] < lengths[:, None]
    prompt = 3
    loss_mask = attn[:, 1:] & (np.arange(1, T)[None] >= prompt)
    params = init_params(MODEL, jax.random.PRNGKey(seed))
    old = policy_logprobs(params, MODEL, KERNELS, jnp.asarray(tokens), jnp.asarray(attn), jnp.float32(1.0))
    old = old + 0.05 * rng.standard_normal(old.shape).astype(np.float32)  # behaviour policy differs a bit
    adv = np.repeat(rng.standard_normal((N, 1)), T - 1, 1).astype(np.float32)
    batch = RLBatch(tokens=jnp.asarray(tokens), attention_mask=jnp.asarray(attn), loss_mask=jnp.asarray(loss_mask),
                    advantages=jnp.asarray(adv), old_logp=old, ref_logp=old - 0.1, sampler_logp=old,
                    old_values=jnp.asarray(rng.standard_normal((N, T - 1)), jnp.float32),
                    returns=jnp.asarray(rng.standard_normal((N, T - 1)), jnp.float32),
                    denominator=algos.loss_denominator(loss_mask, mode, max_len=T),
                    num_tokens=jnp.float32(loss_mask.sum()))
    return params, batch


def _state(params, tx, critic_tx=None):
    critic = {}
    critic_opt = {}
    if critic_tx is not None:
        critic = {**jax.tree.map(jnp.copy, params), **init_value_head(MODEL, jax.random.PRNGKey(7))}
        critic_opt = critic_tx.init(critic)
    # Copies: the jitted step donates the state, so no two leaves may share a buffer.
    params = jax.tree.map(jnp.copy, params)
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                      ref_params=jax.tree.map(jnp.copy, params),
                      critic_params=critic, critic_opt_state=critic_opt, key=jax.random.PRNGKey(0),
                      skipped=jnp.int32(0))


def _algo(**kw):
    return from_dict(AlgoConfig, kw)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_microbatching_is_exact(mode):
    """One step with 1, 2 or 4 micro-batches gives the same loss, gradient norm and parameters.

    Plain SGD, so the parameter change is the gradient itself (Adam's first step is ~sign(g),
    which would hide gradient errors and amplify rounding in near-zero entries)."""
    tx = optax.sgd(1.0)
    params, batch = _batch(mode=mode)
    results = []
    for m in (1, 2, 4):
        algo = _algo(loss_agg=mode, num_microbatches=m, kl_coef=0.1, entropy_coef=0.01)
        step = make_train_step(MODEL, algo, KERNELS, tx)
        state, metrics = step(_state(params, tx), batch, Hyper.from_config(algo, 1.0))
        results.append((state.params, metrics))
    for p, mets in results[1:]:
        chex.assert_trees_all_close(p, results[0][0], atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(mets["loss"], results[0][1]["loss"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mets["grad_norm"], results[0][1]["grad_norm"], rtol=1e-4)
    assert float(results[0][1]["grad_norm"]) > 0


def test_non_finite_loss_skips_the_update():
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-2}))
    params, batch = _batch()
    bad = batch._replace(advantages=batch.advantages.at[0].set(jnp.nan))  # row 0 has valid tokens
    algo = _algo()
    step = make_train_step(MODEL, algo, KERNELS, tx)
    state0 = _state(params, tx)
    expected = jax.tree.map(np.asarray, state0.params)
    state, metrics = step(state0, bad, Hyper.from_config(algo, 1.0))
    assert float(metrics["skipped"]) == 1.0
    assert int(state.skipped) == 1
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), expected)
    # and a finite batch afterwards updates as usual
    state, metrics = step(state, batch, Hyper.from_config(algo, 1.0))
    assert float(metrics["skipped"]) == 0.0 and int(state.skipped) == 1
    assert not np.allclose(np.asarray(state.params["embed"]), expected["embed"])


def test_traced_hyper_parameters_do_not_recompile():
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-3}))
    params, batch = _batch()
    algo = _algo()
    traces = []

    def counting(state, b, hp):
        traces.append(1)
        return make_train_step(MODEL, algo, KERNELS, tx, jit=False)(state, b, hp)

    step = jax.jit(counting)
    state = _state(params, tx)
    for kl, eps, temp in ((0.0, 0.2, 1.0), (0.1, 0.3, 0.7), (0.01, 0.1, 1.3)):
        hp = Hyper.from_config(dataclasses.replace(algo, kl_coef=kl, clip_eps_low=eps, clip_eps_high=eps), temp)
        state, _ = step(state, batch, hp)
    assert len(traces) == 1


def test_ppo_step_trains_policy_and_critic():
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-2}))
    critic_tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-2}))
    params, batch = _batch(mode="token_mean")
    algo = _algo(name="ppo", advantage="gae", loss_agg="token_mean", num_microbatches=2)
    step = make_train_step(MODEL, algo, KERNELS, tx, critic_tx)
    state0 = _state(params, tx, critic_tx)
    before_critic = jax.tree.map(np.asarray, state0.critic_params)
    before_policy = np.asarray(state0.params["embed"])
    state, metrics = step(state0, batch, Hyper.from_config(algo, 1.0))
    assert np.isfinite(float(metrics["value_loss"])) and float(metrics["value_loss"]) > 0
    assert not np.allclose(np.asarray(state.critic_params["value_head"]["kernel"]),
                           before_critic["value_head"]["kernel"])
    assert not np.allclose(np.asarray(state.params["embed"]), before_policy)


def test_sft_step_reduces_the_loss():
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 3e-3}))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(np.tile(rng.integers(0, MODEL.vocab_size, (1, T)), (N, 1)), jnp.int32)
    attn = jnp.ones((N, T), bool)
    mask = jnp.ones((N, T - 1), bool)
    batch = SFTBatch(tokens, attn, mask, jnp.float32(N * (T - 1)))
    params = init_params(MODEL, jax.random.PRNGKey(1))
    opt = tx.init(params)
    step = make_sft_step(MODEL, KERNELS, tx)
    losses = []
    for _ in range(20):
        params, opt, m = step(params, opt, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("backend,interpret", [("chunked", False), ("pallas", True)])
def test_fused_grpo_path_equals_the_unfused_one(backend, interpret):
    """kernels.fused computes the same loss, metrics and update as log-probs + algos."""
    tx = optax.sgd(1.0)
    params, batch = _batch()
    algo = _algo(kl_coef=0.05, entropy_coef=0.01, clip_eps_high=0.28, dual_clip=3.0, tis="token")
    hp = Hyper.from_config(algo, 0.9)
    results = []
    for kernels in (KERNELS, KernelConfig(logprob_backend=backend, fused=True, interpret=interpret)):
        step = make_train_step(MODEL, algo, kernels, tx)
        state, metrics = step(_state(params, tx), batch, hp)
        results.append((state.params, metrics))
    (p0, m0), (p1, m1) = results
    for k in ("loss", "policy_loss", "kl_ref", "entropy", "clip_frac/low", "clip_frac/high", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)
    chex.assert_trees_all_close(p1, p0, atol=1e-5, rtol=1e-5)
