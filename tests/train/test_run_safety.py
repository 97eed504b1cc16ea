"""No run is silently lost, mixed or wasted (issue 11, items 4-8): a resumed run refuses a config that
changes what it trains; `checkpoint.resume=false` never overwrites or deletes an earlier run; nothing
is written before every start-up check has passed; configs that can only train on nothing, and
prompts that do not fit the model, are config errors; data-file errors are one line and exit 2."""

import json
import logging
import shutil
import subprocess
import sys

import pytest
import yaml
from test_train_loop import _config  # the tiny trainer config shared with the loop's tests

from r1jax import algos
from r1jax.config import ConfigError, load_config
from r1jax.rewards import register_reward
from r1jax.train.config import ExperimentConfig
from r1jax.train.demo import BASE_MODEL, DEMO_CONFIG

FAST = ["run.tensorboard=false", "algo.num_minibatches=1", "checkpoint.every=0"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1jax.cli", *args], capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a command that failed with exit status 2."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and lines[-1].startswith("r1jax: config error: "), proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def _one_step_run(tmp_path_factory):
    """One run of one step, trained once for the module: (config path, run directory)."""
    from r1jax.train.loop import Trainer

    path = _config(tmp_path_factory.mktemp("trained"))
    trainer = Trainer(load_config(ExperimentConfig, path, ["run.steps=1", *FAST]))
    trainer.run()
    trainer.close()
    return path, trainer.run_dir


@pytest.fixture
def trained_run(_one_step_run, tmp_path):
    """A copy of the one-step run (checkpoint at step 1) in this test's directory: (config path, run
    directory); the copied config's ``run.out_dir`` points at the copy."""
    path, run_dir = _one_step_run
    copy = tmp_path / "runs" / "t"
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load(path.read_text())
    cfg["run"]["out_dir"] = str(tmp_path / "runs")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert (copy / "checkpoints" / "1").is_dir()
    return tmp_path / "config.yaml", copy


# ------------------------------------------------------------------------------------- item 4: resume


def test_resume_refuses_a_config_that_changes_what_the_run_trains(trained_run, caplog):
    from r1jax.train.loop import Trainer

    path, run_dir = trained_run
    saved = (run_dir / "config.yaml").read_bytes()
    base = ["run.steps=2", *FAST]
    for changed, expected in (
        (["rollout.temperature=0.7", "data.difficulty=2"],
         ["data.difficulty: 1 → 2", "rollout.temperature: 1.0 → 0.7"]),
        (["model.config.hidden_size=48"], ["model.config.hidden_size: 32 → 48"]),  # the state's shapes change too
        (["optim.lr=0.001", "rollout.group_size=2"], ["optim.lr: 0.01 → 0.001", "rollout.group_size: 4 → 2"]),
    ):
        with pytest.raises(ConfigError) as err:
            Trainer(load_config(ExperimentConfig, path, [*base, *changed]))
        message = str(err.value)
        assert str(run_dir) in message and "checkpoint of step 1" in message
        for diff in expected:
            assert diff in message, message
        assert "checkpoint.resume=false run.name=" in message and "--allow-config-change" in message
        assert "run.steps" not in message  # a safe change is not a reason to refuse
    assert (run_dir / "config.yaml").read_bytes() == saved  # refused before anything was written

    # safe changes (length, logging, evaluation, checkpoint cadence) resume, and are listed in the log
    with caplog.at_level(logging.WARNING, logger="r1jax.train"):
        trainer = Trainer(load_config(ExperimentConfig, path, [*base, "eval.num_prompts=2", "checkpoint.keep=3"]))
    assert trainer.start_step == 1
    trainer.close()
    changed_line = next(m for m in caplog.messages if m.startswith("resuming with a changed config"))
    for diff in ("checkpoint.keep: 2 → 3", "eval.num_prompts: 4 → 2", "run.steps: 1 → 2"):
        assert diff in changed_line, changed_line
    assert f"resuming from step 1 of {run_dir / 'checkpoints'}" in caplog.messages

    # an explicit allow resumes a meaningful change, and logs it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="r1jax.train"):
        trainer = Trainer(load_config(ExperimentConfig, path, [*base, "rollout.temperature=0.7"]),
                          allow_config_change=True)
    assert trainer.start_step == 1 and trainer.config.rollout.temperature == 0.7
    trainer.close()
    assert any("--allow-config-change" in m and "rollout.temperature: 1.0 → 0.7" in m for m in caplog.messages)


def test_cli_resume_says_where_it_resumes_and_refuses_a_changed_config_in_one_line(trained_run):
    path, run_dir = trained_run
    metrics = (run_dir / "metrics.jsonl").read_text()
    line = _one_line_error(_cli("train", str(path), "run.steps=2", "algo.advantage=rloo", *FAST))
    assert 'algo.advantage: "grpo" → "rloo"' in line and "--allow-config-change" in line
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # the old run's metrics are untouched

    proc = _cli("train", str(path), "run.steps=1", "eval.num_prompts=1", *FAST)  # nothing left to train
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from step 1 of {run_dir / 'checkpoints'}" in proc.stderr
    assert (run_dir / "metrics.jsonl").read_text() == metrics


# ------------------------------------------------------------------------------- item 5: resume=false


def test_resume_false_in_an_existing_run_is_refused_or_moves_the_old_run_aside(trained_run, caplog):
    from r1jax.train.loop import Trainer

    path, run_dir = trained_run
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    metrics = (run_dir / "metrics.jsonl").read_text()
    fresh = load_config(ExperimentConfig, path, ["run.steps=1", "checkpoint.resume=false", *FAST])
    with pytest.raises(ConfigError, match=rf"checkpoint\.resume=false: {run_dir} already holds a run "
                                          rf"\(checkpoints, metrics\.jsonl\).*run\.name=.*--overwrite"):
        Trainer(fresh)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    with pytest.raises(ConfigError, match=r"--overwrite .* needs checkpoint\.resume=false"):
        Trainer(load_config(ExperimentConfig, path, ["run.steps=1", *FAST]), overwrite=True)

    with caplog.at_level(logging.WARNING, logger="r1jax.train"):
        trainer = Trainer(fresh, overwrite=True)
    aside = run_dir.with_name("t.old-1")
    assert any(f"moved the previous run {run_dir} aside to {aside}" in m for m in caplog.messages)
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == before  # kept whole, nothing deleted
    assert (aside / "metrics.jsonl").read_text() == metrics
    assert trainer.start_step == 0 and trainer.checkpointer.all_steps() == []
    trainer.run()
    trainer.close()
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0]

    # a second overwrite keeps both earlier runs
    trainer = Trainer(fresh, overwrite=True)
    trainer.close()
    assert (run_dir.with_name("t.old-2") / "metrics.jsonl").is_file() and (aside / "checkpoints" / "1").is_dir()


def test_the_demo_moves_its_previous_run_aside_instead_of_deleting_it(tmp_path, capsys):
    from r1jax.train.demo import main

    run_dir = tmp_path / "r1_zero_tiny"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("an earlier demo run")
    assert main([f"run.out_dir={tmp_path}", "run.steps=0", "eval.num_prompts=2", "eval.num_samples=1", "eval.ks=[1]",
                 "reward.num_workers=0", "run.tensorboard=false", "run.progress=false", "mesh.data=1"]) == 0
    aside = tmp_path / "r1_zero_tiny.old-1"
    assert (aside / "notes.txt").read_text() == "an earlier demo run"
    assert f"moved the previous demo run {run_dir} aside to {aside}" in capsys.readouterr().out
    assert (run_dir / "config.yaml").is_file()


# ------------------------------------------------------------------- items 6 and 8: start-up checks


def test_a_failing_start_up_writes_nothing(tmp_path):
    from r1jax.train.loop import Trainer

    path = _config(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1", "answer": "#### 2"}\n{"question": "2+2", "answer": \n')
    with pytest.raises(ConfigError, match=rf"data: {data}:2: malformed JSON"):
        Trainer(load_config(ExperimentConfig, path, ["data.task=jsonl", f"data.train_path={data}", *FAST]))
    assert not (tmp_path / "runs").exists()

    # an existing run's config.yaml stays as it was when the new start-up fails
    run_dir = tmp_path / "runs" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("# the earlier run's config\n")
    with pytest.raises(ConfigError, match=r"\+ rollout\.max_new_tokens=200 = \d+ tokens exceed the model's context "
                                          r"\(max_position_embeddings=128\)"):
        Trainer(load_config(ExperimentConfig, path, ["rollout.max_new_tokens=200", *FAST]))
    assert (run_dir / "config.yaml").read_text() == "# the earlier run's config\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_cudnn_attention_without_a_gpu_is_a_config_error_before_any_work(tmp_path):
    """``model.attention_impl=cudnn`` is valid in a config (it may be launched on a GPU), but on a
    CPU backend the start-up refuses it naming the field, and no run directory is made."""
    path = _config(tmp_path)
    line = _one_line_error(_cli("train", str(path), "model.attention_impl=cudnn", "model.compute_dtype=bfloat16",
                                *FAST))
    assert "model.attention_impl: 'cudnn' needs an NVIDIA GPU" in line and "'cpu'" in line
    assert not (tmp_path / "runs").exists()


def test_a_prompt_template_longer_than_the_context_is_one_config_error(tmp_path):
    """The shipped tiny model (256 positions) cannot take the R1-Zero template: the command names the
    longest prompt, max_new_tokens and the context, exits 2 and creates no run directory."""
    path = _config(tmp_path)
    line = _one_line_error(_cli("train", str(path), f"model.path={BASE_MODEL}", f"model.tokenizer={BASE_MODEL}",
                                "data.template=r1_zero", *FAST))
    assert "the longest prompt (" in line and "data.template='r1_zero'" in line
    assert "rollout.max_new_tokens=12" in line and "(max_position_embeddings=256)" in line
    longest = int(line.split("the longest prompt (")[1].split()[0])
    assert longest + 12 > 256
    assert not (tmp_path / "runs").exists()


def test_a_data_file_error_is_one_line_and_exit_2(tmp_path):
    path = _config(tmp_path)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1", "answer": "#### 2"}\n{"question": "2+2"}\n')
    line = _one_line_error(_cli("train", str(path), "data.task=jsonl", f"data.train_path={data}", *FAST))
    assert f"{data}:2: missing field 'answer'" in line
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------- item 7: configs that train nothing


@pytest.mark.parametrize("advantage", ["grpo", "drgrpo", "rloo"])
def test_one_sample_per_prompt_with_a_group_relative_advantage_is_refused(tmp_path, advantage):
    with pytest.raises(ConfigError, match=rf"rollout\.group_size: with 1 sample per prompt every advantage of "
                                          rf"algo\.advantage='{advantage}' is 0.*group_size >= 2"):
        load_config(ExperimentConfig, _config(tmp_path), ["rollout.group_size=1", f"algo.advantage={advantage}"])


def test_advantages_that_need_no_group_train_on_one_sample_per_prompt(tmp_path):
    assert [n for n in algos.ADVANTAGES if algos.ADVANTAGES.entry(n).meta["group_relative"]] == [
        "grpo", "drgrpo", "rloo"]
    cfg = load_config(ExperimentConfig, _config(tmp_path), ["rollout.group_size=1", "algo.advantage=reinforce_pp"])
    assert cfg.rollout.group_size == 1
    cfg = load_config(ExperimentConfig, _config(tmp_path), [
        "rollout.group_size=1", "algo.name=ppo", "algo.advantage=gae"])
    assert cfg.algo.advantage == "gae"


def _always_right(prompt, completion, reference):
    del prompt, completion, reference
    return 1.0


def test_a_task_whose_references_the_accuracy_reward_cannot_score_is_refused(tmp_path):
    path = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"reward\.components: math_accuracy cannot score the references of "
                                          r"data\.task='countdown'.*use the countdown reward"):
        load_config(ExperimentConfig, path, ["data.task=countdown", "data.difficulty=3"])
    with pytest.raises(ConfigError, match=r"countdown cannot score the references of data\.task='arithmetic'"):
        load_config(ExperimentConfig, path, ["reward.components=[{name: countdown}, {name: format_strict}]"])
    # what fits is accepted: the task's own reward, or alongside it; a reward no task claims is the user's call
    for components in ("[{name: countdown}]", "[{name: countdown}, {name: math_accuracy}]"):
        cfg = load_config(ExperimentConfig, path, ["data.task=countdown", "data.difficulty=3",
                                                   f"reward.components={components}"])
        assert cfg.data.task == "countdown"
    register_reward("test_always_right", _always_right, description="1 (tests)", accuracy=True, overwrite=True)
    cfg = load_config(ExperimentConfig, path, ["data.task=countdown", "data.difficulty=3",
                                               "reward.components=[{name: test_always_right}]"])
    assert cfg.reward.components[0].name == "test_always_right"
    # the demo's own config fits
    assert load_config(ExperimentConfig, DEMO_CONFIG, [f"model.path={BASE_MODEL}"]).data.task == "arithmetic"
