"""The run directory's safety rules: what a resumed run may change, and never overwriting an earlier run.

A resumed run compares its config with the one stored in the newest readable checkpoint: changes
outside :data:`SAFE_CHANGES` alter what the run trains and are refused unless allowed. A fresh run
(``checkpoint.resume=false``) refuses a directory that holds another run's results, or with
``--overwrite`` moves it aside to ``<dir>.old-N``; nothing here ever deletes.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Mapping, Sequence

from r1jax.config import ConfigError, to_dict
from r1jax.train.checkpoint import Checkpointer, CheckpointError
from r1jax.train.config import ExperimentConfig

__all__ = ["SAFE_CHANGES", "config_changes", "move_aside", "check_resumed_config", "refuse_or_move_aside"]

log = logging.getLogger("r1jax.train")

SAFE_CHANGES = (
    "run.name", "run.out_dir", "run.steps", "run.tensorboard", "run.progress", "run.max_skipped_in_a_row",
    "checkpoint.resume", "checkpoint.every", "checkpoint.keep", "checkpoint.export_hf", "eval.", "mesh.",
    "rollout.servers", "rollout.token", "rollout.timeout_s", "reward.num_workers", "reward.worker_memory_mb",
    "data.cache_dir",
)
"""Config keys (or ``section.`` prefixes) a resumed run may change: where and how long it runs, what it
logs, evaluates and keeps. Any other change alters what the run trains and is refused on resume."""


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The ``(dotted key, old value, new value)`` of each leaf that differs between two config dicts
    (:func:`~r1jax.config.to_dict` form); a key only one side has shows ``"(unset)"`` on the other."""
    def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    return [(k, a.get(k, "(unset)"), b.get(k, "(unset)")) for k in sorted(a.keys() | b.keys())
            if k not in a or k not in b or a[k] != b[k]]


def _describe_changes(changes: Sequence[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {json.dumps(a)} → {json.dumps(b)}" for k, a, b in changes)


def move_aside(directory: pathlib.Path) -> pathlib.Path:
    """Renames ``directory`` to the first free ``<directory>.old-N`` (N = 1, 2, ...) beside it.

    Returns:
      The new path of the old directory (nothing is deleted).
    """
    n = 1
    while (target := directory.with_name(f"{directory.name}.old-{n}")).exists():
        n += 1
    directory.rename(target)
    return target



def check_resumed_config(checkpointer: Checkpointer, config: ExperimentConfig, run_dir: pathlib.Path,
                         allow_config_change: bool) -> None:
    """Refuses to resume a checkpoint whose resolved config differs in a key outside :data:`SAFE_CHANGES`
    (unless ``allow_config_change``); logs every change.

    Raises:
      ConfigError: listing each changed key as ``old → new`` and how to start a new run instead.
    """
    for step in reversed(checkpointer.all_steps()):  # the newest checkpoint whose meta reads
        try:
            saved = checkpointer.read_meta(step)["config"]
        except (CheckpointError, KeyError):
            continue
        break
    else:
        return
    changes = config_changes(saved, json.loads(json.dumps(to_dict(config))))
    unsafe = [ch for ch in changes if not ch[0].startswith(SAFE_CHANGES)]
    if unsafe and not allow_config_change:
        raise ConfigError(
            f"checkpoint.resume: the run in {run_dir} (checkpoint of step {step}) was made with another "
            f"config, and these changes alter what it trains: {_describe_changes(unsafe)}. Start a new run "
            "(checkpoint.resume=false run.name=NEW_NAME), or resume anyway with --allow-config-change")
    if changes:
        log.warning("resuming with a changed config%s: %s", " (--allow-config-change)" if unsafe else "",
                    _describe_changes(changes))


def refuse_or_move_aside(run_dir: pathlib.Path, overwrite: bool) -> bool:
    """``checkpoint.resume=false``: refuses a run directory that holds another run's results (anything
    besides ``config.yaml`` and empty directories), or with ``overwrite`` moves it aside.

    Returns:
      True when the directory was moved aside.

    Raises:
      ConfigError: the directory holds a run and ``overwrite`` is False.
    """
    entries = run_dir.iterdir() if run_dir.is_dir() else ()
    held = sorted(p.name for p in entries if p.name != "config.yaml" and not (p.is_dir() and not any(p.iterdir())))
    if not held:
        return False
    if not overwrite:
        raise ConfigError(
            f"checkpoint.resume=false: {run_dir} already holds a run ({', '.join(held)}) that this run would "
            "overwrite; choose another run.name=..., resume it (checkpoint.resume=true), or pass --overwrite "
            f"to move it aside to {run_dir.name}.old-N")
    log.warning("--overwrite: moved the previous run %s aside to %s", run_dir, move_aside(run_dir))
    return True
