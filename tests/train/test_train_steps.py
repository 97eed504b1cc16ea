"""The pure updates: exact micro-batching, skipped non-finite updates, traced numbers, vmap over
hyper-parameters, PPO's critic, SFT, the fused path, and every algorithm variant against its formula."""

import functools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.config import ConfigError, from_dict
from r1jax.models import ModelConfig, init_params, init_value_head
from r1jax.train.config import MICROBATCH_TOKENS, AlgoConfig, KernelConfig, OptimConfig, microbatch_token_budget
from r1jax.train.state import Hyper, init_state, make_optimizer
from r1jax.train.steps import (Rollout, SFTBatch, make_rl_update, make_sft_update, microbatch_count,
                               policy_logprobs)

MODEL = ModelConfig(architecture="qwen2", vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=64)
KERNELS = KernelConfig(logprob_backend="reference")
P, G, T, PROMPT = 2, 4, 12, 3
N = P * G
MAX_NEW = T - PROMPT


@jax.jit
def _logp(params, tokens, attn):
    return policy_logprobs(params, MODEL, KERNELS, tokens, attn, jnp.float32(1.0))


@functools.lru_cache(maxsize=None)
def _rollout(seed=0, *, sampler_noise=0.0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, MODEL.vocab_size, (N, T)).astype(np.int32)
    lengths = rng.integers(PROMPT + 2, T + 1, N)
    attn = np.arange(T)[None] < lengths[:, None]
    loss_mask = attn[:, 1:] & (np.arange(1, T)[None] >= PROMPT)
    params = init_params(MODEL, jax.random.PRNGKey(seed))
    logp = np.asarray(_logp(params, jnp.asarray(tokens), jnp.asarray(attn)))
    sampler = logp + sampler_noise * rng.standard_normal(logp.shape).astype(np.float32)
    rewards = rng.integers(0, 3, (P, G)).astype(np.float32)
    rewards[0] = [0.0, 1.0, 2.0, 1.0]  # no group of equal rewards in group 0
    return params, Rollout(tokens=jnp.asarray(tokens), attention_mask=jnp.asarray(attn),
                           loss_mask=jnp.asarray(loss_mask), sampler_logp=jnp.asarray(sampler),
                           rewards=jnp.asarray(rewards), lengths=jnp.asarray(loss_mask.sum(1).reshape(P, G), jnp.float32))


def _algo(**kw):
    return from_dict(AlgoConfig, kw)


def _state(params, tx, algo, critic_tx=None):
    critic = None
    if critic_tx is not None:
        critic = {**jax.tree.map(jnp.copy, params), **init_value_head(MODEL, jax.random.PRNGKey(7))}
    return init_state(jax.tree.map(jnp.copy, params), tx, jax.random.PRNGKey(0), reference=algo.uses_reference,
                      critic_params=critic, critic_tx=critic_tx)


def _run(algo, rollout, params, tx=None, kernels=KERNELS, hp=None):
    tx = tx or optax.sgd(1.0)
    update = make_rl_update(MODEL, algo, kernels, tx, max_new_tokens=MAX_NEW)
    return update(_state(params, tx, algo), rollout, hp or Hyper.from_config(algo))


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_microbatching_is_exact(mode):
    """One update with 1 or 4 micro-batches gives the same loss, gradient norm and parameters (plain SGD,
    so the parameter change is the gradient itself; 2 micro-batches run in tests/train/test_packing.py)."""
    params, rollout = _rollout()
    results = []
    for split in ({"num_microbatches": 1}, {"num_microbatches": 4}, {"microbatch_tokens": 2 * T}):  # the last: 4 too
        state, metrics = _run(_algo(loss_agg=mode, kl_coef=0.1, entropy_coef=0.01, **split), rollout, params)
        results.append((state.params, metrics))
    for p, mets in results[1:]:
        chex.assert_trees_all_close(p, results[0][0], atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(mets["loss"], results[0][1]["loss"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mets["grad_norm"], results[0][1]["grad_norm"], rtol=1e-4)
    assert float(results[0][1]["grad_norm"]) > 0


def test_microbatch_count_keeps_micro_batches_within_the_token_budget():
    assert microbatch_count(64, 72) == 1 and microbatch_count(64, 72, at_least=4) == 4
    assert microbatch_count(64, 72, max_tokens=2048) == 4      # 16 rows × 72 = 1152 tokens; 2 would be 2304
    assert microbatch_count(128, 136, max_tokens=2048) == 16   # 8 rows × 136 = 1088
    assert microbatch_count(64, 72, at_least=8, max_tokens=2048) == 8  # never fewer than asked
    assert microbatch_count(6, 1000, max_tokens=100) == 6      # a row over budget: one row each
    assert microbatch_count(12, 10, at_least=4, max_tokens=25) == 12  # multiples of at_least only: 4 -> 12


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (scans, conds, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def test_the_token_budget_splits_the_update_into_micro_batches():
    """The compiled update accumulates over the micro-batches the budget asks for (a scan of that length)."""
    params, rollout = _rollout()
    lengths = []
    for budget, want in ((None, None), (2 * T, 4), (T, 8)):  # (the layer scan has length 2)
        algo = _algo(microbatch_tokens=budget)
        tx = optax.sgd(1.0)
        update = make_rl_update(MODEL, algo, KERNELS, tx, max_new_tokens=MAX_NEW, jit=False)
        jaxpr = jax.make_jaxpr(update)(_state(params, tx, algo), rollout, Hyper.from_config(algo))
        found = {eqn.params["length"] for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == "scan"}
        lengths.append((want, found))
    for want, found in lengths:
        if want is not None:
            assert want in found, (want, found)
    assert not ({4, 8} & lengths[0][1])  # no budget: no micro-batch scan of those lengths


def test_the_default_token_budget_is_the_cpu_cache_budget_on_cpu_only():
    """``microbatch_tokens: 0`` (the default) bounds micro-batches on CPU and leaves accelerators at
    exactly ``num_microbatches`` (a 1024-token bound split an H200 update into one-row micro-batches)."""
    assert AlgoConfig().microbatch_tokens == 0
    assert microbatch_token_budget(0, "cpu") == MICROBATCH_TOKENS
    assert microbatch_token_budget(0, "gpu") is None and microbatch_token_budget(0, "tpu") is None
    assert microbatch_token_budget(512, "gpu") == 512 and microbatch_token_budget(None, "cpu") is None
    with pytest.raises(ConfigError, match="microbatch_tokens"):
        from_dict(AlgoConfig, {"microbatch_tokens": -1})


def _matmul_rows(update, state, rollout, hp) -> set[int]:
    """The leading (row) sizes of every batched matmul operand ``[rows, tokens, features]`` in ``update``."""
    return {v.aval.shape[0] for eqn in _equations(jax.make_jaxpr(update)(state, rollout, hp).jaxpr)
            if eqn.primitive.name == "dot_general" for v in eqn.invars if v.aval.ndim >= 3}


@pytest.mark.parametrize("num_epochs", [1, 2])  # 2: the old-policy forward runs too
def test_forwards_without_gradient_run_in_micro_batches(num_epochs):
    """With micro-batches, the reference (and old-policy) forwards run on the micro-batch's rows too,
    never on all N rows at once (their activations stay in cache, as the gradient's: faster on CPU)."""
    params, rollout = _rollout()
    found = {}
    for budget in (None, 2 * T):  # None: one micro-batch, the control that the test sees N-row matmuls
        algo = _algo(kl_coef=0.1, num_epochs=num_epochs, microbatch_tokens=budget)
        tx = optax.sgd(1.0)
        update = make_rl_update(MODEL, algo, KERNELS, tx, max_new_tokens=MAX_NEW, jit=False)
        found[budget] = _matmul_rows(update, _state(params, tx, algo), rollout, Hyper.from_config(algo))
    assert max(found[None]) == N
    assert max(found[2 * T]) == N // 4, found


def test_non_finite_loss_skips_the_update():
    params, rollout = _rollout()
    bad = rollout._replace(rewards=rollout.rewards.at[0, 0].set(jnp.nan))
    algo = _algo()
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-2}))
    update = make_rl_update(MODEL, algo, KERNELS, tx, max_new_tokens=MAX_NEW)
    state = _state(params, tx, algo)
    expected = jax.tree.map(np.asarray, state.params)
    state, metrics = update(state, bad, Hyper.from_config(algo))
    assert float(metrics["skipped"]) == 1.0 and int(state.skipped) == 1 and int(state.skipped_in_a_row) == 1
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), expected)
    state, metrics = update(state, rollout, Hyper.from_config(algo))  # a finite batch updates as usual
    assert float(metrics["skipped"]) == 0.0 and int(state.skipped) == 1 and int(state.skipped_in_a_row) == 0
    assert not np.allclose(np.asarray(state.params["embed"]), expected["embed"])


def test_a_non_finite_update_with_finite_gradients_is_skipped():
    """An infinite learning rate gives finite loss and gradients but non-finite new parameters: skipped."""
    params, rollout = _rollout()
    algo = _algo()
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-2}))
    state0 = _state(params, tx, algo)
    expected = jax.tree.map(np.asarray, state0.params)
    hp = Hyper.from_config(algo, lr_scale=float("inf"))
    state, metrics = make_rl_update(MODEL, algo, KERNELS, tx, max_new_tokens=MAX_NEW)(state0, rollout, hp)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["skipped"]) == 1.0
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), expected)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.opt_state))


def test_every_number_is_traced_no_retrace():
    """Changing every field of Hyper between updates never retraces the update."""
    params, rollout = _rollout(sampler_noise=0.05)
    algo = _algo(name="ppo", advantage="gae", tis="token", dual_clip=3.0, overlong_buffer=4, entropy_coef=0.01)
    tx = optax.adam(1e-3)
    update_fn = chex.assert_max_traces(make_rl_update(MODEL, algo, KERNELS, tx, tx, max_new_tokens=MAX_NEW, jit=False),
                                       n=1)
    update = jax.jit(update_fn)
    critic = {**jax.tree.map(jnp.copy, params), **init_value_head(MODEL, jax.random.PRNGKey(7))}
    state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.PRNGKey(0), reference=True,
                       critic_params=critic, critic_tx=tx)
    base = Hyper.from_config(algo)
    for i, name in enumerate(base.as_dict()):
        hp = base.replace(**{name: base.as_dict()[name] * 0.5 + 0.01 * (i + 1)})
        state, metrics = update(state, rollout, hp)
        assert np.isfinite(float(metrics["loss"])), name


def test_vmap_over_gae_lambda_and_eps_equals_separate_updates():
    params, rollout = _rollout()
    algo = _algo(name="ppo", advantage="gae", loss_agg="token_mean", whiten_advantages=False)
    tx = optax.sgd(0.1)
    fn = make_rl_update(MODEL, algo, KERNELS, tx, tx, max_new_tokens=MAX_NEW, jit=False)
    critic = {**jax.tree.map(jnp.copy, params), **init_value_head(MODEL, jax.random.PRNGKey(7))}
    state = init_state(params, tx, jax.random.PRNGKey(0), reference=True, critic_params=critic, critic_tx=tx)
    base = Hyper.from_config(algo)
    lams, eps = jnp.array([0.0, 0.95, 1.0]), jnp.array([0.1, 0.2, 0.3])
    hps = base.replace(gae_lambda=lams, eps_low=eps, eps_high=eps)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 3), state)
    axes = Hyper(**{k: (0 if k in ("gae_lambda", "eps_low", "eps_high") else None) for k in base.as_dict()})
    vstate, vmetrics = jax.jit(jax.vmap(fn, in_axes=(0, None, axes)))(stacked, rollout, hps)
    for i in range(3):
        one, m = jax.jit(fn)(state, rollout, base.replace(gae_lambda=lams[i], eps_low=eps[i], eps_high=eps[i]))
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], vstate.params), one.params, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(vmetrics["value_loss"][i], m["value_loss"], rtol=1e-5)
    assert not np.allclose(vmetrics["value_loss"][0], vmetrics["value_loss"][2])


def test_ppo_update_trains_policy_and_critic():
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 1e-2}))
    params, rollout = _rollout()
    algo = _algo(name="ppo", advantage="gae", loss_agg="token_mean", num_microbatches=2)
    state0 = _state(params, tx, algo, tx)
    before_critic = np.asarray(state0.critic_params["value_head"]["kernel"])
    before_policy = np.asarray(state0.params["embed"])
    state, metrics = make_rl_update(MODEL, algo, KERNELS, tx, tx, max_new_tokens=MAX_NEW)(
        state0, rollout, Hyper.from_config(algo))
    assert np.isfinite(float(metrics["value_loss"])) and float(metrics["value_loss"]) > 0
    assert not np.allclose(np.asarray(state.critic_params["value_head"]["kernel"]), before_critic)
    assert not np.allclose(np.asarray(state.params["embed"]), before_policy)


def test_reference_is_refreshed_inside_the_update_every_n_steps():
    params, rollout = _rollout()
    algo = _algo(ref_update_every=2, kl_coef=0.1)
    tx = optax.sgd(0.5)
    update = make_rl_update(MODEL, algo, KERNELS, tx, max_new_tokens=MAX_NEW)
    state = _state(params, tx, algo)
    ref0 = np.asarray(state.ref_params["embed"])
    state, _ = update(state, rollout, Hyper.from_config(algo))
    assert int(state.step) == 1 and np.array_equal(np.asarray(state.ref_params["embed"]), ref0)
    state, _ = update(state, rollout, Hyper.from_config(algo))
    assert int(state.step) == 2
    np.testing.assert_array_equal(np.asarray(state.ref_params["embed"]), np.asarray(state.params["embed"]))


def test_no_reference_model_when_kl_is_off():
    algo = _algo(kl_coef=0.0)
    params, rollout = _rollout()
    state, metrics = _run(algo, rollout, params)
    assert state.ref_params == {} and float(metrics["kl_ref"]) == 0.0


def test_sft_update_reduces_the_loss():
    tx = make_optimizer(from_dict(OptimConfig, {"lr": 3e-3}))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(np.tile(rng.integers(0, MODEL.vocab_size, (1, T)), (N, 1)), jnp.int32)
    batch = SFTBatch(tokens, jnp.ones((N, T), bool), jnp.ones((N, T - 1), bool))
    state = init_state(init_params(MODEL, jax.random.PRNGKey(1)), tx, jax.random.PRNGKey(0))
    update = make_sft_update(MODEL, KERNELS, tx, num_minibatches=2)
    hp = Hyper.from_config(_algo())
    losses = []
    for _ in range(20):
        state, m = update(state, batch, hp)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0] and int(state.step) == 20


@pytest.mark.parametrize("backend,interpret", [("chunked", False), ("pallas", True)])
def test_fused_grpo_path_equals_the_unfused_one(backend, interpret):
    """kernels.fused computes the same loss, metrics and update as log-probs + algos."""
    params, rollout = _rollout(sampler_noise=0.05)
    algo = _algo(kl_coef=0.05, entropy_coef=0.01, eps_high=0.28, dual_clip=3.0, tis="token", num_epochs=2)
    results = [_run(algo, rollout, params, kernels=k) for k in
               (KERNELS, KernelConfig(logprob_backend=backend, fused=True, interpret=interpret))]
    (s0, m0), (s1, m1) = results
    for k in ("loss", "policy_loss", "kl_ref", "entropy", "clip_frac/low", "clip_frac/high", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)
    chex.assert_trees_all_close(s1.params, s0.params, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Every variant at the update level: two passes over one fixed batch (the second is off-policy), plain SGD,
# against the variant's formula written out here, and different from plain GRPO.

LR = 0.05
BETA = 0.05


def _group_norm(r, std=True):
    centred = r - r.mean(1, keepdims=True)
    return centred / (r.std(1, keepdims=True) + 1e-6) if std else centred


def _reference_loss(variant, logp, old, ref, rollout):
    mask = rollout.loss_mask.astype(jnp.float32)
    r = rollout.rewards
    ratio = jnp.exp(logp - old)
    def clip_obj(ratio, adv, lo=0.2, hi=0.2):
        return jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - lo, 1 + hi) * adv)
    k3 = jnp.exp(ref - logp) - (ref - logp) - 1
    seq_mean = lambda per: jnp.mean(jnp.sum(per * mask, 1) / mask.sum(1))  # noqa: E731
    tokens = lambda a: jnp.broadcast_to(a.reshape(-1, 1), mask.shape)  # noqa: E731
    if variant == "grpo":
        return seq_mean(-clip_obj(ratio, tokens(_group_norm(r))) + BETA * k3)
    if variant == "drgrpo":
        return jnp.sum((-clip_obj(ratio, tokens(_group_norm(r, std=False))) + BETA * k3) * mask) / (N * MAX_NEW)
    if variant == "rloo":
        return seq_mean(-clip_obj(ratio, tokens(G / (G - 1) * _group_norm(r, std=False))) + BETA * k3)
    if variant == "dapo":
        over = jnp.clip((rollout.lengths - (MAX_NEW - 4)) / 4, 0, 1)  # buffer 4: -1 at the limit
        shaped = r - over
        keep = jnp.repeat((shaped.std(1) > 0).reshape(-1, 1), G, 0).reshape(N, 1)
        adv = tokens(_group_norm(shaped))
        per = -clip_obj(ratio, adv, 0.2, 0.28) * keep
        return jnp.sum(per * mask) / jnp.sum(mask * keep)
    if variant == "gspo":
        s = jnp.exp(jnp.sum((logp - old) * mask, 1, keepdims=True) / mask.sum(1, keepdims=True))
        token_ratio = jax.lax.stop_gradient(s) * jnp.exp(logp - jax.lax.stop_gradient(logp))
        return seq_mean(-clip_obj(token_ratio, tokens(_group_norm(r)), 3e-4, 4e-4) + BETA * k3)
    if variant == "cispo":
        w = jax.lax.stop_gradient(jnp.clip(ratio, 1 - 1.0, 1 + 0.01))
        return seq_mean(-w * tokens(_group_norm(r)) * logp + BETA * k3)
    if variant == "tis":
        w = jnp.minimum(jnp.exp(old - rollout.sampler_logp), 2.0)
        return seq_mean(-clip_obj(ratio, tokens(_group_norm(r))) * w + BETA * k3)
    if variant == "reinforce_pp":
        k1 = -(ref - old)
        last = (jnp.cumsum(mask[:, ::-1], 1)[:, ::-1] == 1) & (mask > 0)
        token_r = jnp.where(last, r.reshape(-1, 1), 0.0) - BETA * k1 * mask
        returns = jnp.cumsum(token_r[:, ::-1], 1)[:, ::-1] * mask
        mean = jnp.sum(returns) / mask.sum()
        std = jnp.sqrt(jnp.sum(((returns - mean) * mask) ** 2) / mask.sum())
        adv = (returns - mean) / (std + 1e-8)
        return seq_mean(-clip_obj(ratio, adv))
    raise ValueError(variant)


VARIANTS = {
    "grpo": {},
    "drgrpo": {"std_scaling": "none", "loss_agg": "seq_mean_token_sum_norm"},
    "rloo": {"advantage": "rloo"},
    "dapo": {"eps_high": 0.28, "loss_agg": "token_mean", "dynamic_sampling": True, "overlong_buffer": 4,
             "kl_coef": 0.0},
    "gspo": {"policy_loss": "gspo", "eps_low": 3e-4, "eps_high": 4e-4},
    "cispo": {"policy_loss": "cispo", "eps_low": 1.0, "eps_high": 0.01},
    "tis": {"tis": "token"},
    "reinforce_pp": {"advantage": "reinforce_pp"},
}


@functools.partial(jax.jit, static_argnums=0)
def _reference_update(variant, params, rollout):
    """Two SGD steps of the written-out loss; the behaviour / reference log-probs are the initial policy's."""
    old = jax.lax.stop_gradient(_logp(params, rollout.tokens, rollout.attention_mask))
    for _ in range(2):
        grads = jax.grad(lambda p: _reference_loss(variant, _logp(p, rollout.tokens, rollout.attention_mask),
                                                   old, old, rollout))(params)
        params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return params


@functools.lru_cache(maxsize=None)
def _variant_run(variant):
    params, rollout = _rollout(seed=3, sampler_noise=0.3)
    rollout = rollout._replace(rewards=rollout.rewards.at[1].set(1.0))  # group 1 all equal (DAPO drops it)
    state, _ = _run(_algo(**{"num_epochs": 2, "kl_coef": BETA, **VARIANTS[variant]}), rollout, params, tx=optax.sgd(LR))
    return state.params, _reference_update(variant, params, rollout)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_equals_its_formula_and_differs_from_grpo(variant):
    got, expected = _variant_run(variant)
    chex.assert_trees_all_close(got, expected, atol=2e-5, rtol=2e-4)
    if variant != "grpo":
        grpo, _ = _variant_run("grpo")
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(grpo)))
        assert diff > 1e-4, f"{variant} trains exactly like GRPO on this batch"
