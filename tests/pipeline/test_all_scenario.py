"""The all-scenario part of the pipeline: ``preferences`` data stages, an ``rm`` stage whose reward
model an ``rl`` stage reads as an input named after its external component (switched on for the
last step only), and the eval section's ``language_reward`` and ``extra`` evaluations (per-domain
accuracy, reward-model scores) as table columns, including one that waits for a later stage's
reward model; and the one-line errors of each new key."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from r1jax.config import ConfigError
from r1jax.data.preferences import helpfulness_pairs
from r1jax.pipeline.graph import parse_pipeline
from r1jax.pipeline.runner import format_table, run_pipeline

BASE = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"
ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}

MIXTURE = {"task": "mixture", "template": "plain", "operations": ["+"], "num_train": 200, "num_eval": 2,
           "heldout_fraction": 0.1,
           "mixture": [{"task": "arithmetic", "weight": 0.5, "domain": "math", "difficulty": 2},
                       {"task": "general", "weight": 0.5, "verifier": "none"}]}
RL = {
    "run": {"steps": 2, "progress": False, "tensorboard": False},
    "data": MIXTURE,
    "reward": {"num_workers": 0, "components": [
        {"name": "domain_verifier", "weight": 1.0},
        {"name": "format_strict", "weight": 1.0},
        {"name": "helpfulness", "weight": 1.0, "domains": ["general"], "last_n_steps": 1}]},
    "algo": {"num_minibatches": 1, "ref_update_every": 0},
    "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12},
    "eval": {"num_prompts": 2, "num_samples": 1, "ks": [1], "temperature": 1.0},
    "checkpoint": {"every": 1, "keep": 1},
    "mesh": ONE_DEVICE,
}
ARITH = {"task": "arithmetic", "difficulty": 2, "operations": ["+"], "template": "plain", "heldout_fraction": 0.1,
         "num_eval": 4}
EVAL = {
    "format_reward": "format_strict",
    "language_reward": "language_consistency_en",
    "config": {"data": ARITH, "mesh": ONE_DEVICE, "rollout": {"max_new_tokens": 12},
               "reward": {"num_workers": 0, "components": [{"name": "math_accuracy", "weight": 1.0},
                                                           {"name": "format_strict", "weight": 1.0},
                                                           {"name": "language_consistency_en", "weight": 0.0}]},
               "eval": {"num_prompts": 2, "num_samples": 1, "ks": [1], "temperature": 1.0}},
    "extra": [{"name": "general",
               "config": {"data": {"task": "general", "template": "plain", "num_eval": 4, "heldout_fraction": 0.1},
                          "mesh": ONE_DEVICE, "rollout": {"max_new_tokens": 12},
                          "reward": {"num_workers": 0, "components": [{"name": "helpfulness", "weight": 1.0}]},
                          "eval": {"num_prompts": 2, "num_samples": 1, "ks": [1], "temperature": 1.0}},
               "columns": {"help_rm": "helpfulness"},
               "reward_models": {"helpfulness": "stages.helpful_rm.reward_model"}}],
}


def _pipeline(tmp_path: pathlib.Path) -> dict:
    first = copy.deepcopy(RL)  # before the reward model exists: no external component in its own loop
    first["data"] = ARITH
    first["reward"]["components"] = first["reward"]["components"][1:2] + [{"name": "math_accuracy", "weight": 1.0}]
    return {"out_dir": str(tmp_path / "pipe"), "seed": 0, "eval": copy.deepcopy(EVAL), "stages": [
        {"name": "zero", "kind": "rl", "label": "Zero", "inputs": {"model": str(BASE)}, "config": first},
        {"name": "help_data", "kind": "preferences", "config": {"generator": "helpfulness", "n": 24}},
        {"name": "helpful_rm", "kind": "rm", "label": "helpfulness RM",
         "inputs": {"model": str(BASE), "data": "stages.help_data.data"},
         "config": {"objective": "pairwise", "max_steps": 2, "batch_size": 4, "max_len": 80, "heldout_fraction": 0.25,
                    "checkpoint_every": 0}},
        {"name": "final", "kind": "rl", "label": "R1",
         "inputs": {"model": "stages.zero.model", "helpfulness": "stages.helpful_rm.reward_model"},
         "config": copy.deepcopy(RL)},
    ]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("all_scenario")
    return tmp, run_pipeline(parse_pipeline(_pipeline(tmp)))


def test_the_preferences_stage_writes_the_generator_rows_with_the_pipeline_seed(run):
    tmp, manifest = run
    path = tmp / "pipe" / manifest["stages"]["help_data"]["outputs"]["data"]["path"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == helpfulness_pairs(24, 0)


def test_the_rl_stage_scores_general_prompts_with_the_rm_stage_model_in_its_last_step(run):
    tmp, manifest = run
    assert all(manifest["stages"][s]["status"] == "done" for s in ("zero", "help_data", "helpful_rm", "final"))
    records = [json.loads(line) for line in
               (tmp / "pipe" / "stages" / "final" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward/helpfulness" not in records[0] and records[1]["reward/helpfulness"] != 0.0  # last_n_steps: 1
    assert records[1]["reward/failures"] == 0
    # the stage's input is the rm stage's output: its identity is part of the stage's fingerprint
    rm_out = manifest["stages"]["helpful_rm"]["outputs"]["reward_model"]
    assert manifest["stages"]["final"]["inputs"]["helpfulness"]["digest"] == rm_out["digest"]


def test_language_and_reward_model_columns_reach_every_model_even_one_made_before_the_rm(run):
    _, manifest = run
    for stage in ("zero", "final"):  # zero ran before helpful_rm existed: the final pass evaluated it
        entry = manifest["stages"][stage]
        general = entry["eval_extra"]["general"]
        assert general["summary"] == {"help_rm": general["metrics"]["eval/helpfulness"]}
        low, high = general["intervals"]["help_rm"]
        assert low <= general["summary"]["help_rm"] <= high and low < high
        assert entry["eval"]["summary"]["language"] == entry["eval"]["metrics"]["eval/language_consistency_en"]
    table = format_table(manifest)
    header, _, *rows = table.splitlines()
    assert header.split()[-2:] == ["lang", "help_rm"]
    final = next(r for r in rows if r.startswith("final"))
    assert final.split()[-1] == f"{manifest['stages']['final']['eval_extra']['general']['summary']['help_rm']:.3f}"
    rm_line = next(r for r in rows if r.startswith("helpfulness RM (helpful_rm)"))
    acc = manifest["stages"]["helpful_rm"]["metrics"]["heldout_accuracy"]
    assert f"accuracy {acc:.3f}" in rm_line and "fresh head" in rm_line


def test_a_second_run_evaluates_nothing_again(run):
    tmp, manifest = run
    again = run_pipeline(parse_pipeline(_pipeline(tmp)))
    assert set(again["last_actions"].values()) == {"skipped"}
    for stage in ("zero", "final"):
        assert (again["stages"][stage]["eval_extra"]["general"]["key"]
                == manifest["stages"][stage]["eval_extra"]["general"]["key"])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stages"][3]["inputs"].update(safety="stages.helpful_rm.reward_model"),
     "stage final: inputs.safety: kind rl takes no input 'safety'; its inputs: model, helpfulness"),
    (lambda d: d["stages"][3]["config"]["reward"]["components"][2].update(model=str(BASE)),
     "stage final: config.reward.components[2].model: 'helpfulness' gets its reward model from inputs.helpfulness"),
    (lambda d: d["stages"][1]["config"].update(generator="helpfulnes"), "stage help_data: config.generator: "),
    (lambda d: d["eval"].update(language_reward="language_consistency"),
     "eval.language_reward: 'language_consistency' is not one of the eval's reward components"),
    (lambda d: d["eval"]["extra"][0].update(columns={}), "eval.extra[0].columns: expected a non-empty mapping"),
    (lambda d: d["eval"]["extra"][0].update(reward_models={"helpfulness": "stages.help_rm.reward_model"}),
     "eval.extra[0].reward_models.helpfulness: 'stages.help_rm.reward_model' is not stages.<stage>.<output> of a "
     "stage in the pipeline"),
    (lambda d: d["eval"]["extra"][0].update(reward_models={"math_accuracy": "stages.helpful_rm.reward_model"}),
     "eval.extra[general].reward_models.math_accuracy: not an external reward component of its config"),
    (lambda d: d["eval"]["extra"][0]["config"]["reward"]["components"][0].update(model=str(BASE)),
     "eval.extra[general].config.reward.components[0].model: 'helpfulness' gets its reward model from "
     "reward_models.helpfulness"),
    (lambda d: d["eval"]["extra"][0].update(metric="x"), "eval.extra[0]: unknown key 'metric'"),
])
def test_each_new_key_fails_with_one_line_before_any_work(tmp_path, edit, message):
    data = _pipeline(tmp_path)
    edit(data)
    with pytest.raises(ConfigError) as err:
        parse_pipeline(data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "pipe").exists()
