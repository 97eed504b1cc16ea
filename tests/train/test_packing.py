"""Sequence packing (``algo.packing``): the trainer reads the same log-probs, and the update takes the same
step, whether the rollout's sequences are padded one per row, packed several to a row, or split into
micro-batches; and those log-probs are the sampler's own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1jax.config import ConfigError, from_dict
from r1jax.models import ModelConfig, init_params, init_value_head
from r1jax.rollout.types import SamplingParams
from r1jax.sampling.params import Sample
from r1jax.sampling.sampler import Sampler
from r1jax.train.config import AlgoConfig, KernelConfig
from r1jax.train.rollout import assemble_rollout, packed_rows_bucket
from r1jax.train.state import Hyper, init_state
from r1jax.train.steps import make_rl_update, policy_logprobs

MODEL = ModelConfig(architecture="qwen2", vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=64)
KERNELS = KernelConfig(logprob_backend="reference")
PARAMS = init_params(MODEL, jax.random.PRNGKey(3))
P, G, MAX_NEW, PADDED, PACKED = 4, 2, 10, 24, 40
STOP = 5  # a stop token, so completion lengths vary


@jax.jit
def _logp(params, tokens, attn, segment_ids):
    return policy_logprobs(params, MODEL, KERNELS, tokens, attn, jnp.float32(1.0), segment_ids=segment_ids)


def _sampled_rollout(seed: int):
    """P prompts of 2-6 tokens, G samples each from the real sampler, assembled padded and packed."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(6, MODEL.vocab_size, int(rng.integers(2, 7))).astype(np.int32) for _ in range(P)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, stop_token_ids=(STOP,), n=G, seed=seed)
    samples = Sampler(MODEL, max_batch_rows=P * G).generate(PARAMS, prompts, sampling)
    rewards = rng.standard_normal((P, G)).astype(np.float32)
    return assemble_rollout(prompts, samples, rewards, pad_id=0, length=PADDED, pack_length=PACKED)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16))
def test_logprobs_are_the_same_padded_packed_or_microbatched_and_equal_the_samplers(seed):
    """★ The trainer's log-probs of a sampled batch agree to 1e-6 whether the rows are padded, packed (several
    sequences to a row, segment ids) or split into 1/2/4 micro-batches, and equal the sampler's processed
    log-probs on every completion token."""
    r = _sampled_rollout(seed)
    mask = np.asarray(r.loss_mask)
    assert mask.sum() > 0 and len(set(np.asarray(r.packed.row_of_seq))) < P * G  # several sequences share a row
    padded = np.asarray(_logp(PARAMS, r.tokens, r.attention_mask, None))
    np.testing.assert_allclose(padded[mask], np.asarray(r.sampler_logp)[mask], atol=1e-6, rtol=0)
    for m in (1, 2, 4):
        rows = np.split(np.arange(P * G), m)
        split = np.concatenate([np.asarray(_logp(PARAMS, r.tokens[i], r.attention_mask[i], None)) for i in rows])
        np.testing.assert_allclose(split[mask], padded[mask], atol=1e-6, rtol=0)
    pk = r.packed
    packed = np.asarray(_logp(PARAMS, pk.tokens, pk.attention_mask, pk.segment_ids))
    unpacked = np.append(packed.reshape(-1), 0.0)[pk.scatter]  # packed targets back to their padded places
    np.testing.assert_allclose(unpacked[mask], padded[mask], atol=1e-6, rtol=0)
    # every completion token was placed: the padded -> packed -> padded round trip is the identity on the mask
    tokens_back = np.append(np.asarray(pk.tokens)[:, 1:].reshape(-1), -1)[pk.scatter]
    np.testing.assert_array_equal(tokens_back[mask], np.asarray(r.tokens)[:, 1:][mask])


def _update(algo_kw, rollout, *, critic=False):
    algo = from_dict(AlgoConfig, algo_kw)
    tx = optax.sgd(0.5)
    update = make_rl_update(MODEL, algo, KERNELS, tx, tx if critic else None, max_new_tokens=MAX_NEW)
    critic_params = jax.tree.map(jnp.copy, {**PARAMS, **init_value_head(MODEL, jax.random.PRNGKey(9))}) if critic else None
    state = init_state(jax.tree.map(jnp.copy, PARAMS), tx, jax.random.PRNGKey(0), reference=algo.uses_reference,
                       critic_params=critic_params, critic_tx=tx if critic else None)
    return update(state, rollout, Hyper.from_config(algo))


@pytest.mark.parametrize("algo_kw,critic", [
    ({"loss_agg": "seq_mean_token_mean", "kl_coef": 0.1, "num_microbatches": 2}, False),
    ({"loss_agg": "seq_mean_token_sum_norm", "advantage": "drgrpo", "std_scaling": "none"}, False),
    ({"name": "ppo", "advantage": "gae", "loss_agg": "token_mean", "gae_lambda": 0.9, "kl_coef": 0.05}, True),
], ids=["grpo-seq-mean-2-micro", "drgrpo-sum-norm", "ppo-gae"])
def test_packed_update_equals_padded_update(algo_kw, critic):
    """One optimizer step from the packed layout equals the one from padded rows: same loss and parameters
    (GRPO's per-sequence means, Dr.GRPO's constant normaliser, and PPO's GAE over the critic's values, which
    needs whole sequences, all survive packing)."""
    r = _sampled_rollout(11)
    padded = _update(algo_kw, r._replace(packed=None), critic=critic)
    assert_same_step(_update({**algo_kw, "packing": True}, r, critic=critic), padded, critic=critic)


def assert_same_step(got, expected, *, critic: bool = False, metrics=("loss", "grad_norm")):
    """``(state, metrics)`` of two updates from the same rollout: the same metrics and parameters, and a step
    that moved the parameters."""
    (state, m), (ref_state, ref_m) = got, expected
    assert float(ref_m["grad_norm"]) > 1e-3
    for k in metrics + (("value_loss",) if critic else ()):
        np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, atol=1e-6, err_msg=k)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref_state.params, PARAMS)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the step did something
    trees = [(state.params, ref_state.params)] + ([(state.critic_params, ref_state.critic_params)] if critic else [])
    for tree, ref_tree in trees:
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref_tree)):
            np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)


def test_sequence_level_losses_refuse_packing():
    with pytest.raises(ConfigError, match="algo.packing: policy_loss 'gspo' is sequence-level"):
        from_dict(AlgoConfig, {"policy_loss": "gspo", "packing": True})
    with pytest.raises(ConfigError, match="algo.packing: tis 'sequence'"):
        from_dict(AlgoConfig, {"tis": "sequence", "packing": True})
    update = make_rl_update(MODEL, from_dict(AlgoConfig, {"policy_loss": "gspo"}), KERNELS, optax.sgd(0.1),
                            max_new_tokens=MAX_NEW, jit=False)
    r = _sampled_rollout(1)
    state = init_state(PARAMS, optax.sgd(0.1), jax.random.PRNGKey(0), reference=True)
    with pytest.raises(ValueError, match="'gspo' is sequence-level"):
        update(state, r, Hyper.from_config(from_dict(AlgoConfig, {"policy_loss": "gspo"})))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=64, max_size=64))
def test_packed_row_counts_come_from_a_few_buckets(lengths):
    """Whatever the sampled lengths, 64 sequences pack into 8, 16, 32 or 64 rows (multiples of 8):
    a run compiles its update for at most four packed shapes, and every sequence is placed."""
    prompts = [np.array([7, 8, 9], np.int32)] * 16
    samples = [[Sample(np.full(n, 11, np.int32), np.zeros(n, np.float32), "length") for n in lengths[i:i + 4]]
               for i in range(0, 64, 4)]
    r = assemble_rollout(prompts, samples, np.zeros((16, 4), np.float32), pad_id=0, length=64, pack_length=64)
    rows = r.packed.tokens.shape[0]
    assert rows in (8, 16, 32, 64)
    assert int(r.packed.segment_ids.astype(bool).sum()) == sum(3 + n for n in lengths)  # every token placed
    assert rows == packed_rows_bucket(len(set(r.packed.row_of_seq.tolist())), 64, 8)  # the rows first-fit used


def test_packed_rows_bucket():
    assert [packed_rows_bucket(r, 64, 8) for r in (1, 8, 9, 17, 33, 64)] == [8, 8, 16, 32, 64, 64]
    assert packed_rows_bucket(10, 12, 8) == 16  # one row per sequence would be 16 rows (12 rounded up)
    assert packed_rows_bucket(3, 6, 2) == 4
