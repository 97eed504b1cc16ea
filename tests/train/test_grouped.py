"""Shared prompts (``algo.share_prompts``): the forwards run each prompt once for its group of
completions, which attend to its keys and values. The hidden states, the log-probs and the update's
step are those of the padded rows, one sequence each; mini- and micro-batches hold whole groups."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1jax.config import from_dict
from r1jax.models import forward, forward_grouped
from r1jax.rollout.types import SamplingParams
from r1jax.sampling.params import Sample
from r1jax.sampling.sampler import Sampler
from r1jax.train.config import AlgoConfig, KernelConfig
from r1jax.train.rollout import assemble_rollout, group_rollout, group_split
from r1jax.train.state import Hyper, init_state
from r1jax.train.steps import _over_minibatches, _Rows, make_rl_update, policy_logprobs
from test_packing import (KERNELS, MAX_NEW, MODEL, PADDED, PARAMS, STOP,  # the same model and update
                          _update, assert_same_step)

P, G, LP = 4, 4, 8
METRICS = ("loss", "grad_norm", "kl_ref", "entropy")


def _sampled_rollout(seed: int, split: int = 1):
    """P prompts of 2-6 tokens, G samples each from the real sampler: padded rows and the grouped layout."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(6, MODEL.vocab_size, int(rng.integers(2, 7))).astype(np.int32) for _ in range(P)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, stop_token_ids=(STOP,), n=G, seed=seed)
    samples = Sampler(MODEL, max_batch_rows=P * G).generate(PARAMS, prompts, sampling)
    rewards = rng.standard_normal((P, G)).astype(np.float32)
    return assemble_rollout(prompts, samples, rewards, pad_id=0, length=PADDED, group_shape=(LP, MAX_NEW, split))


@jax.jit
def _logp(params, tokens, attn, prompt_tokens=None, prompt_mask=None):
    prompt = None if prompt_tokens is None else (prompt_tokens, prompt_mask)
    return policy_logprobs(params, MODEL, KERNELS, tokens, attn, jnp.float32(1.0), prompt=prompt)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), split=st.sampled_from([1, 2]))
def test_grouped_forward_and_logprobs_equal_the_padded_rows_and_the_samplers(seed, split):
    """★ Each prompt run once (or once per half group, ``split=2``), its completions attending to it: every
    real token's hidden state equals the padded row's to 1e-5, and the log-probs, moved back to the padded
    targets, equal the padded rows' and the sampler's on every completion token."""
    r = _sampled_rollout(seed, split)
    gr, mask = r.grouped, np.asarray(r.loss_mask)
    assert gr.prompt_tokens.shape == (P * split, LP) and gr.tokens.shape == (P * G, MAX_NEW)
    hp, hc = jax.jit(forward_grouped, static_argnums=1)(PARAMS, MODEL, gr.prompt_tokens, gr.tokens,
                                                        prompt_mask=gr.prompt_mask, attention_mask=gr.attention_mask)
    padded = np.asarray(jax.jit(forward, static_argnums=1)(PARAMS, MODEL, r.tokens, attention_mask=r.attention_mask))
    for b in range(P * G):
        n_p = int(gr.prompt_mask[b // (G // split)].sum())
        n_c = int(gr.attention_mask[b].sum())
        np.testing.assert_allclose(np.asarray(hc[b, :n_c]), padded[b, n_p:n_p + n_c], atol=1e-5)
        np.testing.assert_allclose(np.asarray(hp[b // (G // split), LP - n_p:]), padded[b, :n_p], atol=1e-5)
    grouped = np.asarray(_logp(PARAMS, gr.tokens, gr.attention_mask, gr.prompt_tokens, gr.prompt_mask))
    back = np.append(grouped.reshape(-1), 0.0)[gr.scatter]  # grouped targets at their padded places
    np.testing.assert_allclose(back[mask], np.asarray(_logp(PARAMS, r.tokens, r.attention_mask))[mask], atol=2e-6)
    np.testing.assert_allclose(back[mask], np.asarray(r.sampler_logp)[mask], atol=2e-6)
    # every completion token was placed: padded -> grouped -> padded is the identity on the completion targets
    tokens_back = np.append(np.asarray(gr.tokens).reshape(-1), -1)[gr.scatter]
    np.testing.assert_array_equal(tokens_back[mask], np.asarray(r.tokens)[:, 1:][mask])
    there = np.append(np.asarray(r.tokens)[:, 1:].reshape(-1), -1)[gr.gather]
    np.testing.assert_array_equal(there[np.asarray(gr.attention_mask)], np.asarray(gr.tokens)[np.asarray(gr.attention_mask)])


@pytest.mark.parametrize("algo_kw,split,critic", [
    ({"loss_agg": "seq_mean_token_mean", "kl_coef": 0.1, "num_microbatches": 2, "entropy_coef": 0.01}, 1, False),
    ({"loss_agg": "seq_mean_token_sum_norm", "advantage": "drgrpo", "std_scaling": "none", "num_microbatches": 4}, 2, False),
    ({"policy_loss": "gspo", "tis": "sequence", "kl_coef": 0.05}, 1, False),
    ({"name": "ppo", "advantage": "gae", "loss_agg": "token_mean", "gae_lambda": 0.9, "kl_coef": 0.05}, 1, True),
], ids=["grpo-2-micro", "drgrpo-half-groups-4-micro", "gspo-sequence-tis", "ppo-gae"])
def test_grouped_update_equals_padded_update(algo_kw, split, critic):
    """One optimizer step from the grouped layout equals the one from padded rows: same loss, gradient norm
    and parameters, with micro-batches of whole groups (or half groups), for a sequence-level loss (grouped
    rows hold one sequence each) and for PPO, whose critic reads the grouped rows too."""
    r = _sampled_rollout(11, split)
    assert_same_step(_update(algo_kw, r, critic=critic), _update(algo_kw, r._replace(grouped=None), critic=critic),
                     critic=critic, metrics=METRICS)


@pytest.mark.parametrize("fused,scan_layers", [(True, False), (False, True)], ids=["fused-kernel", "scanned-layers"])
def test_grouped_update_equals_padded_with_the_fused_kernel_or_scanned_layers(fused, scan_layers):
    """The fused GRPO kernel (``kernels.fused``) reads the grouped rows' hidden states and targets; with
    the layers in one ``lax.scan`` the prompts' keys and values are collected and read per layer too."""
    algo = from_dict(AlgoConfig, {"kl_coef": 0.1, "num_microbatches": 2})
    kernels = KernelConfig(logprob_backend="chunked", fused=True) if fused else KERNELS
    model = dataclasses.replace(MODEL, scan_layers=scan_layers)
    update = make_rl_update(model, algo, kernels, optax.sgd(0.5), max_new_tokens=MAX_NEW)
    r = _sampled_rollout(5)
    out = {}
    for name, rollout in (("padded", r._replace(grouped=None)), ("grouped", r)):
        state = init_state(jax.tree.map(jnp.copy, PARAMS), optax.sgd(0.5), jax.random.PRNGKey(0), reference=True)
        out[name] = update(state, rollout, Hyper.from_config(algo))
    assert_same_step(out["grouped"], out["padded"], metrics=METRICS)


def test_minibatches_of_grouped_rows_hold_whole_groups():
    """With grouped rows, each shuffled mini-batch takes whole prompts with their own rows: row b of a
    mini-batch continues the mini-batch's prompt b // G, in every pass."""
    units, group, length = 8, 3, 4
    prompt_ids = np.arange(units, dtype=np.int32)
    tokens = np.repeat(prompt_ids, group)[:, None] * np.ones((1, length), np.int32)  # row b carries its prompt's id
    ones = jnp.ones((units * group, length), bool)
    zeros = jnp.zeros((units * group, length), jnp.float32)
    rows = _Rows(jnp.asarray(tokens), ones, None, ones, zeros, jnp.ones(units * group), zeros, zeros, None, None,
                 None, None, jnp.asarray(prompt_ids)[:, None] * jnp.ones((1, 2), jnp.int32), jnp.ones((units, 2), bool))
    state = init_state({"w": jnp.zeros(())}, optax.sgd(0.0), jax.random.PRNGKey(0), reference=False)

    def step_fn(state, mb):
        expected = jnp.repeat(mb.prompt_tokens[:, 0], mb.tokens.shape[0] // mb.prompt_tokens.shape[0])
        return state, {"mismatch": jnp.sum(mb.tokens[:, 0] != expected).astype(jnp.float32),
                       "first": mb.prompt_tokens[0, 0].astype(jnp.float32), "skipped": jnp.zeros(())}

    _, metrics = _over_minibatches(state, rows, step_fn, num_epochs=3, num_minibatches=4)
    assert float(metrics["optimizer_steps"]) == 12
    assert float(metrics["mismatch"]) == 0.0
    assert float(metrics["first"]) != 0.0  # shuffled: not every mini-batch starts at prompt 0


def test_group_rollout_places_every_completion_and_names_what_does_not_fit():
    prompts = [np.array([7, 8, 9], np.int32), np.array([7], np.int32)]
    completions = [[[11, 12], [13]], [[14, 15, 16], [17, 18]]]
    g = group_rollout(prompts, completions, pad_id=0, padded_length=6, prompt_length=4, completion_length=3)
    np.testing.assert_array_equal(g.prompt_tokens, [[0, 7, 8, 9], [0, 0, 0, 7]])  # left-padded
    np.testing.assert_array_equal(g.tokens, [[11, 12, 0], [13, 0, 0], [14, 15, 16], [17, 18, 0]])
    # padded row 0 is [7 8 9 11 12 0]: its completion targets (predicting 11, 12) are padded targets 2 and 3
    np.testing.assert_array_equal(g.gather[0], [2, 3, 4 * 5])
    np.testing.assert_array_equal(g.scatter[2], [2 * 3 + 0, 2 * 3 + 1, 2 * 3 + 2, 4 * 3, 4 * 3])
    halves = group_rollout(prompts, completions, pad_id=0, padded_length=6, prompt_length=4, completion_length=3,
                           split=2)
    np.testing.assert_array_equal(halves.prompt_tokens[:, -1], [9, 9, 7, 7])
    with pytest.raises(ValueError, match="completion 2 has 3 tokens, more than length=2"):
        group_rollout(prompts, completions, pad_id=0, padded_length=6, prompt_length=4, completion_length=2)
    with pytest.raises(ValueError, match="prompt 0 has 3 tokens, more than length=2"):
        group_rollout(prompts, completions, pad_id=0, padded_length=6, prompt_length=2, completion_length=3)
    with pytest.raises(ValueError, match="split=3 does not divide the group size 2"):
        group_rollout(prompts, completions, pad_id=0, padded_length=6, prompt_length=4, completion_length=3, split=3)


def test_group_split_takes_the_fewest_prompt_copies_that_fit_a_microbatch():
    assert group_split(8, 8, 64, 1024) == 1           # 8 + 8 x 64 = 520 tokens
    assert group_split(16, 8, 128, 1024) == 4         # 8 + 4 x 128 = 520; halves would be 1032
    assert group_split(16, 8, 128, None) == 1         # no token bound (accelerators)
    assert group_split(4, 8, 600, 1024) is None       # one completion per unit: nothing shared
    assert group_split(1, 8, 64, None) is None


def test_grouped_rows_that_do_not_split_into_whole_groups_are_refused():
    with pytest.raises(ValueError, match="4 grouped prompts do not split into algo.num_minibatches x micro-batches = 1 x 3"):
        _update({"num_microbatches": 3}, _sampled_rollout(3))


def test_a_rollout_with_both_layouts_is_refused():
    r = _sampled_rollout(2)
    prompts = [np.array([7, 8], np.int32)] * P
    samples = [[Sample(np.array([9, 10], np.int32), np.zeros(2, np.float32), "length")] * G] * P
    packed = assemble_rollout(prompts, samples, np.zeros((P, G), np.float32), pad_id=0, length=PADDED,
                              pack_length=PADDED).packed
    with pytest.raises(ValueError, match="one layout, packed or grouped"):
        _update({}, r._replace(packed=packed))
