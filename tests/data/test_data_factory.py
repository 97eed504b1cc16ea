"""DataConfig validation and make_dataset for every built-in task."""

import json

import pytest

from r1jax.config import ConfigError, from_dict
from r1jax.data.factory import DataConfig, make_dataset, register_task, TASKS


def test_synthetic_tasks():
    cfg = from_dict(DataConfig, {"task": "arithmetic", "difficulty": 3, "operations": ["+", "*"], "num_train": 50, "num_eval": 7})
    train, held = make_dataset(cfg), make_dataset(cfg, "eval")
    assert len(train) == 50 and len(held) == 7
    assert all(len(e["prompt"]) == 7 for e in train.examples())  # "ddd+ddd"
    cd = make_dataset(from_dict(DataConfig, {"task": "countdown", "difficulty": 4, "countdown_max_number": 9}))
    assert len(cd[0]["reference"]["numbers"]) == 4 and max(cd[0]["reference"]["numbers"]) <= 9
    hash(cfg)  # static configs are hashable


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="task: 'nope' is not a registered task"):
        from_dict(DataConfig, {"task": "nope"})
    with pytest.raises(ConfigError, match="difficulty: countdown needs at least 2 numbers"):
        from_dict(DataConfig, {"task": "countdown", "difficulty": 1})
    with pytest.raises(ConfigError, match="operations"):
        from_dict(DataConfig, {"operations": ["/"]})
    with pytest.raises(ConfigError, match="train_path: required for task 'jsonl'"):
        from_dict(DataConfig, {"task": "jsonl"})
    with pytest.raises(ConfigError, match="train_path: file not found: /no/such.jsonl"):
        from_dict(DataConfig, {"task": "jsonl", "train_path": "/no/such.jsonl"})
    with pytest.raises(ConfigError, match="fields.answer_format"):
        from_dict(DataConfig, {"fields": {"answer_format": "latex"}})
    with pytest.raises(ConfigError, match="template"):
        from_dict(DataConfig, {"template": "alpaca"})
    with pytest.raises(ConfigError, match="system_prompt: only used with template 'chat'"):
        from_dict(DataConfig, {"system_prompt": "hi"})
    with pytest.raises(ConfigError, match="is not a registered task"):
        make_dataset(DataConfig(task="typo"))  # hand-built configs are checked too


def test_jsonl_task_hash_split_and_eval_file(tmp_path):
    import datasets  # noqa: F401
    rows = [{"problem": f"What is {i}+{i}?", "sol": f"\\boxed{{{2 * i}}}"} for i in range(60)]
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict(
        DataConfig,
        {
            "task": "jsonl",
            "train_path": str(p),
            "heldout_fraction": 0.3,
            "file_task": "math",
            "fields": {"prompt": "problem", "answer": "sol", "answer_format": "boxed"},
        },
    )
    train, held = make_dataset(cfg), make_dataset(cfg, "eval")
    qs_train = {train[i]["prompt"] for i in range(len(train))}
    qs_held = {held[i]["prompt"] for i in range(len(held))}
    assert qs_train.isdisjoint(qs_held) and len(qs_train | qs_held) == 60 and len(qs_held) > 5
    e = held[0]
    i = int(e["prompt"].split()[2].split("+")[0])
    assert e["reference"] == str(2 * i) and e["task"] == "math"

    q = tmp_path / "test.jsonl"
    q.write_text(json.dumps({"problem": "p", "sol": "\\boxed{1}"}) + "\n")
    cfg2 = from_dict(DataConfig, {**{k: v for k, v in cfg.__dict__.items() if k != "fields"}, "eval_path": str(q),
                                  "fields": {"prompt": "problem", "answer": "sol", "answer_format": "boxed"}})
    assert len(make_dataset(cfg2)) == 60 and len(make_dataset(cfg2, "eval")) == 1


def test_register_task():
    class Tiny:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"id": "t/0", "task": "tiny", "prompt": "p", "reference": "r"}

    register_task("tiny_test_task", lambda config, split: Tiny())
    try:
        assert make_dataset(from_dict(DataConfig, {"task": "tiny_test_task"}))[0]["task"] == "tiny"
        with pytest.raises(ValueError, match="already registered"):
            register_task("tiny_test_task", lambda c, s: Tiny())
    finally:
        TASKS.pop("tiny_test_task")


def test_config_round_trip():
    from r1jax.config import to_dict

    cfg = from_dict(DataConfig, {"task": "countdown", "difficulty": 3, "operations": ["+", "-"], "fields": {"prompt": "q"}})
    assert from_dict(DataConfig, to_dict(cfg)) == cfg
    assert from_dict(DataConfig, {}) == DataConfig()
