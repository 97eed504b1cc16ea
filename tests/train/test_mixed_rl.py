"""A mixed-domain RL run (data.mixture) whose general prompts are scored by a reward model in the
loop: per-domain metrics in metrics.jsonl and TensorBoard, the RM component only on its domain and
only in its last steps, and the bad inputs of reward models in the loop."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import yaml

from r1jax.config import ConfigError, load_config
from r1jax.train.config import ExperimentConfig

TINY_BASE = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"


def _config(tmp_path: pathlib.Path, rm_dir: pathlib.Path | None, **reward) -> pathlib.Path:
    components = [{"name": "domain_verifier", "weight": 1.0}, {"name": "format_strict", "weight": 1.0}]
    if rm_dir is not None:
        components.append({"name": "helpfulness", "weight": 0.5, "model": str(rm_dir), "domains": ["general"],
                           "last_n_steps": 1, **reward})
    cfg = {
        "run": {"name": "mix", "out_dir": str(tmp_path / "runs"), "steps": 2, "seed": 1, "progress": False,
                "tensorboard": True},
        "model": {"path": str(TINY_BASE)},
        "data": {"task": "mixture", "template": "plain", "num_train": 64, "num_eval": 4,
                 "mixture": [{"task": "arithmetic", "weight": 0.5, "domain": "math", "difficulty": 1},
                             {"task": "logic", "weight": 0.25, "difficulty": 3},
                             {"task": "general", "weight": 0.25, "verifier": "none"}]},
        "reward": {"num_workers": 0, "components": components},
        "rollout": {"prompts_per_step": 8, "group_size": 2, "max_new_tokens": 16},
        "algo": {"num_minibatches": 1},
        "eval": {"num_prompts": 6},
        "checkpoint": {"every": 0},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_mixed_run_scores_general_prompts_with_the_reward_model_and_logs_per_domain_metrics(tmp_path, rm_dir):
    from r1jax.train.loop import Trainer

    cfg = load_config(ExperimentConfig, _config(tmp_path, rm_dir))
    trainer = Trainer(cfg)
    try:
        records = trainer.run()
        final = trainer.evaluate()
    finally:
        trainer.close()
    first, last = records
    assert "reward/helpfulness" not in first            # not active (not even run) before the last step
    assert last["reward/helpfulness"] != 0.0            # active, on the general prompts
    for rec in records:
        assert {"accuracy_by_domain/math", "accuracy_by_domain/logic", "reward_by_domain/math",
                "reward_by_domain/general"} <= set(rec)
        assert "accuracy_by_domain/general" not in rec  # verifier none: nothing checks it
    assert "eval/reward_by_domain/logic" in final
    lines = [json.loads(x) for x in (tmp_path / "runs" / "mix" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in x if "by_domain" in k) for x in lines] == \
        [sorted(k for k in r if "by_domain" in k) for r in records]
    events = b"".join(f.read_bytes() for f in (tmp_path / "runs" / "mix" / "tb").glob("events.out.tfevents.*"))
    assert b"accuracy_by_domain/math" in events and b"reward_by_domain/general" in events  # the scalars' tags


def test_reward_models_in_the_loop_refuse_bad_input_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"reward\.components\[2\]\.model: 'helpfulness' is an external reward"):
        _load_without_model(tmp_path)
    from r1jax.train.components import reward_models

    cfg = load_config(ExperimentConfig, _config(tmp_path, TINY_BASE))  # a policy directory: no value head
    with pytest.raises(ConfigError, match=r"reward\.components\[2\]\.model: RM checkpoint .*has no value head file"):
        reward_models(cfg)
    assert not (tmp_path / "runs").exists()


def _load_without_model(tmp_path):
    path = _config(tmp_path, TINY_BASE)
    data = yaml.safe_load(path.read_text())
    del data["reward"]["components"][2]["model"]
    path.write_text(yaml.safe_dump(data))
    return load_config(ExperimentConfig, path)
