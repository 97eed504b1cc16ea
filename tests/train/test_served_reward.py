"""Reward components scored by the rollout servers (``reward.components[i].served_model``, the ``Score``
RPC): a short remote-mode RL run over real loopback gRPC with a real tiny reward model, the failure
path (0, counted, logged, as a failing local reward model), and the config errors before any work."""

import logging
import pathlib

import jax
import numpy as np
import pytest
import yaml

from r1jax.config import ConfigError, load_config
from r1jax.data.tokenizer import build_char_tokenizer
from r1jax.train.config import ExperimentConfig

TINY_BASE = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"
CHARS = "0123456789+-*=(), abcdefghijklmnopqrstuvwxyz."
SERVED = {"name": "helpfulness", "weight": 0.5, "served_model": "helpful"}


def _config(tmp_path: pathlib.Path, servers=(), component=SERVED, **rollout) -> ExperimentConfig:
    tok_dir = tmp_path / "tok"
    if not tok_dir.exists():
        build_char_tokenizer(CHARS).save(tok_dir)
    cfg = {
        "run": {"name": "t", "out_dir": str(tmp_path / "runs"), "steps": 2, "seed": 3, "progress": False,
                "tensorboard": False},
        "model": {"tokenizer": str(tok_dir),
                  "config": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                             "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 128}},
        "data": {"task": "arithmetic", "difficulty": 1, "template": "plain", "num_train": 64},
        "reward": {"num_workers": 0, "components": [{"name": "math_accuracy"}, {"name": "format_strict"}, component]},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12,
                    **({"mode": "remote", "servers": list(servers)} if servers else {}), **rollout},
        "algo": {"num_minibatches": 1},
        "eval": {"num_prompts": 4},
        "checkpoint": {"every": 0},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(ExperimentConfig, path)


def _engine():
    from r1jax.models import ModelConfig, init_params
    from r1jax.rollout.jax_engine import JaxEngine

    model = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=128)
    return JaxEngine(init_params(model, jax.random.PRNGKey(99)), model)


def test_a_served_reward_component_is_scored_by_the_rollout_server_in_a_remote_run(tmp_path, rm_dir):
    from r1jax.rollout.reward_models import ServedRewardModel, load_served_reward_models
    from r1jax.rollout.server import make_server
    from r1jax.train.loop import Trainer

    real = load_served_reward_models({"helpful": str(rm_dir)})["helpful"]
    calls = []

    def recorded(prompts, responses):
        scores = real.scores(prompts, responses)
        calls.append((list(prompts), list(responses), np.asarray(scores)))
        return scores

    engine = _engine()
    server, port = make_server(engine, reward_models={"helpful": ServedRewardModel("helpful", str(rm_dir), recorded,
                                                                                   real.tokens)})
    try:
        trainer = Trainer(_config(tmp_path, [f"127.0.0.1:{port}"]))
        try:
            records = trainer.run()
        finally:
            trainer.close()
    finally:
        server.stop(None)
        engine.close()
    assert len(calls) == 2 and all(len(p) == len(r) == 16 for p, r, _ in calls)  # every sample, once a step
    for rec, (_, _, scores) in zip(records, calls):
        assert rec["reward/failures"] == 0
        assert rec["reward/helpfulness"] == pytest.approx(float(scores.mean()), abs=1e-6)  # the server's scores
        assert rec["reward/helpfulness"] != 0.0
    lines = (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"reward/helpfulness"' in line for line in lines)


def test_a_failing_score_call_scores_zero_counted_and_logged(tmp_path, rm_dir, caplog):
    """A server error (INTERNAL: the model raised) and an unreachable server each score 0 on the
    component's samples, counted as errors and logged, the path of a failing local reward model."""
    from r1jax.rewards import RewardScorer
    from r1jax.rollout.client import RolloutClient
    from r1jax.rollout.reward_models import ServedRewardModel
    from r1jax.rollout.server import make_server
    from r1jax.train.components import served_reward_model_fn

    def broken(prompts, responses):
        raise RuntimeError("device out of memory")

    cfg = _config(tmp_path, ["127.0.0.1:1"])
    engine = _engine()
    server, port = make_server(engine, reward_models={"helpful": ServedRewardModel("helpful", "-", broken,
                                                                                   lambda p, r: 0)})
    try:
        for addr in (f"127.0.0.1:{port}", "127.0.0.1:1"):  # port 1: nothing listens
            caplog.clear()
            with RolloutClient(addr, retries=0, timeout=20) as client:
                scorer = RewardScorer(cfg.reward, models={"helpfulness": served_reward_model_fn(client, "helpful")})
                out = scorer.score(["1+1="] * 3, ["2", "3", "x"], ["2"] * 3)
            np.testing.assert_array_equal(out.components["helpfulness"], [0.0, 0.0, 0.0])
            assert out.num_errors["helpfulness"] == 3 and out.failed["helpfulness"].all()
            assert out.num_errors["math_accuracy"] == out.num_errors["format_strict"] == 0  # the rest scored
            np.testing.assert_array_equal(out.total, out.components["math_accuracy"] + out.components["format_strict"])
            failed = [m for m in caplog.messages if "reward model 'helpfulness' failed on 3 samples, scored 0" in m]
            assert len(failed) == 1, caplog.messages
            assert ("device out of memory" if addr.endswith(str(port)) else "UNAVAILABLE") in failed[0]
    finally:
        server.stop(None)
        engine.close()


def test_served_reward_components_refuse_bad_configs_before_any_work(tmp_path):
    from r1jax.rollout.server import make_server
    from r1jax.train.components import reward_models, score_client

    with pytest.raises(ConfigError, match=r"^reward\.components\[2\]\.served_model: 'helpful' is scored by the rollout "
                                          r"servers' Score RPC: it needs rollout\.mode: remote"):
        _config(tmp_path)
    with pytest.raises(ConfigError, match=r"^reward\.components\[2\]\.served_model: set either model .* not both"):
        _config(tmp_path, ["127.0.0.1:1"], component={**SERVED, "model": str(TINY_BASE)})
    with pytest.raises(ConfigError, match=r"^reward\.components\[1\]\.served_model: 'format_strict' is a rule reward"):
        load_config(ExperimentConfig, _rule_served(tmp_path))
    engine = _engine()
    server, port = make_server(engine)  # serves no reward model
    try:
        cfg = _config(tmp_path, [f"127.0.0.1:{port}"])
        client = score_client(cfg)
        with pytest.raises(ConfigError, match=r"^reward\.components\[2\]\.served_model: the rollout server serves no "
                                              r"reward model named 'helpful' \(it serves none\)"):
            reward_models(cfg, client)
        client.close()
    finally:
        server.stop(None)
        engine.close()
    assert not (tmp_path / "runs").exists()


def _rule_served(tmp_path: pathlib.Path) -> pathlib.Path:
    _config(tmp_path, ["127.0.0.1:1"])
    path = tmp_path / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["reward"]["components"][1]["served_model"] = "helpful"
    path.write_text(yaml.safe_dump(data))
    return path
