"""Question/answer datasets from local JSONL and Parquet files (GSM8K-style, MATH-style).

A :class:`FieldMap` says which field holds the question, which the answer, and how the reference
answer is read from it:

- ``"gsm8k"``: the text after the last ``####`` (``"... #### 1,234"`` gives ``"1234"``); the text
  before it, without the ``<<48/2=24>>`` calculator notes, is the ``solution``.
- ``"boxed"``: the content of the last ``\\boxed{...}`` (MATH; :func:`r1jax.rewards.parsing.extract_boxed`,
  the same extraction the math reward applies to completions); the whole field is the ``solution``.
- ``"raw"``: the field itself, stripped.

Every row is checked when the file is loaded, before any training starts: a malformed JSONL line
fails with ``file:line``; a missing or null field, or an answer without its marker, names the file,
the line (JSONL) or row (Parquet, 0-based) and the field. The rows are held in a
``datasets.Dataset`` (the optional ``data`` extra, imported lazily). JSONL is parsed here line by
line (for exact error positions and no type inference over unused columns); Parquet is read by
``datasets``.

Fields may be dotted paths into nested objects (``"meta.answer"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any, Iterator, Sequence

from r1jax.config import ConfigError, field

__all__ = ["FieldMap", "FileDataset", "iter_jsonl", "load_jsonl", "load_parquet", "split_gsm8k_answer"]


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Which fields of a file row hold the question and the answer."""

    prompt: str = field("question", help="field with the question (GSM8K 'question', MATH 'problem')")
    answer: str = field("answer", help="field the reference answer is read from (GSM8K 'answer', MATH 'solution')")
    answer_format: str = field(
        "gsm8k", choices=("gsm8k", "boxed", "raw"), help="how the reference is read from the answer field"
    )
    solution: str | None = field(
        None, help="field with a worked solution for SFT (default: derived from the answer field for gsm8k/boxed)"
    )

    def check(self) -> None:
        for name in ("prompt", "answer"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: must be a field name, got an empty string")


def _datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "JSONL/Parquet datasets need the `datasets` package: pip install 'r1jax[data]'"
        ) from e
    return datasets


# -------------------------------------------------------------------------------------------- answers


def split_gsm8k_answer(text: str) -> tuple[str, str] | None:
    """``(solution, answer)`` of a GSM8K answer ``"steps ... #### 42"``; None without ``####``.

    The answer loses thousands separators when it is a number (``"1,234"`` -> ``"1234"``); the solution
    loses the ``<<48/2=24>>`` calculator annotations.
    """
    if "####" not in text:
        return None
    head, _, tail = text.rpartition("####")
    answer = tail.strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", answer):
        answer = answer.replace(",", "")
    solution = re.sub(r"<<[^<>]*>>", "", head).strip()
    return solution, answer


# -------------------------------------------------------------------------------------------- rows


class _RowError(ValueError):
    pass


def _get(row: Any, path: str) -> Any:
    """Value at a dotted path; raises _RowError naming the field when absent."""
    node = row
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            present = ", ".join(sorted(map(str, row))) if isinstance(row, dict) else type(row).__name__
            raise _RowError(f"missing field {path!r} (fields present: {present})")
        node = node[part]
    return node


def _text(row: Any, path: str, *, numbers_ok: bool = False) -> str:
    value = _get(row, path)
    if value is None:
        raise _RowError(f"field {path!r} is null")
    if isinstance(value, bool) or not isinstance(value, (str, int, float) if numbers_ok else str):
        raise _RowError(f"field {path!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value if isinstance(value, str) else str(value)


def _example(row: Any, fields: FieldMap) -> tuple[str, str, str | None]:
    """(prompt, reference, solution) of one parsed row; raises _RowError naming the field."""
    if not isinstance(row, dict):
        raise _RowError(f"expected a JSON object, got {type(row).__name__}")
    prompt = _text(row, fields.prompt)
    answer = _text(row, fields.answer, numbers_ok=fields.answer_format == "raw")
    solution: str | None = None
    if fields.answer_format == "gsm8k":
        parts = split_gsm8k_answer(answer)
        if parts is None:
            raise _RowError(f"field {fields.answer!r} has no '#### <answer>' marker (answer_format 'gsm8k')")
        solution, reference = parts
    elif fields.answer_format == "boxed":
        # The one home of \boxed{} extraction (imported here: data must not import rewards at import time).
        from r1jax.rewards.parsing import extract_boxed

        reference = extract_boxed(answer)
        if reference is None:
            raise _RowError(f"field {fields.answer!r} has no \\boxed{{...}} answer (answer_format 'boxed')")
        solution = answer.strip()
    else:
        reference = answer.strip()
    if not reference:
        raise _RowError(f"field {fields.answer!r} gives an empty reference answer")
    if fields.solution is not None:
        solution = _text(row, fields.solution)
    return prompt, reference, solution


def iter_jsonl(path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of every non-blank line of a JSONL file.

    Raises:
      ValueError: ``file:line: not UTF-8 text`` or ``file:line: malformed JSON`` (with the column).
    """
    with pathlib.Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def _read_jsonl(path: pathlib.Path, fields: FieldMap) -> Iterator[tuple[int, tuple[str, str, str | None]]]:
    for lineno, row in iter_jsonl(path):
        try:
            yield lineno, _example(row, fields)
        except _RowError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None


def _read_parquet(path: pathlib.Path, fields: FieldMap, cache_dir: str | None):
    ds = _datasets()
    try:
        table = ds.Dataset.from_parquet(str(path), cache_dir=cache_dir)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as Parquet: {e}") from None
    columns = set(table.column_names)
    for name in (fields.prompt, fields.answer) + ((fields.solution,) if fields.solution else ()):
        if name.split(".")[0] not in columns:
            raise ValueError(
                f"{path}: row 0: missing field {name!r} (columns: {', '.join(sorted(columns))})"
            )
    for row_index, row in enumerate(table):
        try:
            yield row_index, _example(row, fields)
        except _RowError as e:
            raise ValueError(f"{path}: row {row_index} (0-based): {e}") from None


class FileDataset:
    """An indexable dataset of examples read from a JSONL or Parquet file.

    Examples are dicts ``{"id", "task", "prompt", "reference", "answer", "solution"}`` with ``id``
    ``"<file name>:<line>"`` (JSONL) or ``"<file name>:row<k>"`` (Parquet), and ``answer`` equal to the
    reference.

    Attributes:
      path: the file.
      task: the task name written into each example (selects the reward).
      table: the ``datasets.Dataset`` holding the validated rows.
    """

    def __init__(self, path: pathlib.Path, table: Any, task: str, where_prefix: str, indices: Sequence[int] | None = None):
        self.path, self.table, self.task, self.name = path, table, task, task
        self._prefix = where_prefix
        self._indices = list(range(len(table))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self._indices):
            raise IndexError(f"{self.path}: index {index} out of range 0..{len(self._indices) - 1}")
        row = self.table[self._indices[index]]
        return {
            "id": f"{self.path.name}:{self._prefix}{row['where']}",
            "task": self.task,
            "prompt": row["prompt"],
            "reference": row["reference"],
            "answer": row["reference"],
            "solution": row["solution"],
        }

    def split(self, fraction: float, *, heldout: bool) -> "FileDataset":
        """The rows whose prompt hashes below ``fraction`` (``heldout=True``) or the others.

        A seed-free partition by question text, so train and eval never share a question.
        """
        keep = []
        prompts = self.table.data.column("prompt").to_pylist()
        for i in self._indices:
            prompt = prompts[i]
            h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big") / 2.0**64
            if (h < fraction) == heldout:
                keep.append(i)
        if not keep:
            which = "held-out" if heldout else "training"
            raise ValueError(f"{self.path}: no {which} rows with heldout_fraction={fraction}")
        return FileDataset(self.path, self.table, self.task, self._prefix, keep)

    def __repr__(self) -> str:
        return f"FileDataset({str(self.path)!r}, rows={len(self)}, task={self.task!r})"


def _load(path: str | pathlib.Path, fields: FieldMap, task: str, rows: Any, prefix: str) -> FileDataset:
    p = pathlib.Path(path)
    collected: dict[str, list] = {"where": [], "prompt": [], "reference": [], "solution": []}
    for where, (prompt, reference, solution) in rows(p):
        collected["where"].append(where)
        collected["prompt"].append(prompt)
        collected["reference"].append(reference)
        collected["solution"].append(solution)
    if not collected["where"]:
        raise ValueError(f"{p}: no examples (the file is empty)")
    ds = _datasets()
    features = ds.Features(
        {
            "where": ds.Value("int64"),
            "prompt": ds.Value("string"),
            "reference": ds.Value("string"),
            "solution": ds.Value("string"),
        }
    )
    return FileDataset(p, ds.Dataset.from_dict(collected, features=features), task, prefix)


def _check_file(path: str | pathlib.Path, kind: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{kind} dataset file not found: {p}")
    return p


def load_jsonl(path: str | pathlib.Path, fields: FieldMap = FieldMap(), *, task: str = "math") -> FileDataset:
    """Loads and validates a JSONL file (one JSON object per line; blank lines allowed).

    Args:
      path: the file.
      fields: the field mapping.
      task: the ``task`` name written into each example (selects the reward).

    Returns:
      A :class:`FileDataset`.

    Raises:
      FileNotFoundError: naming the file.
      ValueError: ``file:line: ...`` for malformed JSON, a non-object line, or a missing, null or
        ill-formed field (named).
    """
    p = _check_file(path, "JSONL")
    return _load(p, fields, task, lambda q: _read_jsonl(q, fields), "")


def load_parquet(
    path: str | pathlib.Path, fields: FieldMap = FieldMap(), *, task: str = "math", cache_dir: str | None = None
) -> FileDataset:
    """Loads and validates a Parquet file through ``datasets``.

    Args:
      path: the file.
      fields: the field mapping (column names; dotted paths into struct columns).
      task: the ``task`` name written into each example.
      cache_dir: ``datasets``' cache directory (default: its own).

    Returns:
      A :class:`FileDataset`.

    Raises:
      FileNotFoundError: naming the file.
      ValueError: ``file: row k (0-based): ...`` naming the missing, null or ill-formed field.
    """
    p = _check_file(path, "Parquet")
    return _load(p, fields, task, lambda q: _read_parquet(q, fields, cache_dir), "row")
