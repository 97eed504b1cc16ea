"""The ``sft`` stage kind: held-out loss goes down, resume after a stop gives the same parameters,
packed and padded rows give the same loss, bad data fails before work, the cold-start format."""

import json
import pathlib

import jax
import numpy as np
import pytest

from r1jax.config import ConfigError
from r1jax.data.templates import format_cold_start, format_r1_zero
from r1jax.data.tokenizer import load_tokenizer
from r1jax.models import load_pretrained
from r1jax.pipeline.kinds import STAGE_KINDS, StageContext
from r1jax.pipeline.sft import (ColdStartFormat, encode_examples, make_batch, nll_sum_fn, parse_sft_config,
                                r1_zero_to_cold_start, run_sft)
from r1jax.rewards import format_strict

TINY = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"
MODEL = dict(architecture="llama", hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
             num_kv_heads=2, max_position_embeddings=64, tie_word_embeddings=True)


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(10, 50, size=2))
        out.append({"prompt": f"{a}+{b}", "completion": format_r1_zero(f"{a} plus {b}", str(a + b))})
    return out


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(**kw):
    cfg = dict(model={"config": MODEL, "tokenizer": str(TINY)}, batch_size=8, max_len=48, lr=3e-3,
               checkpoint_every=4, log_every=1, heldout_fraction=0.2, eval_batch_size=8,
               format_eval={"num_prompts": 2, "max_new_tokens": 16})
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("sft") / "data.jsonl", _rows(40))


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    """An uninterrupted 12-step run from scratch."""
    out = tmp_path_factory.mktemp("full")
    return out, run_sft("cold_start", _config(max_steps=12), data=data, out_dir=out, seed=3)


def test_sft_lowers_heldout_loss_and_exports_the_model(full_run):
    out, result = full_run
    m = result.metrics
    assert m["heldout_examples"] == 8 and m["train_examples"] == 32 and m["steps"] == 12
    assert m["heldout_loss"] < m["heldout_loss_initial"] - 0.5, m
    assert 0.0 <= m["format_rate"] <= 1.0
    params, cfg = load_pretrained(result.outputs["model"])
    assert cfg.hidden_size == 32 and cfg.vocab_size == load_tokenizer(TINY).vocab_size
    assert load_tokenizer(result.outputs["model"]).encode("<think>1") == load_tokenizer(TINY).encode("<think>1")
    assert json.loads(result.outputs["metrics"].read_text())["metrics"] == m


def test_sft_resumes_after_a_stop_to_the_same_params(full_run, data, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_10(step, metrics):
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        run_sft("cold_start", _config(max_steps=12), data=data, out_dir=tmp_path, seed=3, on_step=stop_at_10)
    assert not (tmp_path / "model").exists()
    seen = []
    result = run_sft("cold_start", _config(max_steps=12), data=data, out_dir=tmp_path, seed=3,
                     on_step=lambda s, m: seen.append(s))
    assert seen == [9, 10, 11, 12]  # resumed from the step-8 checkpoint, not from scratch
    resumed, _ = load_pretrained(result.outputs["model"])
    reference, _ = load_pretrained(full_run[1].outputs["model"])
    jax.tree.map(np.testing.assert_array_equal, resumed, reference)
    assert result.metrics == full_run[1].metrics
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))  # steps 9, 10 of the stopped run not repeated
    full_log = [json.loads(line) for line in (full_run[0] / "log.jsonl").read_text().splitlines()]
    assert log == full_log
    # a third call finds the finished stage and does nothing
    again = run_sft("cold_start", _config(max_steps=12), data=data, out_dir=tmp_path, seed=3,
                    on_step=lambda s, m: pytest.fail("re-trained a finished stage"))
    assert again.metrics == result.metrics


def test_packed_and_padded_rows_give_the_same_loss(full_run, data):
    params, model_cfg = load_pretrained(full_run[1].outputs["model"])
    tok = load_tokenizer(TINY)
    padded_cfg = parse_sft_config("s", _config(packing=False, max_len=64))
    packed_cfg = parse_sft_config("s", _config(packing=True, pack_rows=4, max_len=64))
    examples = encode_examples(data, tok, padded_cfg, stage="s")
    idx = list(range(8))
    padded = make_batch(examples, idx, padded_cfg, tok.pad_id)
    packed = make_batch(examples, idx, packed_cfg, tok.pad_id)
    assert packed.tokens.shape == (4, 64) and int(packed.segment_ids.max()) == 2  # really packed
    assert int(padded.loss_mask.sum()) == int(packed.loss_mask.sum())
    nll = nll_sum_fn(model_cfg, padded_cfg.kernels)
    (s1, n1), (s2, n2) = nll(params, padded), nll(params, packed)
    assert int(n1) == int(n2)
    assert abs(float(s1) / int(n1) - float(s2) / int(n2)) <= 1e-5
    assert float(s1) / int(n1) > 0.1  # a trained but imperfect model: the comparison is not 0 == 0


def test_bad_dataset_field_is_one_error_naming_stage_file_line_and_field(tmp_path):
    rows = _rows(4)
    del rows[2]["completion"]
    bad = _write(tmp_path / "bad.jsonl", rows)
    kind = STAGE_KINDS["sft"]()
    with pytest.raises(ConfigError) as e:
        kind.check("cold_start", _config(), {"data": bad})
    msg = str(e.value)
    assert "\n" not in msg and msg == f"stage cold_start: data: {bad}:3: missing field 'completion'"
    rows = _rows(2)
    rows[1]["completion"] = 5
    with pytest.raises(ConfigError, match=r"stage x: eval_data: .*:2: field 'completion' must be a string"):
        kind.check("x", _config(), {"data": None, "eval_data": _write(tmp_path / "b2.jsonl", rows)})
    with pytest.raises(ConfigError, match=r"stage x: .*lr"):
        kind.check("x", _config(lr=-1), {"data": None})
    with pytest.raises(ConfigError, match="stage x: no model"):
        kind.check("x", {}, {"data": None})
    long = _write(tmp_path / "long.jsonl", [{"prompt": "1+1", "completion": "9" * 60}])
    with pytest.raises(ConfigError, match=r"stage x: data: .*long.jsonl:1: example is 65 tokens"):
        encode_examples(long, load_tokenizer(TINY), parse_sft_config("x", _config()), stage="x")


def test_the_sft_kind_runs_through_the_stage_contract(full_run, data, tmp_path):
    """Fine-tunes the model the first run exported, through StageKind.run."""
    kind = STAGE_KINDS["sft"]()
    cfg = {"max_steps": 2, "batch_size": 8, "max_len": 48, "format_eval": {"num_prompts": 0}}
    held = _write(tmp_path / "held.jsonl", _rows(5, seed=9))
    inputs = {"data": data, "model": full_run[1].outputs["model"], "eval_data": held}
    kind.check("rs_sft", cfg, inputs)
    result = kind.run(StageContext("rs_sft", cfg, inputs, tmp_path / "out", seed=1))
    assert set(result.outputs) == set(kind.outputs)
    m = result.metrics
    assert np.isnan(m["format_rate"]) and m["steps"] == 2
    assert m["train_examples"] == 40 and m["heldout_examples"] == 5  # eval_data given: nothing held out of data
    assert m["heldout_loss_initial"] < full_run[1].metrics["heldout_loss_initial"]  # started from the trained model
    assert (result.outputs["model"] / "tokenizer.json").is_file()


def test_cold_start_format_round_trips_and_fits_the_tiny_tokenizer():
    fmt = ColdStartFormat()
    assert fmt.render("r", "s") == format_cold_start("r", "s")  # the paper-format function of r1jax.data
    for reasoning, summary in [("12 plus 30 is 42", "<answer> 42 </answer>"), ("a\nb", ""), ("x", "y </think> z")]:
        assert fmt.parse(fmt.render(reasoning, summary)) == (reasoning, summary)
    assert fmt.parse("no tokens here") is None
    with pytest.raises(ValueError, match="delimiter"):
        fmt.render("bad </think> reasoning", "s")
    tok = load_tokenizer(TINY)
    with pytest.raises(ConfigError, match=r"cold_start.newline: '\\n' is not encodable"):
        fmt.check_encodable(tok)
    tiny = ColdStartFormat(newline=" ")
    tiny.check_encodable(tok)
    text = r1_zero_to_cold_start(format_r1_zero("12 plus 30", "42"), tiny)
    assert text == "<think> 12 plus 30 </think>  <answer> 42 </answer>"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tiny.parse(text) == ("12 plus 30", "<answer> 42 </answer>")
    assert format_strict("", text) == 1.0  # the rule rewards still score it
    assert r1_zero_to_cold_start("just 42") is None
