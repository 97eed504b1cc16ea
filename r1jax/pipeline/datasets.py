"""Stage datasets (JSONL or Parquet) that pipeline stages read and write, checked before any work.

A stage dataset is a table of rows (``{"prompt": ..., "completion": ...}`` for SFT,
``{"prompt": ..., "reference": ...}`` for sampling): a JSONL file of objects, one per line, or a
Parquet file (its columns are the fields; read with ``pyarrow``, the optional ``data`` extra).
:func:`read_rows` reads either, chosen by the file's suffix (``.parquet``; anything else is JSONL),
and checks that every row has the fields the stage needs, as strings (or, for a field listed in
``any_type``, as any JSON value), failing with one :class:`~r1jax.config.ConfigError` line that
names the stage, the input, the file, the line (JSONL, 1-based) or row (Parquet, 0-based) and the
field::

    stage cold_start: data: /runs/x/data.jsonl:3: missing field 'completion'
    stage cold_start: data: /runs/x/data.parquet: row 2: missing field 'completion'

Stages write JSONL: :func:`write_jsonl` writes rows atomically (a temporary file renamed into
place), so a stage killed while writing never leaves a half-written dataset that a rerun would take
as finished.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

from r1jax.config import ConfigError
from r1jax.data.files import iter_jsonl
from r1jax.pipeline.manifest import atomic_write_text

__all__ = ["read_rows", "read_jsonl", "read_parquet_rows", "check_rows", "write_jsonl", "write_json",
           "is_parquet"]


def _where(stage: str, input_name: str) -> str:
    return f"stage {stage}: {input_name}: "


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether :func:`read_rows` reads ``path`` as Parquet (its suffix is ``.parquet``, any case)."""
    return pathlib.Path(path).suffix.lower() == ".parquet"


def _check_row(row: Any, at: str, fields: Sequence[str], any_type: Sequence[str], *, json_values: bool) -> None:
    """Raises ConfigError ``{at}: ...`` unless ``row`` is a dict with ``fields`` (strings unless in ``any_type``;
    with ``json_values``, an ``any_type`` field must also be JSON-serialisable)."""
    if not isinstance(row, dict):
        raise ConfigError(f"{at}: expected a JSON object, got {type(row).__name__}")
    for name in fields:
        value = row.get(name)
        if value is None:
            raise ConfigError(f"{at}: missing field {name!r}")
        if name not in any_type:
            if not isinstance(value, str):
                raise ConfigError(f"{at}: field {name!r} must be a string, got {type(value).__name__}")
        elif json_values:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{at}: field {name!r} must be a JSON value (string, number, bool, list or "
                                  f"object), got {type(value).__name__}") from None


def _open(path: str | os.PathLike, where: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}{p}: file does not exist")
    return p


def read_rows(path: str | os.PathLike, fields: Sequence[str] = (), *, stage: str = "?", input_name: str = "data",
              any_type: Sequence[str] = (), allow_empty: bool = False, return_where: bool = False) -> Any:
    """The rows of a stage dataset (JSONL, or Parquet by its ``.parquet`` suffix), each checked to carry ``fields``.

    Args:
      path: the file.
      fields: field names every row must have: non-null strings, unless listed in ``any_type``
        (then any non-null JSON value, e.g. a reference answer that is a number or an object).
      stage: the stage's name, for messages.
      input_name: the stage input the file is (``data``, ``prompts``, ``mix``), for messages.
      any_type: fields of ``fields`` that need not be strings.
      allow_empty: a file without rows is accepted.
      return_where: also return each row's position for messages: ``"file:line"`` (JSONL, 1-based
        line) or ``"file: row k"`` (Parquet, 0-based row).

    Returns:
      The rows as dicts, in file order; with ``return_where``, ``(rows, positions)``.

    Raises:
      ConfigError: the file is missing, unreadable or empty, a row lacks a field (or has one of the
        wrong type), or it is Parquet and ``pyarrow`` is not installed; the message names stage,
        input, file, line or row and field.
    """
    if is_parquet(path):
        rows = read_parquet_rows(path, fields, stage=stage, input_name=input_name, any_type=any_type,
                                 allow_empty=allow_empty)
        return (rows, [f"{path}: row {k}" for k in range(len(rows))]) if return_where else rows
    rows, lines = read_jsonl(path, fields, stage=stage, input_name=input_name, any_type=any_type,
                             allow_empty=allow_empty, return_lines=True)
    return (rows, [f"{path}:{n}" for n in lines]) if return_where else rows


def read_jsonl(path: str | os.PathLike, fields: Sequence[str] = (), *, stage: str = "?", input_name: str = "data",
               any_type: Sequence[str] = (), allow_empty: bool = False, return_lines: bool = False) -> Any:
    """The rows of a JSONL file, each checked to carry ``fields`` (see :func:`read_rows`).

    Returns:
      The rows as dicts, in file order (blank lines skipped); with ``return_lines``, ``(rows, lines)``
      with the 1-based line number of each row.

    Raises:
      ConfigError: the file is missing or empty, a line is not a JSON object, or a row lacks a
        field (or has one of the wrong type); the message names stage, input, ``file:line`` and field.
    """
    where = _where(stage, input_name)
    p = _open(path, where)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        for lineno, row in iter_jsonl(p):
            _check_row(row, f"{where}{p}:{lineno}", fields, any_type, json_values=False)
            rows.append(row)
            lines.append(lineno)
    except ConfigError:
        raise
    except ValueError as e:  # not UTF-8 / malformed JSON, named by file:line
        raise ConfigError(f"{where}{e}") from None
    if not rows and not allow_empty:
        raise ConfigError(f"{where}{p}: no rows")
    return (rows, lines) if return_lines else rows


def _parquet_table(p: pathlib.Path, where: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 - optional (the `data` extra)
    except ImportError:
        raise ConfigError(f"{where}{p}: reading a Parquet dataset needs pyarrow: pip install r1jax[data]") from None
    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow's errors (ArrowInvalid, OSError, ...) as one line
        reason = " ".join(str(e).split())
        raise ConfigError(f"{where}{p}: cannot be read as Parquet: {type(e).__name__}: {reason}") from None


def read_parquet_rows(path: str | os.PathLike, fields: Sequence[str] = (), *, stage: str = "?",
                      input_name: str = "data", any_type: Sequence[str] = (),
                      allow_empty: bool = False) -> list[dict[str, Any]]:
    """The rows of a Parquet file (``pyarrow.parquet.read_table(path).to_pylist()``), each checked to carry
    ``fields`` (see :func:`read_rows`; a null is a missing field, and an ``any_type`` field must hold a
    JSON value, not e.g. a timestamp or bytes, since stages write rows back as JSONL).

    Raises:
      ConfigError: the file is missing, not Parquet or has no rows, a row lacks a field (or has one
        of the wrong type), or ``pyarrow`` is not installed; the message names stage, input,
        ``file: row k`` (0-based) and field.
    """
    where = _where(stage, input_name)
    p = _open(path, where)
    rows = _parquet_table(p, where)
    for k, row in enumerate(rows):
        _check_row(row, f"{where}{p}: row {k}", fields, any_type, json_values=True)
    if not rows and not allow_empty:
        raise ConfigError(f"{where}{p}: no rows")
    return rows


def check_rows(path: str | os.PathLike | None, fields: Sequence[str], *, stage: str, input_name: str,
               any_type: Sequence[str] = ()) -> None:
    """:func:`read_rows`'s checks of a stage input (JSONL or Parquet); a None path (made by an earlier
    stage) is skipped."""
    if path is not None:
        read_rows(path, fields, stage=stage, input_name=input_name, any_type=any_type)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
    """Writes ``rows`` as JSONL (UTF-8, one object per line), atomically; returns the path."""
    p = pathlib.Path(path)
    atomic_write_text(p, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
    return p


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Writes ``obj`` as indented JSON, atomically; returns the path."""
    p = pathlib.Path(path)
    atomic_write_text(p, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return p
