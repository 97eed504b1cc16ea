"""Buffer policies (rollout.buffer): which of a step's sampled groups the trainer trains on."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from r1jax.config import ConfigError, load_config
from r1jax.sampling.params import Sample
from r1jax.train.buffer import BUFFER_POLICIES, select_groups
from r1jax.train.config import ExperimentConfig, load_experiment
from r1jax.train.rollout import Episodes
from test_async_rl import _config, run_trainer


def _episodes(rewards, versions=None) -> Episodes:
    rewards = np.asarray(rewards, np.float32)
    p, g = rewards.shape
    samples = [[Sample(np.array([i, j], np.int32), np.array([-0.5, -0.25], np.float32), "stop") for j in range(g)]
               for i in range(p)]
    return Episodes(prompts=[np.array([i], np.int32) for i in range(p)], samples=samples,
                    versions=list(versions or [0] * p), texts=[f"{i}.{j}" for i in range(p) for j in range(g)],
                    rewards=rewards, components={"math_accuracy": rewards.copy()}, correct=rewards > 0.5, failures=0,
                    domains=[f"d{i}" for i in range(p)], token_versions=[[np.array([v, v], np.int32)] * g
                                                                         for v in versions or [0] * p])


def test_fifo_keeps_the_first_groups_in_drawn_order():
    assert select_groups("fifo", _episodes(np.zeros((5, 2))), 3, step=0) == [0, 1, 2]


def test_informative_puts_groups_whose_rewards_differ_first():
    rewards = [[1, 1], [0, 1], [0, 0], [1, 0], [0.5, 0.5]]
    assert select_groups("informative", _episodes(rewards), 3, step=0) == [1, 3, 0]


def test_freshest_puts_the_newest_policys_groups_first():
    assert select_groups("freshest", _episodes(np.zeros((4, 2)), versions=[3, 5, 4, 5]), 3, step=0) == [1, 3, 2]


def test_a_policy_answering_wrongly_is_reported_by_name():
    BUFFER_POLICIES.register("repeats_test", lambda ep, n, *, step: [0] * n, overwrite=True)
    with pytest.raises(ValueError, match=r"rollout.buffer.policy 'repeats_test' must return 2 distinct group indices "
                                         r"in \[0, 4\), got \[0, 0\]"):
        select_groups("repeats_test", _episodes(np.zeros((4, 2))), 2, step=0)


def test_selecting_groups_keeps_every_field_of_those_groups_together():
    ep = _episodes([[0, 1], [1, 1], [0, 0]], versions=[7, 8, 9])
    sub = ep.select([2, 0])
    assert [int(p[0]) for p in sub.prompts] == [2, 0] and sub.versions == [9, 7] and sub.domains == ["d2", "d0"]
    assert sub.texts == ["2.0", "2.1", "0.0", "0.1"]
    np.testing.assert_array_equal(sub.rewards, [[0, 0], [0, 1]])
    np.testing.assert_array_equal(sub.components["math_accuracy"], [[0, 0], [0, 1]])
    assert [[int(s.token_ids[0]) for s in grp] for grp in sub.samples] == [[2, 2], [0, 0]]
    assert [int(grp[0][0]) for grp in sub.token_versions] == [9, 7]


def test_an_unknown_policy_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.buffer\.policy.*'nope'"):
        load_config(ExperimentConfig, _config(tmp_path), ["rollout.buffer.policy=nope"])


POLICY_FILE = '''
import json, os
from r1jax.train.buffer import register_buffer_policy

@register_buffer_policy("lowest_reward_test")
def lowest_reward(episodes, n, *, step):
    """The n groups of lowest mean reward; records what it was offered and what it chose."""
    means = episodes.rewards.mean(axis=1)
    chosen = sorted(range(len(means)), key=lambda i: (means[i], i))[:n]
    with open(os.environ["R1JAX_TEST_POLICY_LOG"], "a") as f:
        f.write(json.dumps({"step": step, "groups": len(episodes.samples),
                            "chosen_reward": float(means[chosen].mean())}) + "\\n")
    return chosen
'''


def test_a_policy_registered_by_run_imports_chooses_each_steps_groups(tmp_path, monkeypatch):
    (tmp_path / "my_policy.py").write_text(POLICY_FILE)
    log = tmp_path / "policy.jsonl"
    monkeypatch.setenv("R1JAX_TEST_POLICY_LOG", str(log))
    cfg = load_experiment(_config(tmp_path), [f"run.imports=[{tmp_path / 'my_policy.py'}]", "run.steps=3",
                                              "checkpoint.every=0", "rollout.async.max_staleness=0",
                                              "rollout.buffer.policy=lowest_reward_test",
                                              "rollout.buffer.extra_prompts=2"])
    records = run_trainer(cfg)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["step"], c["groups"]) for c in calls] == [(0, 6), (1, 6), (2, 6)]   # 4 + 2 drawn per step
    for r, c in zip(records, calls):
        assert r["buffer/dropped"] == 2
        assert r["reward/total"] == pytest.approx(c["chosen_reward"], abs=1e-6)  # trained on the chosen groups
