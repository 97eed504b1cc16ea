"""The pipeline manifest: what each stage ran with, what it made, and how far it got.

``<pipeline dir>/manifest.json`` holds, per stage: its kind, label, resolved config, inputs (path,
digest, and for a reference the stage and output it came from), its fingerprint, outputs (path and
digest), status (``pending`` / ``running`` / ``done`` / ``failed``), metrics, the held-out evaluation
of the model it made, and the earlier directories of the stage that were moved aside. It is written
atomically (a temporary file, fsync, ``os.replace``), so a SIGKILL leaves the old or the new manifest,
never half of one.

Digests are SHA-256 over content in a fixed order, so they do not depend on file times or on the
order a directory lists its entries in.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Mapping

from r1jax.config import ConfigError

__all__ = ["STATUSES", "MANIFEST_NAME", "digest_path", "digest_data", "read_manifest", "write_manifest",
           "empty_manifest"]

STATUSES = ("pending", "running", "done", "failed")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def _file_sha(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (relative POSIX path + content, in sorted
    path order; empty directories and symlinked directories' targets are not followed).

    Args:
      path: a file or a directory.

    Returns:
      ``"sha256:<hex>"``; a file and a directory holding only that file digest differently.

    Raises:
      FileNotFoundError: ``path`` does not exist.
    """
    p = pathlib.Path(path)
    if p.is_file():
        return f"sha256:{_file_sha(p)}"
    if not p.is_dir():
        raise FileNotFoundError(f"no such file or directory: {p}")
    h = hashlib.sha256(b"dir\0")
    files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
    for f in files:
        rel = f.relative_to(p).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little") + rel + bytes.fromhex(_file_sha(f)))
    return f"sha256:{h.hexdigest()}"


def digest_data(data: Any) -> str:
    """SHA-256 of plain data (dicts, lists, strings, numbers) as canonical JSON (sorted keys)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def empty_manifest() -> dict[str, Any]:
    """A manifest with no stages."""
    return {"version": MANIFEST_VERSION, "order": [], "stages": {}}


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a pipeline directory (an empty one when there is none yet).

    Raises:
      ConfigError: the file exists but is not a manifest this version reads (named).
    """
    path = pathlib.Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return empty_manifest()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable pipeline manifest ({e})") from None
    if not isinstance(data, Mapping) or data.get("version") != MANIFEST_VERSION or not isinstance(
            data.get("stages"), Mapping):
        raise ConfigError(f"{path}: not a pipeline manifest of version {MANIFEST_VERSION}")
    return dict(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes ``text`` to ``path`` so that a SIGKILL at any point leaves the old file or the new one:
    a temporary file in the same directory, fsynced, renamed into place, the directory fsynced."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_manifest(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> pathlib.Path:
    """Writes the manifest atomically (:func:`atomic_write_text`); returns its path."""
    return atomic_write_text(pathlib.Path(directory) / MANIFEST_NAME,
                             json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
