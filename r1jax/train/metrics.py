"""Metrics sinks: JSONL (always), TensorBoard event files and a terminal progress bar (optional)."""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any, Mapping

import numpy as np

__all__ = ["MetricsWriter", "to_python"]

log = logging.getLogger(__name__)

# The numbers shown on the progress bar, when present.
_BAR_KEYS = ("reward/total", "accuracy", "response_length/mean", "kl_ref", "entropy")


def to_python(value: Any) -> Any:
    """A JSON-ready scalar: numpy / JAX scalars → float or int; non-finite floats → None-safe strings."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    arr = np.asarray(value)
    if arr.shape == ():
        if np.issubdtype(arr.dtype, np.integer):
            return int(arr)
        f = float(arr)
        return f if math.isfinite(f) else str(f)
    return arr.tolist()


class MetricsWriter:
    """Writes one JSON object per step to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
      run_dir: the run directory.
      total_steps: for the progress bar.
      tensorboard: write TensorBoard event files under ``run_dir/tb`` (needs tensorboardX).
      progress: show a tqdm progress bar with the key numbers.
      start_step: where a resumed run starts (the JSONL is truncated to steps before it, so a
        resumed run's file equals an uninterrupted one's).
    """

    def __init__(self, run_dir: str | pathlib.Path, *, total_steps: int, tensorboard: bool = False,
                 progress: bool = False, start_step: int = 0):
        self.path = pathlib.Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(start_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # noqa: PLC0415
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard event files (pip install r1jax[tensorboard])")
            else:
                self._tb = SummaryWriter(str(pathlib.Path(run_dir) / "tb"))
        self._bar = None
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            self._bar = tqdm(total=total_steps, initial=start_step, desc="r1jax", dynamic_ncols=True)

    def _truncate(self, start_step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            if line.strip() and json.loads(line).get("step", -1) < start_step:
                kept.append(line)
        self.path.write_text("".join(l + "\n" for l in kept))

    def write(self, step: int, metrics: Mapping[str, Any], *, timing: Mapping[str, float] | None = None) -> None:
        """Records ``metrics`` (deterministic numbers) and ``timing`` (wall-clock, kept apart) of ``step``."""
        record = {"step": int(step), **{k: to_python(v) for k, v in metrics.items()}}
        if timing:
            record["time"] = {k: round(float(v), 4) for k, v in timing.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
            for k, v in (timing or {}).items():
                self._tb.add_scalar(f"time/{k}", v, step)
        if self._bar is not None:
            shown = {k.split("/")[0] if k.endswith("/total") else k.replace("response_length/mean", "len"): record[k]
                     for k in _BAR_KEYS if isinstance(record.get(k), (int, float))}
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
