"""The pipeline runner with a test-only stage kind (plain-file checkpoints): skip, resume after SIGKILL,
re-run on changed config / inputs / outputs (old directories moved aside), config errors before any work.

The kind ``test_count`` registered here is deliberately trivial: the runner is under test. It folds
``value = 3 * value + add + step`` over ``steps`` steps, starting from its optional input ``start``
(a file holding an integer), writes a checkpoint file after every step, logs every step it executes
to ``steps.log``, and, when ``R1JAX_TEST_BLOCK=<stage>:<step>`` is set, prints ``BLOCKED <stage> <step>``
after that step's checkpoint and blocks until it is killed (the test's synchronisation point).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest
import yaml

from r1jax.config import ConfigError
from r1jax.pipeline.graph import load_pipeline, parse_pipeline
from r1jax.pipeline.kinds import StageKind, StageResult, register_stage_kind
from r1jax.pipeline.manifest import digest_path, read_manifest
from r1jax.pipeline.runner import format_table, plot_stages, run_pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
THIS_FILE = pathlib.Path(__file__).resolve()


class CountKind(StageKind):
    """Test-only kind: see the module docstring."""

    inputs = ()
    optional_inputs = ("start",)
    outputs = ("result",)

    def check(self, stage, config, inputs):
        for key in config:
            if key not in ("steps", "add"):
                raise ConfigError(f"stage {stage}: config.{key}: unknown key; allowed: steps, add")
        steps = config.get("steps", 3)
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"stage {stage}: config.steps: must be an integer >= 1, got {steps!r}")
        start = inputs.get("start")
        if start is not None and not start.read_text().strip().lstrip("-").isdigit():
            raise ConfigError(f"stage {stage}: inputs.start: {start} does not hold an integer")

    def run(self, ctx):
        steps, add = ctx.config.get("steps", 3), ctx.config.get("add", 1)
        ckpt = ctx.out_dir / "ckpt.json"
        if ckpt.is_file():
            state = json.loads(ckpt.read_text())
        else:
            start = ctx.inputs.get("start")
            state = {"step": 0, "value": int(start.read_text()) if start is not None else 0}
        block = os.environ.get("R1JAX_TEST_BLOCK")
        while state["step"] < steps:
            step = state["step"] + 1
            with open(ctx.out_dir / "steps.log", "a") as log:
                log.write(f"{step}\n")
            state = {"step": step, "value": 3 * state["value"] + add + step}
            tmp = ckpt.with_name("ckpt.json.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, ckpt)
            if block == f"{ctx.name}:{step}":
                print(f"BLOCKED {ctx.name} {step}", flush=True)
                threading.Event().wait()  # until the test kills the process
        out = ctx.out_dir / "result.txt"
        out.write_text(f"{state['value']}\n")
        return StageResult(outputs={"result": out}, metrics={"value": float(state["value"])})


register_stage_kind("test_count", CountKind, overwrite=True)


def expected_value(start: int, steps: int, add: int) -> int:
    """The test kind's fold, written out independently of it."""
    value = start
    for step in range(1, steps + 1):
        value = 3 * value + add + step
    return value


def _pipeline(tmp_path: pathlib.Path, *, a: dict | None = None, b: dict | None = None, start: str | None = None,
              imports: bool = False) -> dict:
    a_stage = {"name": "a", "kind": "test_count", "config": {"steps": 3, "add": 1, **(a or {})}}
    if start is not None:
        a_stage["inputs"] = {"start": start}
    data = {"out_dir": str(tmp_path / "pipe"), "seed": 0,
            "stages": [a_stage, {"name": "b", "kind": "test_count", "label": "Dev1",
                                 "inputs": {"start": "stages.a.result"},
                                 "config": {"steps": 4, "add": 2, **(b or {})}}]}
    if imports:
        data["imports"] = [str(THIS_FILE)]
    return data


def _result(tmp_path: pathlib.Path, stage: str, dirname: str | None = None) -> int:
    return int((tmp_path / "pipe" / "stages" / (dirname or stage) / "result.txt").read_text())


def _log(tmp_path: pathlib.Path, stage: str) -> list[int]:
    return [int(x) for x in (tmp_path / "pipe" / "stages" / stage / "steps.log").read_text().split()]


def test_runs_in_order_then_skips_what_is_done(tmp_path):
    manifest = run_pipeline(parse_pipeline(_pipeline(tmp_path)))
    a = expected_value(0, 3, 1)
    assert _result(tmp_path, "a") == a and _result(tmp_path, "b") == expected_value(a, 4, 2)
    assert manifest["last_actions"] == {"a": "ran", "b": "ran"}
    on_disk = read_manifest(tmp_path / "pipe")
    for name in ("a", "b"):
        entry = on_disk["stages"][name]
        assert entry["status"] == "done"
        assert entry["outputs"]["result"]["digest"] == digest_path(tmp_path / "pipe" / "stages" / name / "result.txt")
    assert on_disk["stages"]["b"]["inputs"]["start"]["digest"] == on_disk["stages"]["a"]["outputs"]["result"]["digest"]
    assert on_disk["stages"]["b"]["label"] == "Dev1" and on_disk["stages"]["a"]["label"] == "a"
    assert on_disk["stages"]["b"]["metrics"] == {"value": float(expected_value(a, 4, 2))}

    again = run_pipeline(parse_pipeline(_pipeline(tmp_path)))
    assert again["last_actions"] == {"a": "skipped", "b": "skipped"}
    assert _log(tmp_path, "a") == [1, 2, 3] and _log(tmp_path, "b") == [1, 2, 3, 4]  # no step ran twice


def test_changed_config_reruns_the_stage_and_everything_downstream_and_keeps_the_old_outputs(tmp_path):
    run_pipeline(parse_pipeline(_pipeline(tmp_path)))
    old_a, old_b = _result(tmp_path, "a"), _result(tmp_path, "b")

    manifest = run_pipeline(parse_pipeline(_pipeline(tmp_path, a={"add": 5})))
    assert manifest["last_actions"] == {"a": "re-ran", "b": "re-ran"}
    a = expected_value(0, 3, 5)
    assert _result(tmp_path, "a") == a and _result(tmp_path, "b") == expected_value(a, 4, 2)
    # the previous outputs were moved aside, not deleted, and the manifest says so
    assert _result(tmp_path, "a", "a.old-1") == old_a and _result(tmp_path, "b", "b.old-1") == old_b
    moved = manifest["stages"]["a"]["moved_aside"]
    assert moved[0]["path"] == "stages/a.old-1" and "config add" in moved[0]["reason"]
    assert "inputs start" in manifest["stages"]["b"]["moved_aside"][0]["reason"]

    # only the downstream stage's config changes: the upstream one is kept
    manifest = run_pipeline(parse_pipeline(_pipeline(tmp_path, a={"add": 5}, b={"steps": 2})))
    assert manifest["last_actions"] == {"a": "skipped", "b": "re-ran"}
    assert _result(tmp_path, "b") == expected_value(a, 2, 2)
    assert (tmp_path / "pipe" / "stages" / "b.old-2").is_dir()


def test_changed_input_file_or_changed_output_reruns(tmp_path):
    start = tmp_path / "start.txt"
    start.write_text("2\n")
    run_pipeline(parse_pipeline(_pipeline(tmp_path, start=str(start))))
    assert _result(tmp_path, "a") == expected_value(2, 3, 1)
    start.write_text("7\n")
    manifest = run_pipeline(parse_pipeline(_pipeline(tmp_path, start=str(start))))
    assert manifest["last_actions"] == {"a": "re-ran", "b": "re-ran"}
    assert _result(tmp_path, "a") == expected_value(7, 3, 1)

    # someone edits a finished stage's output: the stage no longer has what the manifest records
    (tmp_path / "pipe" / "stages" / "b" / "result.txt").write_text("0\n")
    manifest = run_pipeline(parse_pipeline(_pipeline(tmp_path, start=str(start))))
    assert manifest["last_actions"] == {"a": "skipped", "b": "re-ran"}
    assert "outputs changed" in manifest["stages"]["b"]["moved_aside"][-1]["reason"]
    assert _result(tmp_path, "b", "b.old-2") == 0  # the edited copy is kept


def _cli(config: pathlib.Path, *, block: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("R1JAX_TEST_BLOCK", None)
    if block:
        env["R1JAX_TEST_BLOCK"] = block
    return subprocess.Popen([sys.executable, "-m", "r1jax.cli", "pipeline", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when_blocked(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILLs the child once the kind prints that it blocked on stdout (the event, not a timer)."""
    from procutil import kill_on_log_line  # here: the child pipelines import this file to register its kinds

    try:
        kill_on_log_line(proc, marker, stream=proc.stdout)
    finally:
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("block", ["b:2", "a:3"])
def test_sigkill_mid_stage_resumes_and_ends_as_an_uninterrupted_run(tmp_path, block):
    """SIGKILL after a checkpoint of stage b (a done) or after a's last step (before it reports done)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    for d in (full, cut):
        d.mkdir()
        (d / "pipeline.yaml").write_text(yaml.safe_dump(_pipeline(d, imports=True)))
    proc = _cli(full / "pipeline.yaml")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    stage, step = block.split(":")
    _kill_when_blocked(_cli(cut / "pipeline.yaml", block=block), f"BLOCKED {stage} {step}")
    killed = read_manifest(cut / "pipe")
    assert killed["stages"][stage]["status"] == "running"
    assert killed["stages"]["b"]["status"] == ("running" if stage == "b" else "pending")

    proc = _cli(cut / "pipeline.yaml")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"stage {stage}: resuming" in err
    final = read_manifest(cut / "pipe")
    assert final["last_actions"][stage] == "resumed"
    if stage == "b":
        assert final["last_actions"]["a"] == "skipped"
    # resumed, not restarted: every step ran exactly once across the two processes
    assert _log(cut, "a") == [1, 2, 3] and _log(cut, "b") == [1, 2, 3, 4]
    reference = read_manifest(full / "pipe")
    for name in ("a", "b"):
        assert final["stages"][name]["status"] == "done"
        assert final["stages"][name]["outputs"] == reference["stages"][name]["outputs"]
        assert final["stages"][name]["fingerprint"] == reference["stages"][name]["fingerprint"]
    assert not list((cut / "pipe" / "stages").glob("*.old-*"))  # nothing was moved aside: it resumed


def test_a_failed_stage_is_recorded_and_resumed(tmp_path):
    class Flaky(CountKind):
        failures = [1]

        def run(self, ctx):
            if self.failures:
                self.failures.pop()
                (ctx.out_dir / "partial.txt").write_text("work\n")
                raise RuntimeError("disk full")
            return super().run(ctx)

    register_stage_kind("test_flaky", Flaky, overwrite=True)
    data = _pipeline(tmp_path)
    data["stages"][1]["kind"] = "test_flaky"
    with pytest.raises(RuntimeError, match="disk full"):
        run_pipeline(parse_pipeline(data))
    entry = read_manifest(tmp_path / "pipe")["stages"]["b"]
    assert entry["status"] == "failed" and entry["error"] == "RuntimeError: disk full"
    manifest = run_pipeline(parse_pipeline(data))
    assert manifest["last_actions"] == {"a": "skipped", "b": "resumed"}
    assert (tmp_path / "pipe" / "stages" / "b" / "partial.txt").is_file()  # the same directory, continued
    assert "error" not in manifest["stages"]["b"] and manifest["stages"]["b"]["status"] == "done"


def _bad(tmp_path, edit):
    data = _pipeline(tmp_path)
    edit(data)
    return data


def _stage(data, name):
    return next(s for s in data["stages"] if s["name"] == name)


BAD = {
    "missing stage": (lambda d: _stage(d, "b")["inputs"].update(start="stages.zero.result"),
                      "stage b: inputs.start: stages.zero.result refers to a missing stage 'zero'"),
    "missing output": (lambda d: _stage(d, "b")["inputs"].update(start="stages.a.model"),
                       "stage b: inputs.start: stages.a.model: stage 'a' (kind test_count) has no output 'model'"),
    "later stage": (lambda d: _stage(d, "a").update(inputs={"start": "stages.b.result"}),
                    "stage a: inputs.start: stages.b.result refers to stage 'b', which comes later"),
    "cycle on itself": (lambda d: _stage(d, "b")["inputs"].update(start="stages.b.result"),
                        "stage b: inputs.start: stages.b.result refers to the stage itself (a cycle)"),
    "bad reference": (lambda d: _stage(d, "b")["inputs"].update(start="stages.a"),
                      "stage b: inputs.start: 'stages.a' is not a reference"),
    "unknown kind": (lambda d: _stage(d, "b").update(kind="sftt"),
                     "stage b: kind: unknown stage kind 'sftt'; known kinds: "),
    "duplicate name": (lambda d: _stage(d, "b").update(name="a"),
                       "stage a: name: duplicate stage name (stages[0] and stages[1])"),
    "missing required input": (lambda d: _stage(d, "b").update(kind="test_needs"),
                               "stage b: inputs.model: missing required input of kind test_needs"),
    "unknown input": (lambda d: _stage(d, "b")["inputs"].update(data="x.jsonl"),
                      "stage b: inputs.data: kind test_count takes no input 'data'; its inputs: start"),
    "missing path": (lambda d: _stage(d, "a").update(inputs={"start": "/nonexistent/start.txt"}),
                     "stage a: inputs.start: no such file or directory: /nonexistent/start.txt"),
    "kind check": (lambda d: _stage(d, "b")["config"].update(steps=0),
                   "stage b: config.steps: must be an integer >= 1, got 0"),
    "unknown top key": (lambda d: d.update(stges=[]), "unknown key 'stges' (did you mean 'stages'?)"),
    "unknown stage key": (lambda d: _stage(d, "a").update(input={}),
                          "stage a: unknown key 'input' (did you mean 'inputs'?)"),
    "bad name": (lambda d: _stage(d, "a").update(name="a.b"), "stages[0].name: expected a name matching"),
    "unknown eval key": (lambda d: d.update(eval={"formats": "x"}), "eval: unknown key 'formats'"),
    "eval model": (lambda d: d.update(eval={"config": {"model": {"path": "x"}}}), "eval.config.model: "),
    "eval config": (lambda d: d.update(eval={"config": {"rollout": {"max_new_tokens": 0}}}),
                    "eval.config: rollout.max_new_tokens: 0 is out of range"),
}


class NeedsModel(CountKind):
    inputs = ("model",)


register_stage_kind("test_needs", NeedsModel, overwrite=True)


@pytest.mark.parametrize("case", list(BAD))
def test_config_errors_name_the_stage_and_field_before_any_work(tmp_path, case):
    edit, message = BAD[case]
    with pytest.raises(ConfigError) as err:
        parse_pipeline(_bad(tmp_path, edit))
    text = str(err.value)
    assert message in text and "\n" not in text
    if case == "unknown kind":
        assert "rl" in text.split("known kinds: ")[1] and "test_count" in text
    assert not (tmp_path / "pipe").exists()


def test_overrides_address_stages_by_name(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_pipeline(tmp_path)))
    p = load_pipeline(path, ["stages.b.config.steps=7", "seed=3"])
    assert p.stage("b").config["steps"] == 7 and p.seed == 3 and p.stage("a").config["steps"] == 3
    with pytest.raises(ConfigError, match="override stages.c.config.steps: no stage named 'c'; stages: a, b"):
        load_pipeline(path, ["stages.c.config.steps=7"])


def test_an_override_of_one_stage_leaves_a_yaml_alias_in_another_alone(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"out_dir: {tmp_path / 'pipe'}\n"
                    "stages:\n"
                    "  - {name: a, kind: test_count, config: &cfg {steps: 2, add: 1}}\n"
                    "  - {name: b, kind: test_count, inputs: {start: stages.a.result}, config: *cfg}\n")
    p = load_pipeline(path, ["stages.b.config.add=9"])
    assert p.stage("a").config == {"steps": 2, "add": 1} and p.stage("b").config == {"steps": 2, "add": 9}


def test_two_runners_never_share_a_pipeline_directory(tmp_path):
    import fcntl

    (tmp_path / "pipe").mkdir()
    with open(tmp_path / "pipe" / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running `r1jax pipeline` holds
        with pytest.raises(ConfigError, match="another r1jax pipeline is running in"):
            run_pipeline(parse_pipeline(_pipeline(tmp_path)))
    assert not (tmp_path / "pipe" / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ the table


def _summary(p, ci=None, **kw):
    s = {"pass@1": p, "cons@k": 0.5, "k": 4, "format_rate": 0.9, "response_length": 12.25, **kw}
    return s if ci is False else {**s, "pass@1_ci": ci}


def _manifest(**summaries) -> dict:
    """A hand-made manifest: one done stage per summary (None: a stage that made no model)."""
    return {"order": list(summaries),
            "stages": {n: {"status": "done", "label": n.upper(), **({"eval": {"summary": s}} if s else {})}
                       for n, s in summaries.items()}}


def test_the_table_shows_the_pass1_interval_and_formats_old_manifests_without_it():
    table = format_table(_manifest(zero=_summary(0.865, [0.83, 0.9]), cold=None, dev1=_summary(0.1, [-0.12, 0.32]),
                                   dev2=_summary(0.7, None), old=_summary(0.25, False)))
    lines = table.splitlines()
    assert lines[0].split() == ["stage", "model", "status", "pass@1", "cons@4", "format", "length"]
    rows = {line.split()[0]: line for line in lines[2:7]}
    assert "0.865 [0.83, 0.90]" in rows["zero"] and "0.100 [-0.12, 0.32]" in rows["dev1"]
    assert rows["zero"].split()[3:] == ["0.865", "[0.83,", "0.90]", "0.500", "0.900", "12.2"]
    assert rows["cold"].split()[2:] == ["done", "-", "-", "-", "-"]
    assert rows["dev2"].split()[3:] == ["0.700", "0.500", "0.900", "12.2"]  # one problem: no interval
    assert rows["old"].split()[3:] == ["0.250", "0.500", "0.900", "12.2"]  # written before the key existed
    assert len({len(line) for line in lines[:7]}) == 1  # the columns line up
    assert lines[7] == "pass@1 [low, high]: 95% Student-t interval over the held-out problems" and len(lines) == 8

    # a manifest without any interval formats exactly as before the column was widened
    old = format_table(_manifest(zero=_summary(0.865, False), cold=None))
    assert old.splitlines() == [
        "stage           model       status     pass@1   cons@4  format  length",
        "-" * 70,
        "zero            ZERO        done        0.865    0.500   0.900    12.2",
        "cold            COLD        done            -        -       -       -"]


def test_the_stage_plot_draws_the_pass1_interval_as_an_error_bar(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    errorbar = matplotlib.axes.Axes.errorbar

    def spy(ax, x, y, *args, **kw):
        calls.append((ax.get_title(), list(x), list(y), kw["yerr"]))
        return errorbar(ax, x, y, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    out = plot_stages(_manifest(zero=_summary(0.5, [0.25, 0.875]), old=_summary(0.25, False),
                                dev=_summary(0.75, [0.5, 1.0])), tmp_path / "stages.png")
    assert out == tmp_path / "stages.png" and out.stat().st_size > 0
    assert calls == [("pass@1 (held-out)", [0, 2], [0.5, 0.75], [[0.25, 0.25], [0.375, 0.25]])]
    calls.clear()
    assert plot_stages(_manifest(old=_summary(0.25, False)), tmp_path / "old.png").stat().st_size > 0
    assert calls == []  # an old manifest: bars without error bars
