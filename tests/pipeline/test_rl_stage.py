"""The real ``rl`` kind in the pipeline: 2 GRPO steps from the shipped tiny base model, the exported
policy, the held-out evaluation in the manifest and the stage table; SIGKILLed mid-stage it resumes
and ends bit for bit as an uninterrupted run; its config errors name the stage and field."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from procutil import kill_on_log_line

from r1jax.config import ConfigError
from r1jax.models import load_pretrained
from r1jax.pipeline.graph import parse_pipeline
from r1jax.pipeline.kinds import StageContext
from r1jax.pipeline.manifest import digest_path, read_manifest
from r1jax.pipeline.rl import RLKind
from r1jax.pipeline.runner import format_table, run_pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "r1jax" / "assets" / "tiny_base"
ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}  # the suite has 8 fake CPU devices

RL_CONFIG = {
    "run": {"steps": 2, "progress": False, "tensorboard": False},
    "data": {"task": "arithmetic", "difficulty": 2, "operations": ["+"], "template": "plain",
             "heldout_fraction": 0.1, "num_eval": 8},
    "reward": {"num_workers": 0, "components": [{"name": "math_accuracy", "weight": 1.0},
                                                {"name": "format_strict", "weight": 1.0}]},
    "algo": {"num_minibatches": 1, "ref_update_every": 0, "entropy_coef": 0.01},  # entropy: a gradient even when
    # every group's rewards are equal (zero advantages), so the exported policy provably moved
    "optim": {"lr": 5e-4},
    "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 16},
    "eval": {"num_prompts": 2, "num_samples": 2, "ks": [1, 2], "temperature": 1.0},
    "checkpoint": {"every": 1, "keep": 2},
    "mesh": ONE_DEVICE,
}

EVAL = {"format_reward": "format_strict",
        "config": {k: copy.deepcopy(RL_CONFIG[k]) for k in ("data", "reward", "rollout", "eval", "mesh")}}


def _pipeline(tmp_path: pathlib.Path, **config) -> dict:
    cfg = copy.deepcopy(RL_CONFIG)
    for section, values in config.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return {"out_dir": str(tmp_path / "pipe"), "seed": 0, "eval": copy.deepcopy(EVAL),
            "stages": [{"name": "zero", "kind": "rl", "label": "Zero", "inputs": {"model": str(BASE)}, "config": cfg}]}


def test_rl_stage_trains_exports_evaluates_and_is_skipped_when_done(tmp_path):
    manifest = run_pipeline(parse_pipeline(_pipeline(tmp_path)))
    entry = manifest["stages"]["zero"]
    stage_dir = tmp_path / "pipe" / "stages" / "zero"
    assert manifest["last_actions"] == {"zero": "ran"} and entry["status"] == "done"
    records = [json.loads(line) for line in (stage_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]

    model_dir = stage_dir / "model"
    assert entry["outputs"]["model"] == {"path": "stages/zero/model", "digest": digest_path(model_dir)}
    params, model_cfg = load_pretrained(model_dir)
    base, base_cfg = load_pretrained(BASE)
    assert model_cfg == base_cfg
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))  # two GRPO steps moved the policy
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base)))
    assert json.loads((stage_dir / "metrics.json").read_text()) == entry["metrics"]
    assert "eval/accuracy" in entry["metrics"]

    summary = entry["eval"]["summary"]
    ev = entry["eval"]["metrics"]
    assert summary == {"pass@1": ev["eval/accuracy"], "cons@k": ev["eval/cons@2"], "k": 2,
                       "pass@1_ci": [ev["eval/accuracy/ci_low"], ev["eval/accuracy/ci_high"]],
                       "format_rate": ev["eval/format_strict"], "response_length": ev["eval/response_length"]}
    assert 0 <= summary["pass@1"] <= 1 and 0 < summary["response_length"] <= 16
    table = format_table(manifest)
    row = next(line for line in table.splitlines() if line.startswith("zero"))
    assert "Zero" in row and f"{summary['pass@1']:.3f}" in row and f"{summary['response_length']:.1f}" in row
    assert "cons@2" in table.splitlines()[0]
    assert (tmp_path / "pipe" / "table.txt").read_text().strip() == table
    assert (tmp_path / "pipe" / "stages.png").stat().st_size > 0

    again = run_pipeline(parse_pipeline(_pipeline(tmp_path)))
    assert again["last_actions"] == {"zero": "skipped"}
    assert again["stages"]["zero"]["eval"]["key"] == entry["eval"]["key"]  # not evaluated again
    assert len((stage_dir / "run" / "metrics.jsonl").read_text().splitlines()) == 2

    changed = _pipeline(tmp_path)
    changed["eval"]["config"]["eval"]["num_prompts"] = 1  # a new eval section: the model is evaluated again
    third = run_pipeline(parse_pipeline(changed))
    assert third["last_actions"] == {"zero": "skipped"}
    assert third["stages"]["zero"]["eval"]["key"] != entry["eval"]["key"]
    assert third["stages"]["zero"]["eval"]["metrics"]["eval/num_problems"] == 1.0
    assert third["stages"]["zero"]["eval"]["summary"]["pass@1_ci"] is None  # one problem: no interval


def test_rl_kind_resumes_its_own_run(tmp_path):
    """Called again on the same directory (as after a kill), the kind continues from its checkpoint;
    a run extended to more steps re-exports and keeps the earlier export."""
    kind = RLKind()
    cfg = copy.deepcopy(RL_CONFIG)
    cfg["run"]["steps"] = 1
    out = tmp_path / "stage"
    out.mkdir()
    first = kind.run(StageContext(name="zero", config=cfg, inputs={"model": BASE}, out_dir=out))
    first_digest = digest_path(first.outputs["model"])
    cfg["run"]["steps"] = 2
    second = kind.run(StageContext(name="zero", config=cfg, inputs={"model": BASE}, out_dir=out))
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]  # step 0 was not run again
    assert digest_path(second.outputs["model"]) != first_digest
    assert digest_path(out / "model.old-1") == first_digest
    assert (out / "model.step").read_text().strip() == "2"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["config"].update(model={"path": str(BASE)}), "stage zero: config.model.path: the policy is the "
                                                               "stage's input 'model'"),
    (lambda s: s["config"]["checkpoint"].update(resume=False), "stage zero: config.checkpoint.resume: "),
    (lambda s: s["config"]["algo"].update(kl_coeff=0.1), "stage zero: config: unknown key 'algo.kl_coeff' "
                                                          "(did you mean 'algo.kl_coef'?)"),
    (lambda s: s["inputs"].update(model=str(BASE.parent)), "stage zero: inputs.model: "),
    (lambda s: s["config"].update(data={"task": "jsonl", "train_path": "@BAD", "template": "plain"}),
     "stage zero: config.data: "),
])
def test_rl_config_errors_name_the_stage_and_field(tmp_path, edit, message):
    data = _pipeline(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1"}\n')
    edit(data["stages"][0])
    if data["stages"][0]["config"]["data"].get("train_path") == "@BAD":  # a file without an answer field
        data["stages"][0]["config"]["data"]["train_path"] = str(bad)
    with pytest.raises(ConfigError) as err:
        parse_pipeline(data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "pipe").exists()


def test_rl_stage_reads_the_model_an_earlier_stage_makes(tmp_path):
    data = _pipeline(tmp_path)
    data["stages"].append({"name": "dev", "kind": "rl", "label": "Dev1", "inputs": {"model": "stages.zero.model"},
                           "config": copy.deepcopy(RL_CONFIG)})
    pipeline = parse_pipeline(data)  # checked with the model still unmade
    assert pipeline.stage("dev").depends_on() == ("zero",)
    data["stages"][1]["config"]["rollout"]["group_size"] = 1
    with pytest.raises(ConfigError, match="stage dev: config: rollout.group_size: with 1 sample per prompt"):
        parse_pipeline(data)


def _cli(config: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "r1jax.cli", "pipeline", str(config)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_rl_stage_killed_mid_run_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    for d in (full, cut):
        d.mkdir()
        (d / "pipeline.yaml").write_text(yaml.safe_dump(_pipeline(d)))
    proc = _cli(full / "pipeline.yaml")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    proc = _cli(cut / "pipeline.yaml")
    try:
        kill_on_log_line(proc, "checkpoint saved at step 1")  # the trainer's log line after the step-1 checkpoint
    finally:
        proc.stdout.close()
        proc.stderr.close()
    assert read_manifest(cut / "pipe")["stages"]["zero"]["status"] == "running"

    proc = _cli(cut / "pipeline.yaml")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "stage zero: resuming" in err and "resuming from step" in err
    done, reference = read_manifest(cut / "pipe")["stages"]["zero"], read_manifest(full / "pipe")["stages"]["zero"]
    assert done["status"] == "done" and read_manifest(cut / "pipe")["last_actions"] == {"zero": "resumed"}

    def records(root):
        out = []
        for line in (root / "pipe" / "stages" / "zero" / "run" / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            rec.pop("time", None)
            out.append(rec)
        return out

    assert records(cut) == records(full)  # same steps, once each, same numbers
    assert done["outputs"] == reference["outputs"]  # the same exported policy, bit for bit
    assert done["eval"]["metrics"] == reference["eval"]["metrics"]
