"""Checkpoints with orbax: everything needed to resume a run exactly, verified on the way back.

A checkpoint holds the train state pytree (policy, optimizer, reference, critic, step, PRNG key),
a JSON item with the rest (the data iterator's position, the rollout weight_version and the
resolved config) and a JSON digest: the sha256 of every state leaf's bytes with its path, dtype
and shape, the sha256 of the meta JSON, and a sha256 of the digest itself.

* orbax writes each step into a temporary directory and renames it only once complete, so a run
  killed in the middle of a save leaves the previous checkpoint as the latest good one (the
  temporary directory is never listed as a step, and is cleaned up on the next start).
* :meth:`Checkpointer.save` refuses a state with a non-finite floating leaf (nothing is written),
  reads the new checkpoint back and checks it against its digest, and only then deletes old
  checkpoints beyond ``keep`` - and only ones older than the step just written, so rotation never
  deletes the newest intact checkpoint.
* :meth:`Checkpointer.restore` checks everything it reads against the digest; a corrupt or
  half-written checkpoint (changed bytes, missing or truncated files, bad JSON, an empty step
  directory) raises :class:`CheckpointError` naming its directory.
  :meth:`Checkpointer.restore_latest` logs one warning line per bad checkpoint and falls back to
  the newest intact one.

Costs: a save hashes the state and reads the new checkpoint back (about twice the time of a bare
orbax save); a restore hashes what it read. Digests are computed from host copies of the leaves,
fetched one at a time, so every array must be fully addressable by this process (one controller).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer"]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint on disk is corrupt or incomplete; the message names its directory and the fault."""


def _host_leaves(tree: Any) -> Iterator[tuple[str, np.ndarray]]:
    """``(path, host array)`` of each leaf in tree order, fetched from the device one at a time."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield jax.tree_util.keystr(path), np.asarray(jax.device_get(leaf))


def _sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces): the same after a round trip."""
    return _sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _leaf_record(path: str, array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return {"path": path, "dtype": str(array.dtype), "shape": list(array.shape), "sha256": _sha256(data)}


def _host_template(leaf: Any) -> np.ndarray:
    """An uninitialised host array of ``leaf``'s shape and dtype: orbax restores into NumPy for it."""
    abstract = ocp.utils.to_shape_dtype_struct(leaf)
    return np.empty(abstract.shape, abstract.dtype)


def _describe(err: BaseException) -> str:
    """``Type: message`` on one line, without the TensorStore spec that orbax appends to its errors."""
    text = " ".join(str(err).split())
    for tail in (" See full TensorStore details", " [tensorstore_spec="):
        text = text.split(tail)[0]
    return f"{type(err).__name__}: {text[:300]}"


class Checkpointer:
    """Saves and restores verified ``(state, meta)`` pairs under ``directory/<step>``.

    Args:
      directory: the checkpoint directory (created if missing).
      keep: how many of the most recent checkpoints to keep (at least 1).
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: expected an integer >= 1, got {keep!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.keep = keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # rotation is done here, after the new checkpoint is verified
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes the checkpoint of ``step``, verifies it, then deletes the old ones beyond ``keep``.

        Returns once the checkpoint is complete on disk and reads back equal to its digest. Only
        checkpoints older than ``step`` are deleted, so the newest intact checkpoint always stays.
        A checkpoint of ``step`` that is already on disk but corrupt is replaced (with a warning).

        Args:
          step: the step number, the name of the checkpoint's directory.
          state: the state pytree; every floating leaf must be finite.
          meta: JSON-serialisable data saved alongside.

        Raises:
          ValueError: a floating leaf of ``state`` has a NaN or infinity (nothing is written), or
            an intact checkpoint of ``step`` already exists.
          CheckpointError: the checkpoint just written does not read back intact.
        """
        step = int(step)
        records = []
        for path, array in _host_leaves(state):
            if jnp.issubdtype(array.dtype, jnp.inexact):
                bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
                if bad:
                    raise ValueError(f"refusing to checkpoint step {step} in {self.directory}: state leaf "
                                     f"{path} has {bad} non-finite value(s) of {np.size(array)}")
            records.append(_leaf_record(path, array))
        body = {"leaves": records, "meta_sha256": _json_sha256(meta)}
        digest = {**body, "sha256": _json_sha256(body)}

        host_like = jax.tree.map(_host_template, state)  # read back into host memory, not the device's
        if step in self.all_steps():
            try:
                self._read(step, host_like)
            except CheckpointError as err:
                log.warning("%s; replacing it with the new checkpoint of step %d", err, step)
                self._manager.delete(step)
            else:
                raise ValueError(f"{self._step_dir(step)}: an intact checkpoint of step {step} already exists")
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                    digest=ocp.args.JsonSave(digest)),
            force=True,
        )
        self._manager.wait_until_finished()
        self._read(step, host_like)
        steps = self.all_steps()
        for old in steps[: -self.keep]:
            if old < step:
                self._manager.delete(old)

    def latest_step(self) -> int | None:
        """The newest step directory on disk (not verified; see :meth:`restore_latest`), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """The step directories on disk in increasing order, intact or not."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restores the checkpoint of ``step`` and verifies it against its digest.

        Args:
          step: a step listed by :meth:`all_steps`.
          like: a state pytree (or its ``jax.ShapeDtypeStruct`` tree) giving structure,
            dtypes and shardings of the restored arrays.

        Returns:
          ``(state, meta)``.

        Raises:
          CheckpointError: the checkpoint is corrupt or incomplete (the message names its
            directory and what is wrong).
          ValueError: the checkpoint is intact but its state does not have the structure, shapes
            or dtypes of ``like``.
        """
        return self._read(int(step), jax.tree.map(ocp.utils.to_shape_dtype_struct, like))

    def restore_latest(self, like: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest intact checkpoint, skipping corrupt newer ones with a warning each.

        Args:
          like: as in :meth:`restore`.

        Returns:
          ``(step, state, meta)`` of the newest checkpoint that verifies, or None when the
          directory holds no checkpoint at all.

        Raises:
          CheckpointError: there are checkpoints but none is intact.
          ValueError: as in :meth:`restore` (an intact checkpoint of another structure is an
            error, not a reason to fall back).
        """
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, like)
            except CheckpointError as err:
                log.warning("skipping corrupt checkpoint: %s", err)
                continue
            return step, state, meta
        if steps:
            raise CheckpointError(f"{self.directory}: none of the checkpoints (steps "
                                  f"{', '.join(map(str, steps))}) is intact; see the warnings above")
        return None

    def close(self) -> None:
        """Releases the orbax checkpoint manager."""
        self._manager.close()

    def _step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON meta item of ``step`` (not verified against the digest); CheckpointError if unreadable."""
        return self._json_item(step, "meta")

    def _json_item(self, step: int, name: str) -> dict[str, Any]:
        try:
            item = self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))[name]
        except Exception as err:  # whatever orbax raises on a missing or damaged file
            raise CheckpointError(f"{self._step_dir(step)}: cannot read the {name} item ({_describe(err)})") from err
        if not isinstance(item, dict):
            raise CheckpointError(f"{self._step_dir(step)}: the {name} item is not a JSON object")
        return dict(item)

    def _read(self, step: int, abstract: Any) -> tuple[Any, dict[str, Any]]:
        """Reads the checkpoint of ``step`` into the shapes, dtypes and shardings of ``abstract``.

        Checks the digest's own checksum, the meta, the state's structure against ``abstract``
        (a mismatch is a ValueError, not corruption), then every leaf's bytes.
        """
        where = self._step_dir(step)
        if where.is_dir() and not any(where.iterdir()):
            raise CheckpointError(f"{where}: the step directory is empty")
        digest, meta = self._json_item(step, "digest"), self._json_item(step, "meta")
        body = {"leaves": digest.get("leaves"), "meta_sha256": digest.get("meta_sha256")}
        if digest.get("sha256") != _json_sha256(body):
            raise CheckpointError(f"{where}: the digest item does not match its own checksum")
        if _json_sha256(meta) != body["meta_sha256"]:
            raise CheckpointError(f"{where}: the meta item does not match its digest")

        expected = [(r["path"], r["dtype"], r["shape"]) for r in body["leaves"]]
        wanted = [(jax.tree_util.keystr(path), str(np.dtype(x.dtype)), list(x.shape))
                  for path, x in jax.tree_util.tree_flatten_with_path(abstract)[0]]
        if wanted != expected:
            raise ValueError(f"{where}: the saved state does not match the requested one: "
                             f"{_first_difference(expected, wanted)}")

        try:
            state = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as err:  # as above: TensorStore, OS and value errors alike
            raise CheckpointError(f"{where}: cannot read the state item ({_describe(err)})") from err
        for record, (path, array) in zip(body["leaves"], _host_leaves(state), strict=True):
            if _leaf_record(path, array)["sha256"] != record["sha256"]:
                raise CheckpointError(f"{where}: state leaf {path} does not match its digest "
                                      f"(its bytes changed on disk)")
        return state, meta


def _first_difference(saved: list[tuple], wanted: list[tuple]) -> str:
    """The first leaf where the saved ``(path, dtype, shape)`` list differs from the wanted one."""
    for (s_path, s_dtype, s_shape), (w_path, w_dtype, w_shape) in zip(saved, wanted):
        if (s_path, s_dtype, s_shape) != (w_path, w_dtype, w_shape):
            return (f"saved leaf {s_path} {s_dtype}{s_shape} where {w_path} {w_dtype}{w_shape} "
                    f"is requested")
    return f"saved {len(saved)} leaves, {len(wanted)} requested"
