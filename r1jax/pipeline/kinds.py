"""Stage kinds: what a pipeline stage can be (``kind: sft``, ``kind: rl``, ...).

A stage kind is a class registered in :data:`STAGE_KINDS` with :func:`register_stage_kind`. The
pipeline runner (:mod:`r1jax.pipeline.runner`) resolves a stage's inputs (paths made by earlier
stages, or given in the config), checks everything with :meth:`StageKind.check` before any stage
runs, then calls :meth:`StageKind.run` with a :class:`StageContext`. The same kinds back the
single-stage verbs ``r1jax sft``, ``r1jax sample``, ``r1jax rl`` and ``r1jax distill``.

Contract of a kind:

* ``inputs`` / ``optional_inputs``: the input names it reads (``model``: an HF model directory,
  ``data``: a dataset file, ...), or ``input_names(config)`` where they depend on the config;
  ``outputs``: the names it writes, each a path inside its directory.
* ``check(stage, config, inputs)``: raises :class:`r1jax.config.ConfigError` with one line that names
  the stage and the field at fault (``stage cold_start: data: .../x.jsonl:3: missing field 'completion'``).
  ``inputs[name]`` is a path, or None when an earlier stage will make it (check it then, in ``run``,
  before any work).
* ``run(ctx) -> StageResult``: does the work in ``ctx.out_dir``. Resumable: when killed and called
  again with the same context it continues from its own last checkpoint in ``ctx.out_dir``, losing at
  most the work since that checkpoint. It never deletes what an earlier run of the stage finished.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, ClassVar, Mapping

from r1jax.algos.registry import Registry

__all__ = ["StageContext", "StageResult", "StageKind", "STAGE_KINDS", "register_stage_kind"]


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage runs with."""

    name: str                               # the stage's name in the pipeline ("cold_start")
    config: Mapping[str, Any]               # the stage's resolved config section (plain data)
    inputs: Mapping[str, pathlib.Path]      # input name -> path (made by earlier stages or given)
    out_dir: pathlib.Path                   # the stage's own directory (exists; holds its checkpoints)
    seed: int = 0                           # the pipeline's seed


@dataclasses.dataclass
class StageResult:
    """What a finished stage made: its declared outputs (paths inside ``out_dir``) and summary numbers."""

    outputs: dict[str, pathlib.Path]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class StageKind:
    """Base class of stage kinds (see the module docstring for the contract)."""

    inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()

    def input_names(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        """The inputs a stage of this kind with this config may name (required ones first). A kind
        whose inputs depend on its config (an ``rl`` stage's reward models) overrides this."""
        return tuple(self.inputs) + tuple(self.optional_inputs)

    def check(self, stage: str, config: Mapping[str, Any], inputs: Mapping[str, pathlib.Path | None]) -> None:
        """Validates the stage before any work; raises ConfigError naming ``stage`` and the field."""

    def run(self, ctx: StageContext) -> StageResult:
        raise NotImplementedError


STAGE_KINDS = Registry("stage kind")
"""Stage kinds by name: ``STAGE_KINDS[name]`` is the :class:`StageKind` subclass."""
register_stage_kind = STAGE_KINDS.register
