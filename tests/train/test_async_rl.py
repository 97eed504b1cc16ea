"""Asynchronous RL (rollout.async.max_staleness): the producer's schedule and bounds, the buffer's
round trip, the config checks, and exact resume after SIGKILLs at random points of an async run."""

from __future__ import annotations

import json
import pathlib
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml

from procutil import kill_on_log_line
from r1jax.config import ConfigError, load_config
from r1jax.data.tokenizer import build_char_tokenizer
from r1jax.sampling.params import Sample
from r1jax.train.async_rollout import Produced, Producer, episodes_from_json, episodes_to_json
from r1jax.train.config import ExperimentConfig
from r1jax.train.rollout import Episodes

CHARS = "0123456789+-*=(), abcdefghijklmnopqrstuvwxyz."


def _episodes(tag: int) -> Episodes:
    """A small batch whose contents identify ``tag`` (2 prompts × 2 samples)."""
    rng = np.random.default_rng(tag)
    samples = [[Sample(rng.integers(0, 50, 3 + j), rng.standard_normal(3 + j).astype(np.float32),
                       "stop" if j else "length") for j in range(2)] for _ in range(2)]
    return Episodes(prompts=[np.array([tag, 1], np.int32), np.array([2, tag, 3], np.int32)], samples=samples,
                    versions=[tag, tag], texts=["a", "b", "c", "d"],
                    rewards=rng.standard_normal((2, 2)).astype(np.float32),
                    components={"math_accuracy": np.array([[1, 0], [0, 1]], np.float32)},
                    correct=np.array([[True, False], [False, True]]), failures=tag % 2)


def test_episodes_round_trip_through_json_exactly():
    ep = _episodes(7)
    back = episodes_from_json(json.loads(json.dumps(episodes_to_json(ep))))
    assert back.samples == ep.samples  # token ids and float32 log-probs bit for bit
    for a, b in zip(back.prompts, ep.prompts):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.rewards, ep.rewards)
    np.testing.assert_array_equal(back.components["math_accuracy"], ep.components["math_accuracy"])
    np.testing.assert_array_equal(back.correct, ep.correct)
    assert (back.versions, back.texts, back.failures) == (ep.versions, ep.texts, ep.failures)
    assert back.metrics() == ep.metrics()


class Examples:
    """A prompt iterator: step i's examples are [i]; its state is the count drawn."""

    def __init__(self, start: int = 0):
        self.i = start

    def __next__(self):
        self.i += 1
        return [self.i - 1]

    def state(self):
        return {"drawn": self.i}


def _run_producer(k: int, steps: int, *, start: int = 0, buffered=()):
    """Drives a Producer like the trainer does (params are the version number); returns the batches
    and, for each, the newest version the trainer had published when it was sampled."""
    published = {"newest": start}
    seen: list[tuple[int, int, int, int]] = []  # (step, version sampled with, params used, newest published)
    lock = threading.Lock()

    def sample(examples, step, policy, resume):
        params, version = policy(0, None)
        with lock:
            seen.append((step, version, params, published["newest"]))
        assert examples == [step] and resume is None
        return lambda: _episodes(step)

    producer = Producer(sample, Examples(start + len(buffered)), params=start, version=start, end_step=steps,
                        max_staleness=k, buffered=buffered)
    batches = []
    try:
        for step in range(start, steps):
            batches.append(producer.get(step))
            with lock:
                published["newest"] = step + 1
            producer.publish(step + 1, step + 1)  # "params" of version step + 1
    finally:
        producer.close()
    return batches, seen


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_producer_samples_step_u_with_the_policy_of_update_u_minus_k_and_never_runs_further_ahead(k):
    steps = 9
    batches, seen = _run_producer(k, steps)
    assert [b.step for b in batches] == list(range(steps))
    assert [b.version for b in batches] == [max(0, u - k) for u in range(steps)]
    for step, version, params, newest in seen:
        assert params == version == max(0, step - k)     # sampled with exactly that policy's params
        assert step - newest <= k                         # at most K versions ahead of the trainer
    assert [b.cursor for b in batches] == [{"drawn": u + 1} for u in range(steps)]
    for b in batches:
        assert b.episodes.samples == _episodes(b.step).samples


def test_a_producer_resumed_with_its_buffer_continues_the_same_schedule():
    k, steps = 2, 8
    full, _ = _run_producer(k, steps)
    buffered = tuple(Produced.from_json(b.to_json()) for b in full[3:3 + k])  # checkpoint at version 3
    resumed, seen = _run_producer(k, steps, start=3, buffered=buffered)
    assert [b.step for b in resumed] == list(range(3, steps))
    assert [b.version for b in resumed] == [b.version for b in full[3:]]
    assert [s for s, *_ in seen] == list(range(3 + k, steps))  # the buffered steps are not sampled again


def test_a_producer_error_reaches_the_trainer():
    def sample(examples, step, policy, resume):
        raise ZeroDivisionError("reward blew up")

    producer = Producer(sample, Examples(), params=0, version=0, end_step=4, max_staleness=1)
    with pytest.raises(RuntimeError, match="rollout producer failed.*reward blew up"):
        producer.get(0)
    producer.close()


def test_the_producer_samples_the_next_batch_while_the_last_one_is_scored():
    next_sampled = threading.Event()

    def sample(examples, step, policy, resume):
        policy(0, None)
        if step == 1:
            next_sampled.set()

        def score():
            # step 0's scoring finishes only once step 1 has been sampled: sampling waits for no scoring
            if step == 0 and not next_sampled.wait(timeout=60):
                raise AssertionError("step 1 was not sampled while step 0 was being scored")
            return _episodes(step)
        return score

    producer = Producer(sample, Examples(), params=0, version=0, end_step=2, max_staleness=1)
    try:
        assert [producer.get(u).episodes.samples for u in (0, 1)] == [_episodes(0).samples, _episodes(1).samples]
    finally:
        producer.close()


def test_a_scoring_error_reaches_the_trainer():
    def sample(examples, step, policy, resume):
        policy(0, None)

        def score():
            raise ZeroDivisionError("reward blew up while scoring")
        return score

    producer = Producer(sample, Examples(), params=0, version=0, end_step=4, max_staleness=1)
    with pytest.raises(RuntimeError, match="rollout producer failed.*reward blew up while scoring"):
        producer.get(0)
    producer.close()


def test_a_checkpoint_holds_the_batches_sampled_but_still_being_scored():
    scoring, release = threading.Event(), threading.Event()

    def sample(examples, step, policy, resume):
        policy(0, None)

        def score():
            if step == 1:  # sampled; its scoring blocks until released
                scoring.set()
                release.wait(timeout=60)
            return _episodes(step)
        return score

    producer = Producer(sample, Examples(), params=0, version=0, end_step=4, max_staleness=1)
    try:
        producer.get(0)
        producer.publish(1, 1)
        assert scoring.wait(timeout=60)
        saved = {}
        t = threading.Thread(target=lambda: saved.update(producer.checkpoint(1)))
        t.start()
        release.set()
        t.join(timeout=60)
        # version 1: step 1 (sampled with version 0) is buffered, scored, with the cursor after its prompts
        assert [b["step"] for b in saved["buffer"]][:1] == [1]
        assert Produced.from_json(saved["buffer"][0]).episodes.samples == _episodes(1).samples
        assert saved["cursor"] == saved["buffer"][-1]["cursor"]
    finally:
        release.set()
        producer.close()


def _config(tmp_path: pathlib.Path, **rollout) -> pathlib.Path:
    tok_dir = tmp_path / "tok"
    if not tok_dir.exists():
        build_char_tokenizer(CHARS).save(tok_dir)
    cfg = {
        "run": {"name": "t", "out_dir": str(tmp_path / "runs"), "steps": 6, "seed": 5, "progress": False,
                "tensorboard": False},
        "model": {"tokenizer": str(tok_dir),
                  "config": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                             "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 128}},
        "data": {"task": "arithmetic", "difficulty": 1, "template": "plain", "num_train": 64},
        "reward": {"num_workers": 0},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12,
                    "async": {"max_staleness": 2}, **rollout},
        "algo": {"num_minibatches": 2, "ref_update_every": 2, "tis": "token"},
        "optim": {"lr": 1e-2},
        "eval": {"num_prompts": 4},
        "checkpoint": {"every": 1, "keep": 2},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_trainer(cfg: ExperimentConfig) -> list[dict]:
    """Trains ``cfg`` in this process to its end; the per-step records."""
    from r1jax.train.loop import Trainer

    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()


def test_async_without_an_importance_correction_is_refused_naming_algo_tis(tmp_path):
    with pytest.raises(ConfigError, match=r"algo\.tis: rollout\.async\.max_staleness=2"):
        load_config(ExperimentConfig, _config(tmp_path), ['algo.tis="off"'])


def test_an_async_run_logs_staleness_and_trains_on_its_scheduled_batches(tmp_path):
    cfg = load_config(ExperimentConfig, _config(tmp_path), ["run.steps=4", "checkpoint.every=0"])
    records = run_trainer(cfg)
    assert [r["staleness"] for r in records] == [0, 1, 2, 2]
    assert [r["weight_version_min"] for r in records] == [0, 0, 0, 1]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["optimizer_steps"] == 2


@pytest.mark.parametrize("k, transport", [(1, "grpc"), (1, "safetensors"), (2, "grpc")])
def test_a_remote_async_run_stages_the_next_policy_and_samples_as_without_staging(tmp_path, monkeypatch, k,
                                                                                   transport):
    """K=1, 2 against a real loopback JAX server: the trainer sends each next policy while the server
    still samples with the last one, the producer's push only commits it, and the run's batches and
    metrics are the same as when every push goes whole."""
    import jax

    from r1jax.models import init_params
    from r1jax.rollout.jax_engine import JaxEngine
    from r1jax.rollout.server import make_server
    from r1jax.train.loop import Trainer
    from r1jax.train.rollout import RemoteSampler

    def run(staging: bool):
        base = load_config(ExperimentConfig, _config(tmp_path), [])
        engine = JaxEngine(init_params(base.model.config, jax.random.PRNGKey(7)), base.model.config)
        server, port = make_server(engine)
        with monkeypatch.context() as m:
            if not staging:
                m.setattr(RemoteSampler, "stage", lambda self, params, key: False)
            cfg = load_config(ExperimentConfig, _config(tmp_path), [
                "run.steps=4", "checkpoint.every=0", "run.name=" + ("staged" if staging else "whole"),
                f"rollout.async.max_staleness={k}", "rollout.mode=remote", f"rollout.servers=['127.0.0.1:{port}']",
                f"rollout.weight_transport={transport}"])
            trainer = Trainer(cfg)
            try:
                records = trainer.run()
                staged = trainer.sampler.staged_pushes
            finally:
                trainer.close()
                server.stop(None)
                engine.close()
        return records, staged, engine.weight_version

    keys = ("staleness", "weight_version_min", "loss", "reward/total", "accuracy")
    staged_records, staged, live = run(staging=True)
    whole_records, none, live_whole = run(staging=False)
    assert [r["staleness"] for r in staged_records] == [[0, 1, 1, 1], [0, 1, 2, 2]][k - 1]
    assert [[r[k] for k in keys] for r in staged_records] == [[r[k] for k in keys] for r in whole_records]
    assert none == 0 and staged >= 1 and live == live_whole  # K=1 pushes versions 1, 2; K=2 version 1


def test_partial_rollouts_without_k_of_2_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.async\.partial_tokens: 4 needs rollout\.async\.max_staleness >= 2"):
        load_config(ExperimentConfig, _config(tmp_path), ["rollout.async.max_staleness=1", "rollout.async.partial_tokens=4"])
    with pytest.raises(ConfigError, match=r"rollout\.async\.partial_tokens: 12 is not below"):
        load_config(ExperimentConfig, _config(tmp_path), ["rollout.async.partial_tokens=12"])


def test_a_partial_rollout_run_logs_each_tokens_staleness(tmp_path):
    cfg = load_config(ExperimentConfig, _config(tmp_path), ["run.steps=4", "checkpoint.every=0",
                                                            "rollout.async.partial_tokens=4"])
    records = run_trainer(cfg)
    assert [r["staleness"] for r in records] == [0, 1, 2, 2]           # the oldest token's policy
    # step 2: segments by versions 0, 1, 1; step 3: 1, 2, 2 (a token is at most K and at least 1 version old)
    for r in records[2:]:
        assert r["partial/resumed_frac"] > 0.5
        assert 1.0 <= r["staleness/token_mean"] < 2.0
    assert all(np.isfinite(r["loss"]) for r in records)


def _train(config: pathlib.Path, kill_on: str | None = None) -> str:
    """Runs ``r1jax train`` to its end (returns its log) or SIGKILLs it when it logs ``kill_on``."""
    cmd = [sys.executable, "-m", "r1jax.cli", "train", str(config)]
    if kill_on is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stderr
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_on_log_line(proc, kill_on)


def _newest_checkpoint(run_dir: pathlib.Path) -> int:
    """The newest checkpoint's step in ``run_dir`` (-1 without one; orbax names each by its step)."""
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=-1)


def _records(run_dir: pathlib.Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


PARTIAL = {"async": {"max_staleness": 2, "partial_tokens": 4}, "buffer": {"policy": "informative", "extra_prompts": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("rollout", [{}, PARTIAL], ids=["whole", "partial+informative"])
def test_an_async_run_sigkilled_at_random_points_resumes_to_the_same_samples_and_metrics(tmp_path, rollout):
    """Two SIGKILLs, each at a point drawn at random (logged in the failure message): while the producer
    has sampled a step ahead of the trainer (its buffer partly full, a batch in flight), between two
    segments of a partial rollout, or just after a checkpoint. The resumed run's metrics equal an
    uninterrupted run's, step for step."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    steps = 6
    logged = _train(_config(tmp_path / "full", **rollout))
    reference = _records(tmp_path / "full" / "runs" / "t")
    assert [r["staleness"] for r in reference] == [0, 1, 2, 2, 2, 2]

    killed = _config(tmp_path / "killed", **rollout)
    points = []
    for _ in range(2):
        # a point the next run logs: it resumes at its newest checkpoint, whose buffer may hold the
        # batches up to start + K (sampled then, not again)
        start = _newest_checkpoint(tmp_path / "killed" / "runs" / "t")
        lines = ([f"sampled step {u} with" for u in range(start + 3, steps)]
                 + [f"checkpoint saved at step {u}" for u in range(max(start, 0) + 1, steps - 1)]
                 + [f"step {u} continues at segment {j} with" for u in range(start + 3, steps) for j in (1, 2)])
        lines = [line for line in lines if line in logged]  # the samples, so the log lines, are the same
        if not lines:
            break
        points.append(rng.choice(lines))
        _train(killed, kill_on=points[-1])
    _train(killed)
    resumed = _records(tmp_path / "killed" / "runs" / "t")
    where = f"killed on {points} (random seed {seed})"
    assert [r["step"] for r in resumed] == list(range(steps)), where
    for a, b in zip(reference, resumed):
        assert a.keys() == b.keys(), where
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-9, err_msg=f"step {a['step']} {k}: {where}")


def test_a_bare_yaml_off_is_the_choice_off(tmp_path):
    """YAML 1.1 reads `tis: off` as False; a field whose choices include "off" takes it as "off"."""
    path = _config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["rollout"]["async"]["max_staleness"] = 0
    path.write_text(yaml.safe_dump(data).replace("tis: token", "tis: off"))
    assert "tis: off" in path.read_text()
    assert load_config(ExperimentConfig, path).algo.tis == "off"
