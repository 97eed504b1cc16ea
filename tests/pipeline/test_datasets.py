"""JSONL stage datasets: field checks name stage, input, file, line and field; atomic writes; digests."""

import hashlib
import json

import pytest

from r1jax.config import ConfigError
from r1jax.pipeline.datasets import check_jsonl, read_jsonl, write_json, write_jsonl
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
    check_jsonl(None, ("prompt",), stage="s", input_name="prompts")  # made later by an earlier stage: skipped
    with pytest.raises(ConfigError, match=r"^stage s: prompts: .*nope.jsonl: file does not exist$"):
        check_jsonl(tmp_path / "nope.jsonl", ("prompt",), stage="s", input_name="prompts")
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
