"""The R1 pipeline: named stages (RL, SFT, rejection sampling, distillation) over one train state.

* :mod:`~r1jax.pipeline.kinds`: the stage-kind contract and the registry :data:`STAGE_KINDS`.
* :mod:`~r1jax.pipeline.graph`: the pipeline config (stages, inputs, references), checked up front.
* :mod:`~r1jax.pipeline.manifest`: digests and the atomically written manifest.
* :mod:`~r1jax.pipeline.runner`: runs, skips, resumes or re-runs stages; evaluates models; the table.
* :mod:`~r1jax.pipeline.rl`: the ``rl`` kind (the RL trainer as a stage).

The kinds register themselves when their module is imported; :func:`load_kinds` imports them.
"""

from __future__ import annotations

import importlib

from r1jax.pipeline.kinds import STAGE_KINDS, StageContext, StageKind, StageResult, register_stage_kind

__all__ = ["STAGE_KINDS", "StageContext", "StageKind", "StageResult", "register_stage_kind", "load_kinds",
           "KIND_MODULES"]

KIND_MODULES = ("r1jax.pipeline.rl", "r1jax.pipeline.sft", "r1jax.pipeline.sample", "r1jax.pipeline.distill")
"""The modules that register the built-in stage kinds (a module not written yet is skipped)."""


def load_kinds() -> tuple[str, ...]:
    """Imports :data:`KIND_MODULES` so their kinds are in :data:`STAGE_KINDS`.

    Only a module of that list that does not exist is skipped; any other import error (a missing
    dependency inside a kind module, a syntax error) is raised.

    Returns:
      The names of the registered stage kinds.
    """
    for name in KIND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    return STAGE_KINDS.names()
