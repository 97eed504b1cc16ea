"""Stage datasets, JSONL or Parquet: field checks name stage, input, file, line or row and field; the stage
checks and the SFT encoding take either format; atomic writes; digests."""

import hashlib
import json
import pathlib
import sys

import pytest

from r1jax.config import ConfigError
from r1jax.pipeline.datasets import check_rows, read_jsonl, read_rows, write_json, write_jsonl
from r1jax.pipeline.manifest import digest_path


def test_rows_round_trip_with_line_numbers(tmp_path):
    rows = [{"prompt": "2+2", "completion": "<think> 二 </think>", "reference": 4}, {"prompt": "x", "completion": ""}]
    p = write_jsonl(tmp_path / "d" / "data.jsonl", rows)
    assert p.read_text(encoding="utf-8").count("\n") == 2 and "二" in p.read_text(encoding="utf-8")
    assert read_jsonl(p, ("prompt", "completion")) == rows
    with p.open("a") as f:
        f.write("\n   \n" + json.dumps({"prompt": "y", "completion": "z"}) + "\n")
    got, lines = read_jsonl(p, ("prompt",), return_lines=True)
    assert lines == [1, 2, 5] and got[2] == {"prompt": "y", "completion": "z"}
    assert [x.name for x in p.parent.iterdir()] == ["data.jsonl"]  # no temporary file left


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"}', "missing field 'completion'"),
    ('{"prompt": "a", "completion": null}', "missing field 'completion'"),
    ('{"prompt": "a", "completion": 3}', "field 'completion' must be a string, got int"),
    ('["a", "b"]', "expected a JSON object, got list"),
    ('{"prompt": "a", "completion": ', "malformed JSON"),
])
def test_a_bad_row_is_one_line_naming_stage_input_file_line_and_field(tmp_path, line, message):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"prompt": "ok", "completion": "ok"}) + "\n\n" + line + "\n")
    with pytest.raises(ConfigError) as e:
        read_jsonl(p, ("prompt", "completion"), stage="cold_start", input_name="data")
    msg = str(e.value)
    assert msg.startswith(f"stage cold_start: data: {p}:3: ") and message in msg and "\n" not in msg


def test_any_type_fields_missing_and_empty_files(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "reference": {"language": "en"}},
                                           {"prompt": "b", "reference": 7}])
    assert len(read_jsonl(p, ("prompt", "reference"), any_type=("reference",))) == 2
    with pytest.raises(ConfigError, match="field 'reference' must be a string"):
        read_jsonl(p, ("prompt", "reference"))
    check_rows(None, ("prompt",), stage="s", input_name="prompts")  # made later by an earlier stage: skipped
    with pytest.raises(ConfigError, match=r"^stage s: prompts: .*nope.jsonl: file does not exist$"):
        check_rows(tmp_path / "nope.jsonl", ("prompt",), stage="s", input_name="prompts")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="e.jsonl: no rows"):
        read_jsonl(empty, stage="s")
    assert read_jsonl(empty, allow_empty=True) == []


def test_digests(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert digest_path(f) == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.safetensors").write_bytes(b"\x00\x01")
    first = digest_path(d)
    assert first == digest_path(d)
    (d / "w.safetensors").write_bytes(b"\x00\x02")
    assert digest_path(d) != first
    (d / "w.safetensors").write_bytes(b"\x00\x01")
    (d / "w.safetensors").rename(d / "v.safetensors")
    assert digest_path(d) != first  # names count, not only bytes
    with pytest.raises(FileNotFoundError):
        digest_path(tmp_path / "missing")
    write_json(tmp_path / "m.json", {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1.5], "b": 1}


# ------------------------------------------------------------------------------------------------ Parquet

TINY = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"


def _parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_rows_are_read_like_jsonl_rows(tmp_path):
    cols = {"prompt": ["2+2", "x"], "completion": ["<think> 二 </think>", ""], "reference": [4, 7]}
    p = _parquet(tmp_path / "d.parquet", cols)
    rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    assert read_rows(p, ("prompt", "completion", "reference"), any_type=("reference",)) == rows
    j = write_jsonl(tmp_path / "d.jsonl", rows)
    assert read_rows(j, ("prompt", "completion")) == rows
    assert read_rows(p, ("prompt",), return_where=True) == (rows, [f"{p}: row 0", f"{p}: row 1"])
    assert read_rows(j, ("prompt",), return_where=True) == (rows, [f"{j}:1", f"{j}:2"])
    nested = _parquet(tmp_path / "n.PARQUET", {"prompt": ["a"], "reference": [{"language": "en", "n": 2}]})
    assert read_rows(nested, ("prompt", "reference"), any_type=("reference",)) == [
        {"prompt": "a", "reference": {"language": "en", "n": 2}}]


@pytest.mark.parametrize("columns, message", [
    ({"prompt": ["ok", "a"]}, "row 0: missing field 'completion'"),  # no such column: the first row lacks it
    ({"prompt": ["ok", "a"], "completion": ["ok", None]}, "row 1: missing field 'completion'"),
    ({"prompt": ["ok", "a"], "completion": ["ok", "b"], "reference": [1, 2]},
     "row 0: field 'reference' must be a string, got int"),
    ({"prompt": ["ok", "a"], "completion": ["ok", "b"], "reference": [b"x", b"y"]},
     "row 0: field 'reference' must be a JSON value (string, number, bool, list or object), got bytes"),
])
def test_a_bad_parquet_row_is_one_line_naming_stage_input_file_row_and_field(tmp_path, columns, message):
    import pyarrow as pa

    assert pa  # pyarrow is a test dependency: no skip
    p = _parquet(tmp_path / "x.parquet", columns)
    fields = ("prompt", "completion") + (("reference",) if "reference" in columns else ())
    any_type = ("reference",) if "bytes" in message else ()
    with pytest.raises(ConfigError) as e:
        read_rows(p, fields, stage="cold_start", input_name="data", any_type=any_type)
    assert str(e.value) == f"stage cold_start: data: {p}: {message}"


def test_parquet_files_that_are_not_parquet_empty_or_missing_and_no_pyarrow(tmp_path, monkeypatch):
    fake = tmp_path / "f.parquet"
    fake.write_text('{"prompt": "a"}\n')
    with pytest.raises(ConfigError, match=r"^stage s: prompts: .*f\.parquet: cannot be read as Parquet: ") as e:
        read_rows(fake, ("prompt",), stage="s", input_name="prompts")
    assert "\n" not in str(e.value)
    empty = _parquet(tmp_path / "e.parquet", {"prompt": []})
    assert read_rows(empty, allow_empty=True) == []
    with pytest.raises(ConfigError, match=r"e\.parquet: no rows$"):
        read_rows(empty, stage="s")
    with pytest.raises(ConfigError, match=r"^stage s: prompts: .*nope\.parquet: file does not exist$"):
        check_rows(tmp_path / "nope.parquet", ("prompt",), stage="s", input_name="prompts")
    good = _parquet(tmp_path / "g.parquet", {"prompt": ["a"]})
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what `import pyarrow.parquet` sees without pyarrow
    with pytest.raises(ConfigError) as e:
        read_rows(good, ("prompt",), stage="s", input_name="prompts")
    assert str(e.value) == f"stage s: prompts: {good}: reading a Parquet dataset needs pyarrow: pip install r1jax[data]"


def test_stage_checks_and_sft_encoding_take_parquet(tmp_path):
    from r1jax.data.tokenizer import load_tokenizer
    from r1jax.pipeline.kinds import STAGE_KINDS
    from r1jax.pipeline.sample import SampleStage
    from r1jax.pipeline.sft import SFTStage, encode_examples, parse_sft_config

    assert STAGE_KINDS["sft"] is SFTStage and STAGE_KINDS["sample"] is SampleStage  # registered by the imports

    rows = [{"prompt": f"{a}+{b}", "completion": f"<answer> {a + b} </answer>", "reference": str(a + b)}
            for a, b in [(12, 30), (45, 21), (33, 14)]]
    j = write_jsonl(tmp_path / "d.jsonl", rows)
    p = _parquet(tmp_path / "d.parquet", {k: [r[k] for r in rows] for k in rows[0]})
    sft_cfg = {"max_len": 48}
    STAGE_KINDS["sft"]().check("cold", sft_cfg, {"data": p, "eval_data": p, "model": TINY})
    STAGE_KINDS["sample"]().check("rs", {"mix_ratio": 0.5}, {"model": None, "prompts": p, "mix": p})
    bad = _parquet(tmp_path / "bad.parquet", {"prompt": ["a", "b"], "completion": ["c", None]})
    with pytest.raises(ConfigError) as e:
        STAGE_KINDS["sft"]().check("cold", sft_cfg, {"data": j, "eval_data": bad, "model": TINY})
    assert str(e.value) == f"stage cold: eval_data: {bad}: row 1: missing field 'completion'"
    with pytest.raises(ConfigError) as e:
        STAGE_KINDS["sample"]().check("rs", {}, {"model": None, "prompts": bad})
    assert str(e.value) == f"stage rs: prompts: {bad}: row 0: missing field 'reference'"

    # the SFT stage encodes a Parquet dataset exactly as the same rows in JSONL; positions name the row
    tok, cfg = load_tokenizer(TINY), parse_sft_config("cold", sft_cfg)
    from_jsonl, from_parquet = encode_examples(j, tok, cfg, stage="cold"), encode_examples(p, tok, cfg, stage="cold")
    assert (from_parquet.prompts, from_parquet.completions, from_parquet.questions) == (
        from_jsonl.prompts, from_jsonl.completions, from_jsonl.questions)
    assert from_parquet.where == [f"{p}: row {k}" for k in range(3)] and from_jsonl.where[2] == f"{j}:3"
    with pytest.raises(ConfigError, match=rf"^stage cold: data: {p}: row 0: example is \d+ tokens"):
        encode_examples(p, tok, parse_sft_config("cold", {"max_len": 8}), stage="cold")
