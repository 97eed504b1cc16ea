"""`r1jax pipeline CONFIG [--status]` and the stage verbs (`r1jax rl|sft|sample|distill CONFIG --out DIR`):
exit status 2 with one-line config errors and nothing written, the table, the kinds that load."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
import yaml

from r1jax.cli import main
from r1jax.pipeline import load_kinds
from r1jax.pipeline.kinds import StageKind, StageResult, register_stage_kind
from r1jax.pipeline.manifest import read_manifest

BASE = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"


class EchoKind(StageKind):
    """Test-only kind: copies its input ``text`` file (plus a suffix from its config) to output ``text``."""

    inputs = ("text",)
    outputs = ("text",)

    def run(self, ctx):
        out = ctx.out_dir / "text.txt"
        out.write_text(ctx.inputs["text"].read_text() + ctx.config.get("suffix", ""))
        return StageResult(outputs={"text": out})


register_stage_kind("test_echo", EchoKind, overwrite=True)


def _write(path: pathlib.Path, data: dict) -> pathlib.Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _echo_pipeline(tmp_path: pathlib.Path) -> dict:
    src = tmp_path / "in.txt"
    src.write_text("hello")
    return {"out_dir": str(tmp_path / "pipe"),
            "stages": [{"name": "first", "kind": "test_echo", "label": "Zero", "inputs": {"text": str(src)},
                        "config": {"suffix": " 1"}},
                       {"name": "second", "kind": "test_echo", "inputs": {"text": "stages.first.text"},
                        "config": {"suffix": " 2"}}]}


def test_pipeline_runs_prints_the_table_and_status_reads_the_manifest(tmp_path, capsys):
    config = _write(tmp_path / "p.yaml", _echo_pipeline(tmp_path))
    assert main(["pipeline", str(config), "--status"]) == 0
    assert "no pipeline has run" in capsys.readouterr().out
    assert not (tmp_path / "pipe").exists()

    assert main(["pipeline", str(config)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "pipe" / "stages" / "second" / "text.txt").read_text() == "hello 1 2"
    lines = out.splitlines()
    assert lines[0].split() == ["stage", "model", "status", "pass@1", "cons@k", "format", "length"]
    assert lines[2].split() == ["first", "Zero", "done", "-", "-", "-", "-"]  # no eval section: no numbers
    assert lines[3].split()[:3] == ["second", "second", "done"]

    assert main(["pipeline", str(config), "stages.second.config.suffix=_3", "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[2:4] == lines[2:4]  # --status runs nothing
    assert (tmp_path / "pipe" / "stages" / "second" / "text.txt").read_text() == "hello 1 2"

    assert main(["pipeline", str(config), "stages.second.config.suffix=_3"]) == 0
    assert (tmp_path / "pipe" / "stages" / "second" / "text.txt").read_text() == "hello 1_3"
    assert read_manifest(tmp_path / "pipe")["last_actions"] == {"first": "skipped", "second": "re-ran"}


def _rl_stage(tmp_path) -> dict:
    return {"name": "zero", "kind": "rl", "inputs": {"model": str(BASE)},
            "config": {"run": {"steps": 1, "progress": False, "tensorboard": False},
                       "data": {"template": "plain"}, "reward": {"num_workers": 0},
                       "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8},
                       "algo": {"num_minibatches": 1}, "eval": {"num_prompts": 2},
                       "mesh": {"data": 1, "fsdp": 1, "tensor": 1}}}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stages"][1].update(kind="rll"), "stage dev: kind: unknown stage kind 'rll'; known kinds: "),
    (lambda d: d["stages"][0]["inputs"].update(model="stages.dev.model"),
     "stage zero: inputs.model: stages.dev.model refers to stage 'dev', which comes later"),
    (lambda d: d["stages"][1].pop("inputs"), "stage dev: inputs.model: missing required input of kind rl"),
    (lambda d: d["stages"][1]["inputs"].update(model="stages.zero.weights"),
     "stage dev: inputs.model: stages.zero.weights: stage 'zero' (kind rl) has no output 'weights'; "
     "its outputs: model, metrics"),
    (lambda d: d["stages"][1].update(name="zero"), "stage zero: name: duplicate stage name"),
    (lambda d: d["stages"][1]["config"]["rollout"].update(prompts_per_step=0),
     "stage dev: config: rollout.prompts_per_step: 0 is out of range"),
    (lambda d: d.update(evaluation={}), "unknown key 'evaluation'"),
])
def test_config_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, edit, message):
    data = {"out_dir": str(tmp_path / "pipe"), "stages": [_rl_stage(tmp_path), copy.deepcopy(_rl_stage(tmp_path))]}
    data["stages"][1].update(name="dev", inputs={"model": "stages.zero.model"})
    edit(data)
    assert main(["pipeline", str(_write(tmp_path / "p.yaml", data))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"r1jax: config error: {message}") and "\n" not in err
    if "known kinds" in message:
        assert "rl" in err.split("known kinds: ")[1].split(", ")
    assert not (tmp_path / "pipe").exists()


def test_rl_verb_runs_one_stage_through_the_runner(tmp_path, capsys):
    stage = _rl_stage(tmp_path)
    stage.pop("name")
    stage.pop("kind")
    config = _write(tmp_path / "rl.yaml", {**stage, "label": "Zero"})
    out = tmp_path / "out"
    assert main(["rl", str(config), "config.optim.lr=0.001", "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest["order"] == ["rl"] and manifest["stages"]["rl"]["status"] == "done"
    assert manifest["stages"]["rl"]["config"]["optim"] == {"lr": 0.001}
    assert (out / "stages" / "rl" / "model" / "config.json").is_file()
    assert json.loads((out / "stages" / "rl" / "metrics.json").read_text()) == manifest["stages"]["rl"]["metrics"]
    assert "rl              Zero        done" in capsys.readouterr().out

    assert main(["rl", str(config), "kind=rl", "--out", str(out)]) == 2
    assert "unknown key 'kind' (the verb names the kind)" in capsys.readouterr().err


def test_every_stage_verb_has_its_kind():
    assert {"rl", "sft", "sample", "distill", "prompts"} <= set(load_kinds())


def test_help_lists_the_pipeline_and_stage_verbs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")}
    assert {"pipeline", "rl", "sft", "sample", "distill"} <= listed
