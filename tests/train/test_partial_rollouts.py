"""Partial rollouts (rollout.async.partial_tokens): samples generated segment by segment, each segment by
its own policy, checked against the trainer's log-probs under each policy; the producer's segment schedule
and its checkpoint of a batch interrupted between segments."""

from __future__ import annotations

import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models import ModelConfig, forward, init_params, lm_head_weight
from r1jax.rollout.types import SamplingParams
from r1jax.sampling.params import Sample
from r1jax.train.async_rollout import InProgress, Produced, Producer
from r1jax.train.rollout import EmbeddedSampler, Episodes, Partial, Segments, generate_in_segments
from r1jax_kernels import token_logprobs
from test_async_rl import Examples

CONFIG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_position_embeddings=64)
PROMPTS = [np.array([1, 5, 7], np.int32), np.array([3, 9, 11, 4, 2], np.int32)]


@pytest.fixture(scope="module")
def policies():
    return [init_params(CONFIG, jax.random.PRNGKey(seed)) for seed in (0, 1, 2)]


@jax.jit
def _logp(params, tokens):
    hidden = forward(params, CONFIG, tokens)
    return token_logprobs(hidden, lm_head_weight(params, CONFIG), jnp.roll(tokens, -1, axis=1), temperature=1.0)


def trainer_logprobs(params, prompt, completion):
    """The trainer's log-prob of each completion token given everything before it."""
    seq = np.concatenate([prompt, completion]).astype(np.int32)
    lp = np.asarray(_logp(params, jnp.asarray(seq[None])))[0]
    return lp[len(prompt) - 1:len(seq) - 1]


def _generate(policies, *, resume=None, calls=None, max_new=10, segment=4, stop=()):
    sampler = EmbeddedSampler(CONFIG)

    def policy(j, partial):
        if calls is not None:
            calls.append((j, Partial.from_json(json.loads(json.dumps(partial.to_json())))))
        return policies[j], 10 + j  # trainer version 10 + j samples segment j

    sampling = SamplingParams(temperature=1.0, max_new_tokens=max_new, n=3, seed=7, stop_token_ids=tuple(stop))
    return generate_in_segments(sampler, PROMPTS, sampling, 0, Segments(segment, policy, resume))


def test_each_segment_is_sampled_by_its_policy_and_its_log_probs_are_that_policys(policies):
    samples, _, token_versions = _generate(policies)
    for prompt, grp, versions in zip(PROMPTS, samples, token_versions):
        for s, v in zip(grp, versions):
            assert len(s.token_ids) == 10 and s.finish_reason == "length"   # no stop tokens: the whole budget
            np.testing.assert_array_equal(v, [10] * 4 + [11] * 4 + [12] * 2)
            for j, params in enumerate(policies):  # tokens of segment j: log-probs under policy j, not the others
                seg = slice(4 * j, min(4 * j + 4, 10))
                want = trainer_logprobs(params, prompt, s.token_ids)[seg]
                np.testing.assert_allclose(s.logprobs[seg], want, atol=2e-5)
                other = trainer_logprobs(policies[(j + 1) % 3], prompt, s.token_ids)[seg]
                assert np.abs(s.logprobs[seg] - other).max() > 1e-2


def test_a_sample_that_stopped_is_not_continued(policies):
    """Every token id 0..31 is a stop token but the commonest: samples stop at different segments."""
    calls = []
    samples, _, token_versions = _generate(policies, calls=calls, stop=range(1, 32), max_new=10, segment=1)
    for grp, versions in zip(samples, token_versions):
        for s, v in zip(grp, versions):
            assert s.finish_reason == "stop" or len(s.token_ids) == 10
            assert (s.token_ids[:-1] == 0).all()                          # only the last token stopped it
            np.testing.assert_array_equal(v, 10 + np.arange(len(v)))       # one token per segment
    # segment j runs only while some sample is still going
    assert [j for j, _ in calls] == list(range(max(len(s.token_ids) for grp in samples for s in grp)))


def test_a_batch_resumed_from_its_partial_samples_ends_as_the_uninterrupted_one(policies):
    calls = []
    full, versions, tv = _generate(policies, calls=calls)
    interrupted = calls[2][1]               # what a checkpoint holds before segment 2
    assert interrupted.segments == 2
    resumed, versions2, tv2 = _generate(policies, resume=interrupted)
    assert resumed == full and versions2 == versions
    for a, b in zip(tv, tv2):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------- the producer's schedule


def _segmented(segments: int, log: list, lock: threading.Lock):
    """A sample function that asks for every segment's policy and records what it got."""

    def sample(examples, step, policy, resume):
        assert examples == [step]  # a resumed interrupted batch draws its own prompts again
        got = [] if resume is None else list(resume.policy_versions)
        for j in range(0 if resume is None else resume.segments, segments):
            partial = Partial(j, [], [], [], [], got, list(got))
            params, version = policy(j, partial)
            with lock:
                log.append((step, j, params, version))
            got.append(version)
        return lambda: _episodes(step, got)

    return sample


def _episodes(step: int, versions: list[int]) -> Episodes:
    """A recognisable one-sample batch carrying the versions its segments were sampled with."""
    sample = Sample(np.array([step], np.int32), np.zeros(1, np.float32), "length")
    return Episodes(prompts=[np.array([step], np.int32)], samples=[[sample]], versions=list(versions), texts=["x"],
                    rewards=np.zeros((1, 1), np.float32), components={}, correct=None, failures=0)


def _drive(k, segments, steps, *, start=0, buffered=(), in_progress=None, checkpoint_at=None):
    log, lock = [], threading.Lock()
    producer = Producer(_segmented(segments, log, lock), Examples(start + len(buffered)),
                        params=start, version=start, end_step=steps, max_staleness=k, segments=segments,
                        buffered=buffered, in_progress=in_progress)
    batches, saved = [], None
    try:
        for step in range(start, steps):
            batches.append(producer.get(step))
            if step + 1 == checkpoint_at:  # before publishing: the producer waits for this version, mid-batch
                saved = json.loads(json.dumps(producer.checkpoint(step + 1)))
            producer.publish(step + 1, step + 1)
    finally:
        producer.close()
    return batches, log, saved


@pytest.mark.parametrize("k", [2, 3])
def test_segment_j_of_step_u_uses_the_policy_of_update_u_minus_k_plus_j_capped_at_u_minus_1(k):
    segments, steps = 3, 8
    batches, log, _ = _drive(k, segments, steps)
    for step, j, params, version in log:
        assert params == version == max(0, min(step - k + j, step - 1))
    assert [b.episodes.versions for b in batches] == [[max(0, min(u - k + j, u - 1)) for j in range(segments)]
                                                      for u in range(steps)]
    assert [b.version for b in batches] == [max(0, u - k) for u in range(steps)]


def test_a_producer_checkpointed_between_segments_resumes_to_the_same_batches():
    k, segments, steps, at = 2, 3, 8, 4
    full, _, saved = _drive(k, segments, steps, checkpoint_at=at)
    # at version 4 the producer waits for it to sample batch 5's segment 1 (batch 4, versions 2, 3, 3, is
    # buffered whole): the checkpoint holds batch 4 and batch 5's first segment, sampled with version 3
    assert [b["step"] for b in saved["buffer"]] == [4]
    in_progress = InProgress.from_json(saved["in_progress"])
    assert (in_progress.step, in_progress.partial.segments, in_progress.cursor) == (5, 1, {"drawn": 5})
    buffered = tuple(Produced.from_json(b) for b in saved["buffer"])
    resumed, log, _ = _drive(k, segments, steps, start=at, buffered=buffered, in_progress=in_progress)
    assert [b.step for b in resumed] == list(range(at, steps))
    assert [b.episodes.versions for b in resumed] == [b.episodes.versions for b in full[at:]]
    assert all(version >= at for *_, version in log)   # nothing older than the checkpoint is sampled again
