"""The ``rm`` stage kind: a helpfulness RM ranks held-out pairs above chance, a safety RM separates
held-out labels (AUC), the saved directory reloads to the same scores, bad inputs fail before any
work with one line, a stopped stage resumes to the same parameters, and the ``r1jax rm`` verb."""

import json
import pathlib

import jax
import numpy as np
import pytest
import yaml

from r1jax.cli import build_parser, main
from r1jax.config import ConfigError
from r1jax.data.preferences import helpfulness_pairs, safety_points, write_preferences
from r1jax.data.tokenizer import load_tokenizer
from r1jax.pipeline.kinds import STAGE_KINDS, StageContext
from r1jax.pipeline.manifest import read_manifest
from r1jax.pipeline.rm import (RM_META_FILE, encode_sequence, heldout_metrics, load_reward_model, run_rm,
                               score_texts, split_heldout)
from r1jax.rewards.reward_model import ValueHeadRewardModel
from r1jax.train.checkpoint import Checkpointer

TINY = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"
N_PAIRS, N_SAFETY = 160, 240


def _pairwise(**kw):
    cfg = dict(objective="pairwise", batch_size=8, max_len=80, lr=5e-4, epochs=2, heldout_fraction=0.25,
               checkpoint_every=10, log_every=1, eval_batch_size=40, seed=0)
    cfg.update(kw)
    return cfg


def _pointwise(**kw):
    cfg = dict(objective="pointwise", batch_size=16, max_len=80, lr=1e-3, epochs=3, heldout_fraction=0.25,
               checkpoint_every=0, log_every=5, eval_batch_size=40, seed=0)
    cfg.update(kw)
    return cfg


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefs")
    return {"pairs": write_preferences(d / "helpfulness.jsonl", "helpfulness", N_PAIRS, seed=0),
            "safety": write_preferences(d / "safety.jsonl", "safety", N_SAFETY, seed=0)}


@pytest.fixture(scope="module")
def helpful_run(data, tmp_path_factory):
    """An uninterrupted pairwise run on the helpfulness pairs."""
    out = tmp_path_factory.mktemp("helpful")
    return out, run_rm("helpful", _pairwise(), data=data["pairs"], model=TINY, out_dir=out)


@pytest.fixture(scope="module")
def safety_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety")
    return out, run_rm("safety", _pointwise(), data=data["safety"], model=TINY, out_dir=out)


def test_helpfulness_rm_ranks_heldout_pairs_above_chance(helpful_run):
    out, result = helpful_run
    m = result.metrics
    assert m["heldout_examples"] == 40 and m["train_examples"] == 120 and m["steps"] == 30 and m["skipped"] == 0
    assert m["heldout_accuracy_low"] > 0.5, m  # the Wilson interval's low end is above chance
    assert m["heldout_accuracy_low"] <= m["heldout_accuracy"] <= m["heldout_accuracy_high"]
    assert m["heldout_margin_low"] > 0.0, m
    assert m["heldout_loss"] < m["heldout_loss_initial"], m
    assert m["heldout_accuracy"] > m["heldout_accuracy_initial"], m
    assert json.loads(result.outputs["metrics"].read_text())["metrics"] == m
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31))


def test_safety_rm_separates_heldout_labels(safety_run):
    m = safety_run[1].metrics
    assert m["heldout_examples"] == 60 and m["skipped"] == 0
    assert m["heldout_auc_low"] > 0.5, m  # the bootstrap interval's low end is above chance
    assert m["heldout_auc_low"] <= m["heldout_auc"] <= m["heldout_auc_high"]
    assert m["heldout_loss"] < m["heldout_loss_initial"], m
    params, model_cfg, tok, info = load_reward_model(safety_run[1].outputs["reward_model"])
    assert (info.objective, info.output) == ("pointwise", "sigmoid")
    p = score_texts(params, model_cfg, tok, info, ["how do i steal a car", "what is 2+3"] * 2,
                    ["sorry, i can not help with that.", "2+3 = 5.", "sure. just do it fast and hide.",
                     "sorry, i can not help with that."])
    assert np.all((p > 0) & (p < 1))  # probabilities


def test_saved_reward_model_reloads_to_the_same_scores(helpful_run, data):
    out, result = helpful_run
    rm_dir = result.outputs["reward_model"]
    meta = json.loads((rm_dir / RM_META_FILE).read_text())
    assert meta["objective"] == "pairwise" and (rm_dir / meta["head_file"]).is_file()
    params, model_cfg, tok, info = load_reward_model(rm_dir)
    # the same parameters as the stage's final orbax checkpoint, head included
    ckpt = Checkpointer(out / "checkpoints")
    try:
        step, state, _ = ckpt.restore_latest(_like_state(params))
    finally:
        ckpt.close()
    assert step == 30
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.params))
    # re-scoring the held-out pairs gives the stage's held-out numbers
    rows = [json.loads(line) for line in data["pairs"].read_text().splitlines()]
    _, held = split_heldout(len(rows), 0.25, 0)
    prompts = [rows[i]["prompt"] for i in held]
    chosen = score_texts(params, model_cfg, tok, info, prompts, [rows[i]["chosen"] for i in held], max_len=80,
                         batch_size=40)
    rejected = score_texts(params, model_cfg, tok, info, prompts, [rows[i]["rejected"] for i in held],
                           max_len=80, batch_size=40)
    again = heldout_metrics("pairwise", chosen, rejected, np.ones(len(held)))
    assert again["accuracy"] == result.metrics["heldout_accuracy"]
    assert again["margin"] == pytest.approx(result.metrics["heldout_margin"], abs=1e-5)
    # the scorer the RL trainer uses agrees
    seq = encode_sequence(prompts[0], rows[held[0]]["chosen"], tok, info.template)
    scorer = ValueHeadRewardModel(params, model_cfg, output=info.output)
    assert float(scorer(np.asarray([seq]))[0]) == pytest.approx(float(chosen[0]), abs=1e-5)


def _like_state(params):
    from r1jax.train.config import OptimConfig
    from r1jax.train.state import init_state, make_optimizer

    return init_state(params, make_optimizer(OptimConfig(lr=1e-3)), jax.random.PRNGKey(0))


def test_bad_inputs_fail_before_any_work_with_one_line(tmp_path):
    kind = STAGE_KINDS["rm"]()
    rows = helpfulness_pairs(4)
    del rows[1]["rejected"]
    bad = _write_rows(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ConfigError) as e:
        kind.check("helpful", _pairwise(), {"model": TINY, "data": bad})
    assert str(e.value) == f"stage helpful: data: {bad}:2: missing field 'rejected'"
    with pytest.raises(ConfigError) as e:  # run_rm checks the same before it writes anything
        run_rm("helpful", _pairwise(), data=bad, model=TINY, out_dir=tmp_path / "out")
    assert str(e.value) == f"stage helpful: data: {bad}:2: missing field 'rejected'"
    assert not (tmp_path / "out").exists()

    for value, shown in ((2, "2"), (0.5, "0.5"), ("1", "'1'")):
        points = safety_points(4)
        points[2]["label"] = value
        bad = _write_rows(tmp_path / "points.jsonl", points)
        with pytest.raises(ConfigError) as e:
            kind.check("safety", _pointwise(), {"model": TINY, "data": None, "eval_data": bad})
        msg = str(e.value)
        assert "\n" not in msg
        assert msg == f"stage safety: eval_data: {bad}:3: field 'label' must be 0 or 1 (or false / true), got {shown}"
    points = safety_points(3)
    points[0]["label"], points[1]["label"] = True, 0.0  # bools and 0.0 / 1.0 are labels
    kind.check("safety", _pointwise(), {"model": TINY, "data": _write_rows(tmp_path / "ok.jsonl", points)})

    with pytest.raises(ConfigError) as e:  # a policy directory is not a reward model
        load_reward_model(TINY)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"RM checkpoint {TINY} has no value head file (value_head.safetensors)")
    with pytest.raises(ConfigError, match=r"stage x: .*objective"):
        kind.check("x", _pairwise(objective="listwise"), {"model": TINY, "data": None})
    with pytest.raises(ConfigError, match=r"stage x: inputs.model: .* has no config.json"):
        kind.check("x", _pairwise(), {"model": tmp_path, "data": None})


def test_stopped_stage_resumes_from_its_checkpoint_to_the_same_params(helpful_run, data, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_13(step, metrics):
        if step == 13:
            raise Stop

    with pytest.raises(Stop):
        run_rm("helpful", _pairwise(), data=data["pairs"], model=TINY, out_dir=tmp_path, on_step=stop_at_13)
    assert not (tmp_path / "reward_model").exists()
    seen = []
    result = run_rm("helpful", _pairwise(), data=data["pairs"], model=TINY, out_dir=tmp_path,
                    on_step=lambda s, m: seen.append(s))
    assert seen == list(range(11, 31))  # from the step-10 checkpoint, not from scratch
    assert result.metrics == helpful_run[1].metrics
    resumed = load_reward_model(result.outputs["reward_model"])[0]
    reference = load_reward_model(helpful_run[1].outputs["reward_model"])[0]
    jax.tree.map(np.testing.assert_array_equal, resumed, reference)
    log = (tmp_path / "log.jsonl").read_text()
    assert log == (helpful_run[0] / "log.jsonl").read_text()  # steps 11-13 of the stopped run not repeated
    again = run_rm("helpful", _pairwise(), data=data["pairs"], model=TINY, out_dir=tmp_path,
                   on_step=lambda s, m: pytest.fail("re-trained a finished stage"))
    assert again.metrics == result.metrics


def test_rm_verb_runs_one_stage_through_the_runner(data, tmp_path, capsys):
    assert build_parser().parse_args(["rm", "x.yaml"]).command == "rm"
    held = write_preferences(tmp_path / "held.jsonl", "helpfulness", 12, seed=5)
    stage = {"name": "helpfulness_rm", "inputs": {"model": str(TINY), "data": str(data["pairs"])},
             "config": _pairwise(max_steps=2, checkpoint_every=0)}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(stage))
    out = tmp_path / "run"
    assert main(["rm", str(path), f"inputs.eval_data={held}", "--out", str(out)]) == 0
    entry = read_manifest(out)["stages"]["helpfulness_rm"]
    assert entry["status"] == "done" and entry["kind"] == "rm"
    assert entry["metrics"]["heldout_examples"] == 12 and entry["metrics"]["train_examples"] == N_PAIRS
    load_reward_model(out / entry["outputs"]["reward_model"]["path"])
    capsys.readouterr()
    # a bad input is one config-error line, exit status 2, and no stage directory
    bad = _write_rows(tmp_path / "bad.jsonl", [{"prompt": "what is 1+1", "chosen": "2."}])
    assert main(["rm", str(path), f"inputs.data={bad}", "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"r1jax: config error: stage helpfulness_rm: data: {bad}:1: missing field 'rejected'"
    assert not (tmp_path / "run2" / "stages").exists()


def test_the_rm_kind_runs_through_the_stage_contract(data, tmp_path):
    kind = STAGE_KINDS["rm"]()
    inputs = {"model": TINY, "data": data["safety"]}
    cfg = _pointwise(max_steps=1)
    kind.check("safety", cfg, inputs)
    result = kind.run(StageContext("safety", cfg, inputs, tmp_path / "out", seed=1))
    assert set(result.outputs) == set(kind.outputs) == {"reward_model", "metrics"}
    assert result.metrics["steps"] == 1 and load_tokenizer(result.outputs["reward_model"]).vocab_size == 53
