"""JSONL datasets that pipeline stages read and write, checked before any work.

A stage dataset is a JSONL file of objects, one per line (``{"prompt": ..., "completion": ...}``
for SFT, ``{"prompt": ..., "reference": ...}`` for sampling). :func:`read_jsonl` reads one and
checks that every row has the fields the stage needs, as strings (or, for a field listed in
``any_type``, as any JSON value), failing with one :class:`~r1jax.config.ConfigError` line that
names the stage, the input, the file, the line and the field::

    stage cold_start: data: /runs/x/data.jsonl:3: missing field 'completion'

:func:`write_jsonl` writes rows atomically (a temporary file renamed into place), so a stage killed
while writing never leaves a half-written dataset that a rerun would take as finished.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

from r1jax.config import ConfigError
from r1jax.data.files import iter_jsonl
from r1jax.pipeline.manifest import atomic_write_text

__all__ = ["read_jsonl", "check_jsonl", "write_jsonl", "write_json"]


def _where(stage: str, input_name: str) -> str:
    return f"stage {stage}: {input_name}: "


def read_jsonl(path: str | os.PathLike, fields: Sequence[str] = (), *, stage: str = "?", input_name: str = "data",
               any_type: Sequence[str] = (), allow_empty: bool = False, return_lines: bool = False) -> Any:
    """The rows of a JSONL file, each checked to carry ``fields``.

    Args:
      path: the file.
      fields: field names every row must have: non-null strings, unless listed in ``any_type``
        (then any non-null JSON value, e.g. a reference answer that is a number or an object).
      stage: the stage's name, for messages.
      input_name: the stage input the file is (``data``, ``prompts``, ``mix``), for messages.
      any_type: fields of ``fields`` that need not be strings.
      allow_empty: an empty file (no rows) is accepted.
      return_lines: also return the 1-based line number of each row.

    Returns:
      The rows as dicts, in file order (blank lines skipped); with ``return_lines``, ``(rows, lines)``.

    Raises:
      ConfigError: the file is missing or empty, a line is not a JSON object, or a row lacks a
        field (or has one of the wrong type); the message names stage, input, ``file:line`` and field.
    """
    p = pathlib.Path(path)
    where = _where(stage, input_name)
    if not p.is_file():
        raise ConfigError(f"{where}{p}: file does not exist")
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        for lineno, row in iter_jsonl(p):
            if not isinstance(row, dict):
                raise ConfigError(f"{where}{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for name in fields:
                if name not in row or row[name] is None:
                    raise ConfigError(f"{where}{p}:{lineno}: missing field {name!r}")
                if name not in any_type and not isinstance(row[name], str):
                    raise ConfigError(f"{where}{p}:{lineno}: field {name!r} must be a string, "
                                      f"got {type(row[name]).__name__}")
            rows.append(row)
            lines.append(lineno)
    except ConfigError:
        raise
    except ValueError as e:  # not UTF-8 / malformed JSON, named by file:line
        raise ConfigError(f"{where}{e}") from None
    if not rows and not allow_empty:
        raise ConfigError(f"{where}{p}: no rows")
    return (rows, lines) if return_lines else rows


def check_jsonl(path: str | os.PathLike | None, fields: Sequence[str], *, stage: str, input_name: str,
                any_type: Sequence[str] = ()) -> None:
    """:func:`read_jsonl`'s checks of a stage input; a None path (made by an earlier stage) is skipped."""
    if path is not None:
        read_jsonl(path, fields, stage=stage, input_name=input_name, any_type=any_type)


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
