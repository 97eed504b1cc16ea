"""Checkpoints with orbax: everything needed to resume a run exactly.

A checkpoint holds the train state pytree (policy, optimizer, reference, critic, step, PRNG key)
and a JSON item with the rest: the data iterator's position, the rollout weight_version and the
resolved config. orbax writes each step into a temporary
directory and renames it only once complete, so a run killed in the middle of a save leaves the
previous checkpoint as the latest good one (the half-written directory is never listed as a
step, and is cleaned up on the next start).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs under ``directory/<step>``, keeping the last ``keep``.

    Args:
      directory: the checkpoint directory (created if missing).
      keep: how many of the most recent checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes the checkpoint of ``step`` and returns once it is complete on disk."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restores the checkpoint of ``step``.

        Args:
          step: a step listed by :meth:`all_steps`.
          like: a state pytree (or its ``jax.ShapeDtypeStruct`` tree) giving structure,
            dtypes and shardings of the restored arrays.

        Returns:
          ``(state, meta)``.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()
