"""The RL loop end to end on a tiny random model: exact resume after SIGKILL, skipped non-finite
updates, config errors before any work, checkpoints, metrics files."""

import json
import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

from procutil import kill_on_log_line

from r1jax.config import ConfigError, load_config
from r1jax.data.tokenizer import build_char_tokenizer
from r1jax.train.config import ExperimentConfig

CHARS = "0123456789+-*=(), abcdefghijklmnopqrstuvwxyz."


def _config(tmp_path: pathlib.Path, **sections) -> pathlib.Path:
    tok_dir = tmp_path / "tok"
    if not tok_dir.exists():
        build_char_tokenizer(CHARS).save(tok_dir)
    cfg = {
        "run": {"name": "t", "out_dir": str(tmp_path / "runs"), "steps": 4, "seed": 3, "progress": False,
                "tensorboard": True},
        "model": {"tokenizer": str(tok_dir),
                  "config": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                             "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 128}},
        "data": {"task": "arithmetic", "difficulty": 1, "template": "plain", "num_train": 64},
        "reward": {"num_workers": 0},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12},
        "algo": {"num_minibatches": 2, "ref_update_every": 2},
        "optim": {"lr": 1e-2},
        "eval": {"num_prompts": 4},
        "checkpoint": {"every": 1, "keep": 2},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},  # one device (the suite has 8 fake ones)
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: pathlib.Path, *overrides: str, kill_after_steps: int | None = None) -> subprocess.CompletedProcess | None:
    """Runs ``r1jax train``; with ``kill_after_steps``, SIGKILLs it as soon as it logs that checkpoint."""
    cmd = [sys.executable, "-m", "r1jax.cli", "train", str(config), *overrides]
    if kill_after_steps is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_on_log_line(proc, f"checkpoint saved at step {kill_after_steps}")
    return None


def _records(run_dir: pathlib.Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time", None)
        out.append(rec)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [2])
def test_resume_after_sigkill_gives_the_same_metrics(tmp_path, kill_at):
    steps = 5
    full = _config(tmp_path / "full")
    _train(full, f"run.steps={steps}")
    reference = _records(tmp_path / "full" / "runs" / "t")
    assert [r["step"] for r in reference] == list(range(steps))

    killed = _config(tmp_path / "killed")
    _train(killed, f"run.steps={steps}", kill_after_steps=kill_at)
    _train(killed, f"run.steps={steps}")  # resumes from the latest complete checkpoint
    resumed = _records(tmp_path / "killed" / "runs" / "t")
    assert [r["step"] for r in resumed] == list(range(steps)), f"killed after step {kill_at}"
    for a, b in zip(reference, resumed):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-9, err_msg=f"step {a['step']} {k} (killed at {kill_at})")
    # the last good checkpoints survive, older ones are pruned (keep: 2)
    ckpts = sorted(int(p.name) for p in (tmp_path / "killed" / "runs" / "t" / "checkpoints").glob("[0-9]*") if p.name.isdigit())
    assert ckpts == [steps - 1, steps]
    assert list((tmp_path / "killed" / "runs" / "t" / "tb").glob("events.out.tfevents.*"))
    saved = load_config(ExperimentConfig, tmp_path / "killed" / "runs" / "t" / "config.yaml")
    assert saved.run.steps == steps


def test_non_finite_update_is_skipped_logged_and_the_run_continues(tmp_path, caplog):
    """An update whose new parameters would be non-finite (an infinite learning rate, traced: no recompile)
    is skipped and logged; the next step trains as usual."""
    from r1jax.train.loop import Trainer

    cfg = load_config(ExperimentConfig, _config(tmp_path), ["run.steps=3", "run.tensorboard=false",
                                                            "checkpoint.every=0", "algo.num_minibatches=1",
                                                            "algo.entropy_coef=0.01"])  # a gradient even when
    # every group's rewards are equal (zero advantages): the good steps provably move the parameters
    trainer = Trainer(cfg)
    good = trainer.hparams
    params_before = np.asarray(trainer.state.params["embed"]).copy()
    records = []
    with caplog.at_level(logging.WARNING, logger="r1jax.train"):
        for lr_scale in (1.0, float("inf"), 1.0):
            trainer.hparams = good.replace(lr_scale=np.float32(lr_scale))
            records.append(trainer.rl_step()["metrics"])
    assert [r["skipped"] for r in records] == [0.0, 1.0, 0.0]
    assert int(trainer.state.skipped) == 1 and int(trainer.state.step) == 3
    assert any("skipped" in m for m in caplog.messages)
    assert np.isfinite(np.asarray(trainer.state.params["embed"])).all()
    assert not np.allclose(np.asarray(trainer.state.params["embed"]), params_before)
    trainer.close()


def test_the_run_stops_after_k_skipped_updates_in_a_row_with_only_finite_checkpoints(tmp_path):
    from r1jax.train.loop import Trainer, TrainingStopped

    cfg = load_config(ExperimentConfig, _config(tmp_path), ["run.steps=6", "run.tensorboard=false",
                                                            "algo.num_minibatches=1", "run.max_skipped_in_a_row=2"])
    trainer = Trainer(cfg)
    initial = np.asarray(trainer.state.params["embed"]).copy()
    trainer.hparams = trainer.hparams.replace(lr_scale=np.float32(np.inf))
    with pytest.raises(TrainingStopped, match=r"2 optimizer steps in a row .*run\.max_skipped_in_a_row=2"):
        trainer.run()
    assert int(trainer.state.step) == 2 and trainer.checkpointer.all_steps() == [1]  # step 2 stopped before saving
    _, state, _ = trainer.checkpointer.restore_latest(trainer.state)
    np.testing.assert_array_equal(np.asarray(state.params["embed"]), initial)  # the skipped updates left it intact
    trainer.close()


def test_a_loss_registered_from_a_user_file_trains(tmp_path):
    """run.imports loads a file that registers a loss before the config is checked; the run uses it."""
    from r1jax.train.config import load_experiment
    from r1jax.train.loop import Trainer

    from r1jax.rewards import register_reward

    register_reward("test_digit_share", digit_share, description="share of digits (tests)", overwrite=True)
    user = pathlib.Path(__file__).with_name("user_loss.py")
    base = ["run.steps=2", "checkpoint.every=0", "run.tensorboard=false", "algo.num_minibatches=1",
            "reward.components=[{name: test_digit_share, weight: 1.0}]"]  # dense: non-zero advantages
    with pytest.raises(ConfigError, match=r"algo\.policy_loss: 'tripled_clip' is not allowed"):
        load_experiment(_config(tmp_path / "a"), [*base, "algo.policy_loss=tripled_clip"])
    runs = {}
    for name, extra in (("clip", []), ("tripled_clip", [f"run.imports=['{user}']"])):
        cfg = load_experiment(_config(tmp_path / name), [*base, f"algo.policy_loss={name}", *extra])
        trainer = Trainer(cfg)
        runs[name] = trainer.run()
        trainer.close()
    assert len(runs["tripled_clip"]) == 2 and runs["tripled_clip"][1]["skipped"] == 0.0
    # same seed, same first rollout: the registered loss is three times the clipped surrogate
    np.testing.assert_allclose(runs["tripled_clip"][0]["policy_loss"], 3 * runs["clip"][0]["policy_loss"], rtol=1e-5)
    assert runs["tripled_clip"][0]["grad_norm"] != pytest.approx(runs["clip"][0]["grad_norm"])


def test_sampling_between_updates_uses_the_live_params(tmp_path):
    """Embedded sampling is a function call on the train state's params: evaluating between two
    (donating) updates works, and the same params give the same evaluation."""
    from r1jax.train.loop import Trainer

    cfg = load_config(ExperimentConfig, _config(tmp_path), ["run.steps=2", "run.tensorboard=false"])
    trainer = Trainer(cfg)
    trainer.rl_step()
    first = trainer.evaluate()
    assert trainer.evaluate() == first
    trainer.rl_step()
    assert int(trainer.state.step) == 2 and np.isfinite(trainer.evaluate()["eval/reward"])
    trainer.close()


def test_the_trainer_shares_prompts_by_default_and_takes_the_padded_rows_step(tmp_path):
    """``algo.share_prompts`` (default): the trainer's rollouts carry the grouped layout, each prompt held
    once per group, and the first step's metrics are those of the same run on padded rows."""
    from r1jax.train.loop import Trainer

    overrides = ["run.steps=1", "checkpoint.every=0", "run.tensorboard=false"]
    records = {}
    for share in (True, False):
        cfg = load_config(ExperimentConfig, _config(tmp_path / str(share)), [*overrides, f"algo.share_prompts={share}"])
        trainer = Trainer(cfg)
        shape = trainer._group_shape
        records[share] = trainer.run()[0]
        trainer.close()
        assert (shape == (trainer.components.max_length - 12, 12, 1)) if share else shape is None
    for k in ("reward/total", "loss", "kl_ref", "entropy", "grad_norm"):
        np.testing.assert_allclose(records[True][k], records[False][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bad_config_fails_before_any_work(tmp_path):
    path = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'algo\.kl_cof'"):
        load_config(ExperimentConfig, path, ["algo.kl_cof=0.1"])
    with pytest.raises(ConfigError, match=r"rollout\.group_size: 0 is out of range"):
        load_config(ExperimentConfig, path, ["rollout.group_size=0"])
    with pytest.raises(ConfigError, match=r"must divide"):
        load_config(ExperimentConfig, path, ["algo.num_minibatches=3"])
    with pytest.raises(ConfigError, match=r"model\.path: directory not found: /no/such/model"):
        load_config(ExperimentConfig, path, ["model.path=/no/such/model"])
    with pytest.raises(ConfigError, match=r"algo\.advantage: ppo trains a critic"):
        load_config(ExperimentConfig, path, ["algo.name=ppo"])
    # the command line reports it and exits 2 without creating the run directory
    proc = subprocess.run([sys.executable, "-m", "r1jax.cli", "train", str(path), "optim.lr=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "optim.lr: -1.0 is out of range; must be > 0.0" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_ppo_run_and_hf_export(tmp_path):
    from r1jax.models import load_pretrained
    from r1jax.train.loop import Trainer

    cfg = load_config(ExperimentConfig, _config(tmp_path), [
        "run.steps=2", "algo.name=ppo", "algo.advantage=gae", "algo.gae_lambda=1.0", "algo.loss_agg=token_mean",
        "checkpoint.every=0", "checkpoint.export_hf=true", "run.tensorboard=false"])
    trainer = Trainer(cfg)
    records = trainer.run()
    assert len(records) == 2 and all(np.isfinite(r["value_loss"]) for r in records)
    params, model_cfg = load_pretrained(trainer.run_dir / "hf")
    np.testing.assert_array_equal(np.asarray(params["embed"]), np.asarray(trainer.state.params["embed"]))
    assert (trainer.run_dir / "hf" / "tokenizer.json").is_file()


def test_trainer_on_a_data_fsdp_tensor_mesh(tmp_path):
    """On a (2,2,2) mesh of the 8 fake CPU devices the trainer shards parameters by the rules
    table and batches over (data, fsdp), and its first step matches the single-device run."""
    import jax
    from jax.sharding import PartitionSpec as P

    from r1jax.models.sharding import param_shardings
    from r1jax.train.loop import Trainer

    overrides = ["run.steps=1", "checkpoint.every=0", "run.tensorboard=false", "algo.num_minibatches=1"]
    single = Trainer(load_config(ExperimentConfig, _config(tmp_path / "one"), overrides))
    one = single.run()[0]
    cfg = load_config(ExperimentConfig, _config(tmp_path / "mesh"), [*overrides, "mesh.data=2", "mesh.fsdp=2",
                                                                      "mesh.tensor=2"])
    trainer = Trainer(cfg)
    rec = trainer.run()[0]
    assert trainer.mesh is not None and dict(trainer.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    q = trainer.state.params["layers"]["q_proj"]
    expected = param_shardings(trainer.state.params, trainer.mesh)
    assert q.sharding.is_equivalent_to(expected["layers"]["q_proj"], q.ndim)
    assert q.sharding.is_equivalent_to(jax.sharding.NamedSharding(trainer.mesh, P(None, "fsdp", "tensor", None)), q.ndim)
    assert len(q.sharding.device_set) == 8
    for k in ("reward/total", "loss", "kl_ref", "entropy", "grad_norm"):
        np.testing.assert_allclose(rec[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(np.asarray(jax.device_get(q)), np.asarray(single.state.params["layers"]["q_proj"]),
                               atol=1e-5)


def test_eval_of_the_shipped_base_model_pass_and_cons_at_k(tmp_path):
    """`evaluate` on the demo's base model: pass@k and cons@k agree with r1jax.eval computed
    independently from the sampled texts (math-verify as the equivalence)."""
    from r1jax.eval import cons_at_k, mean_pass_at_k
    from r1jax.rewards.math_accuracy import math_answers_equal
    from r1jax.rewards.parsing import extract_final_answer
    from r1jax.train.demo import BASE_MODEL, DEMO_CONFIG
    from r1jax.train.loop import Trainer
    from r1jax.train.rollout import sample_and_score, step_seed

    cfg = load_config(ExperimentConfig, DEMO_CONFIG, [
        f"model.path={BASE_MODEL}", f"run.out_dir={tmp_path}", "reward.num_workers=0", "eval.num_prompts=12",
        "eval.num_samples=4", "eval.ks=[1, 4]", "mesh.data=1", "run.tensorboard=false"])
    trainer = Trainer(cfg)
    out = trainer.evaluate()
    examples = [trainer.components.eval_set[i] for i in range(12)]
    ep = sample_and_score(cfg, trainer.tokenizer, trainer.sampler, trainer.components.scorer, trainer.state.params,
                          examples, n=4, temperature=1.0, seed=step_seed(cfg.run.seed, 0, salt=1), first_index=0, step=0)
    texts = [ep.texts[i * 4:(i + 1) * 4] for i in range(12)]
    answers = [[extract_final_answer("", t) for t in group] for group in texts]
    answers = [[None if a is None else " ".join(a.split()) or None for a in group] for group in answers]
    refs = [e["reference"] for e in examples]
    correct = np.array([[a is not None and math_answers_equal(r, a) for a in group] for group, r in zip(answers, refs)])
    expected = mean_pass_at_k(correct, [1, 4])
    assert out["eval/pass@1"] == pytest.approx(expected[1]) and out["eval/pass@4"] == pytest.approx(expected[4])
    assert out["eval/cons@4"] == pytest.approx(cons_at_k(answers, refs, 4, lambda a, r: math_answers_equal(r, a)))
    assert 0.0 < out["eval/accuracy"] < 1.0  # the noisy base model: some right, some wrong


VARIANTS = {  # every variant's maths is checked against its formula in test_train_steps.py; these run the loop
    "dapo": ["algo.eps_high=0.28", "algo.loss_agg=token_mean", "algo.dynamic_sampling=true",
             "algo.overlong_buffer=4", "algo.kl_coef=0.0"],
    "reinforce_pp": ["algo.advantage=reinforce_pp", "algo.policy_loss=pg", "algo.kl_coef=0.01"],
    "rloo+tis": ["algo.advantage=rloo", "algo.tis=token", "algo.num_epochs=2"],
    "bf16_compute+scanned_layers+attention_blocks+microbatches+drop_finished+decode_window+bf16_cache+parallel_batches": [
        "model.compute_dtype=bfloat16", "model.scan_layers=true", "model.attention_blocks=2", "algo.num_microbatches=2",
        "rollout.drop_finished_every=2", "rollout.decode_window=4", "rollout.cache_dtype=bfloat16",
        "rollout.parallel_batches=2"],
}


def digit_share(prompt, completion, reference):
    """A dense test reward (share of digits in the completion): a random policy gets varied scores,
    so advantages and gradients are non-trivial."""
    del prompt, reference
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_algorithm_variants_train(tmp_path, variant):
    """Every variant of the config runs a step end to end with finite metrics and a real gradient."""
    from r1jax.rewards import register_reward
    from r1jax.train.loop import Trainer

    register_reward("test_digit_share", digit_share, description="share of digits (tests)", overwrite=True)
    cfg = load_config(ExperimentConfig, _config(tmp_path), [
        "run.steps=1", "checkpoint.every=0", "run.tensorboard=false",
        "reward.components=[{name: test_digit_share, weight: 1.0}]", *VARIANTS[variant]])
    trainer = Trainer(cfg)
    assert trainer.model_cfg.compute_dtype == cfg.model.compute_dtype  # None unless the variant sets it
    assert trainer.model_cfg.scan_layers == bool(cfg.model.scan_layers)  # the model's default: unrolled
    assert trainer.model_cfg.attention_blocks == (cfg.model.attention_blocks or 1)  # the model's default: 1
    assert trainer.sampler.sampler.drop_finished_every == cfg.rollout.drop_finished_every
    assert trainer.sampler.sampler.decode_window == cfg.rollout.decode_window
    assert trainer.sampler.sampler.cache_dtype == cfg.rollout.cache_dtype
    assert trainer.sampler.sampler.parallel_batches == cfg.rollout.parallel_batches
    (rec,) = trainer.run()
    assert all(np.isfinite(v) for v in rec.values() if isinstance(v, float)), rec
    assert rec["skipped"] == 0.0 and rec["groups_kept_frac"] > 0
    assert rec["reward/test_digit_share"] > 0 and rec["grad_norm"] > 1e-4


@pytest.mark.parametrize("transport", ["grpc", "safetensors"])
def test_remote_rollout_mode_against_a_real_server(tmp_path, transport):
    """`rollout.mode: remote`: the trainer samples from a gRPC rollout server on loopback and pushes
    its weights after every step, continuing after the server's live version (which a server that
    outlived an earlier trainer has already advanced)."""
    import jax

    from r1jax.models import init_params
    from r1jax.rollout.jax_engine import JaxEngine
    from r1jax.rollout.server import make_server
    from r1jax.train.loop import Trainer

    cfg = load_config(ExperimentConfig, _config(tmp_path), ["run.steps=2", "checkpoint.every=0", "run.tensorboard=false"])
    engine = JaxEngine(init_params(cfg.model.config, jax.random.PRNGKey(99)), cfg.model.config, weight_version=5)
    server, port = make_server(engine)
    try:
        cfg = load_config(ExperimentConfig, _config(tmp_path), [
            "run.steps=2", "checkpoint.every=0", "run.tensorboard=false", "rollout.mode=remote",
            f"rollout.servers=['127.0.0.1:{port}']", f"rollout.weight_transport={transport}"])
        trainer = Trainer(cfg)
        assert engine.weight_version == 6  # the trainer's initial weights, after the live version 5
        np.testing.assert_array_equal(np.asarray(engine.params["embed"]), np.asarray(trainer.state.params["embed"]))
        records = trainer.run()
        assert [r["weight_version_min"] for r in records] == [6, 7]
        assert engine.weight_version == 8
        np.testing.assert_array_equal(np.asarray(engine.params["embed"]), np.asarray(trainer.state.params["embed"]))
        if transport == "safetensors":  # only the live copy is kept on the shared path
            assert [p.name for p in (trainer.run_dir / "weights").iterdir()] == ["v8"]
        trainer.close()
    finally:
        server.stop(None)
        engine.close()
