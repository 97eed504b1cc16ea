"""JSONL / Parquet datasets: GSM8K and MATH mappings, and errors that name file, line/row and field."""

import json
import re

import pytest

from r1jax.data.files import FieldMap, load_jsonl, load_parquet, split_gsm8k_answer

import datasets  # noqa: F401,E402 - the data extra is part of the test extra

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A {curly} question?", "answer": "Big: 1000+234=<<1000+234=1234>>1234 #### 1,234"},
]
MATH = {"prompt": "problem", "answer": "solution", "answer_format": "boxed"}


def _write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_gsm8k_jsonl(tmp_path):
    p = _write_jsonl(tmp_path / "gsm.jsonl", [GSM8K_ROWS[0], "", GSM8K_ROWS[1]])
    ds = load_jsonl(p)
    assert len(ds) == 2
    e0, e1 = ds[0], ds[1]
    assert e0 == {
        "id": "gsm.jsonl:1",
        "task": "math",
        "prompt": GSM8K_ROWS[0]["question"],
        "reference": "7",
        "answer": "7",
        "solution": "3+4=7",
    }
    assert e1["id"] == "gsm.jsonl:3"  # the blank line 2 is skipped but counted
    assert e1["reference"] == "1234" and e1["solution"] == "Big: 1000+234=1234"
    with pytest.raises(IndexError):
        ds[2]


def test_math_parquet_nested_braces(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = {
        "problem": ["Half of one?", "Two plus two?"],
        "solution": [r"It is $\boxed{\frac{1}{2}}$.", r"First \boxed{3}, no: $\boxed{4}$"],
        "level": ["Level 1", "Level 2"],
    }
    p = tmp_path / "math.parquet"
    pq.write_table(pa.table(rows), p)
    ds = load_parquet(p, FieldMap(**MATH), task="math", cache_dir=str(tmp_path / "cache"))
    assert [ds[i]["reference"] for i in range(2)] == [r"\frac{1}{2}", "4"]
    assert ds[0]["id"] == "math.parquet:row0" and ds[1]["solution"] == rows["solution"][1]


def test_raw_format_nested_field_and_solution_field(tmp_path):
    p = _write_jsonl(tmp_path / "raw.jsonl", [{"q": "x?", "meta": {"ans": 42}, "cot": "because"}])
    ds = load_jsonl(p, FieldMap(prompt="q", answer="meta.ans", answer_format="raw", solution="cot"), task="numbers")
    assert ds[0]["reference"] == "42" and ds[0]["solution"] == "because" and ds[0]["task"] == "numbers"


# ---------------------------------------------------------------------------------------- errors


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = _write_jsonl(tmp_path / "bad.jsonl", [GSM8K_ROWS[0], GSM8K_ROWS[1], '{"question": "q", "answer": ', GSM8K_ROWS[0]])
    with pytest.raises(ValueError, match=re.escape(f"{p}:3: malformed JSON")):
        load_jsonl(p)


def test_non_object_line(tmp_path):
    p = _write_jsonl(tmp_path / "list.jsonl", [GSM8K_ROWS[0], "[1, 2]"])
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: expected a JSON object, got list")):
        load_jsonl(p)


def test_missing_field_names_file_line_and_field(tmp_path):
    p = _write_jsonl(tmp_path / "miss.jsonl", [GSM8K_ROWS[0], GSM8K_ROWS[1], {"question": "q", "ans": "#### 1"}])
    with pytest.raises(ValueError, match=re.escape(f"{p}:3: missing field 'answer' (fields present: ans, question)")):
        load_jsonl(p)


def test_null_and_wrong_type_fields(tmp_path):
    p = _write_jsonl(tmp_path / "null.jsonl", [{"question": None, "answer": "#### 1"}])
    with pytest.raises(ValueError, match=re.escape(f"{p}:1: field 'question' is null")):
        load_jsonl(p)
    p = _write_jsonl(tmp_path / "type.jsonl", [GSM8K_ROWS[0], {"question": ["q"], "answer": "#### 1"}])
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: field 'question' must be a string, got list")):
        load_jsonl(p)


def test_answer_without_marker_names_line_and_field(tmp_path):
    p = _write_jsonl(tmp_path / "nomark.jsonl", [GSM8K_ROWS[0], {"question": "q", "answer": "just 5"}])
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: field 'answer' has no '#### <answer>' marker")):
        load_jsonl(p)
    p = _write_jsonl(tmp_path / "nobox.jsonl", [{"problem": "q", "solution": "5"}])
    with pytest.raises(ValueError, match=re.escape(f"{p}:1: field 'solution' has no \\boxed")):
        load_jsonl(p, FieldMap(**MATH))


def test_not_utf8_names_line(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(json.dumps(GSM8K_ROWS[0]).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: not UTF-8")):
        load_jsonl(p)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.parquet"))):
        load_parquet(tmp_path / "nope.parquet")
    p = _write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ValueError, match=re.escape(f"{p}: no examples")):
        load_jsonl(p)


def test_parquet_missing_column_and_null_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"problem": ["a"], "answer": [r"\boxed{1}"]}), p)
    with pytest.raises(ValueError, match=re.escape(f"{p}: row 0: missing field 'solution' (columns: answer, problem)")):
        load_parquet(p, FieldMap(**MATH), cache_dir=str(tmp_path / "c1"))
    p = tmp_path / "null.parquet"
    pq.write_table(pa.table({"problem": ["a", "b", "c"], "solution": [r"\boxed{1}", r"\boxed{2}", None]}), p)
    with pytest.raises(ValueError, match=re.escape(f"{p}: row 2 (0-based): field 'solution' is null")):
        load_parquet(p, FieldMap(**MATH), cache_dir=str(tmp_path / "c2"))
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=re.escape(f"{p}: cannot be read as Parquet")):
        load_parquet(p, FieldMap(**MATH), cache_dir=str(tmp_path / "c3"))


# ---------------------------------------------------------------------------------------- answer helpers


def test_split_gsm8k_answer():
    assert split_gsm8k_answer("a <<1+1=2>>2\n#### -3.5") == ("a 2", "-3.5")
    assert split_gsm8k_answer("#### 12,000") == ("", "12000")
    assert split_gsm8k_answer("#### 1,2") == ("", "1,2")  # not a thousands separator
    assert split_gsm8k_answer("none") is None
