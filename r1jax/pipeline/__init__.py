"""The R1 pipeline: named stages (RL, SFT, rejection sampling, distillation) over one train state.

* :mod:`~r1jax.pipeline.kinds`: the stage-kind contract and the registry :data:`STAGE_KINDS`.
* :mod:`~r1jax.pipeline.graph`: the pipeline config (stages, inputs, references), checked up front.
* :mod:`~r1jax.pipeline.manifest`: digests and the atomically written manifest.
* :mod:`~r1jax.pipeline.runner`: runs, skips, resumes or re-runs stages; evaluates models; the table.
* :mod:`~r1jax.pipeline.rl`: the ``rl`` kind (the RL trainer as a stage); :mod:`~r1jax.pipeline.sft`
  (``sft``, cold-start format), :mod:`~r1jax.pipeline.sample` (``sample``: rejection sampling, judge),
  :mod:`~r1jax.pipeline.distill` (``distill``), :mod:`~r1jax.pipeline.prompts` (``prompts``),
  :mod:`~r1jax.pipeline.rm` (``rm``: helpfulness / safety reward models).

The kinds register themselves when their module is imported; :func:`load_kinds` imports them.
"""

from __future__ import annotations

import importlib

from r1jax.pipeline.kinds import STAGE_KINDS, StageContext, StageKind, StageResult, register_stage_kind

__all__ = ["STAGE_KINDS", "StageContext", "StageKind", "StageResult", "register_stage_kind", "load_kinds",
           "KIND_MODULES"]

KIND_MODULES = ("r1jax.pipeline.rl", "r1jax.pipeline.sft", "r1jax.pipeline.sample", "r1jax.pipeline.distill",
                "r1jax.pipeline.prompts", "r1jax.pipeline.rm")
"""The modules that register the built-in stage kinds."""


def load_kinds() -> tuple[str, ...]:
    """Imports :data:`KIND_MODULES` so their kinds are in :data:`STAGE_KINDS`; returns the kind names.

    Imported on demand (not at package import): the kinds pull in the trainer, JAX and the models.
    """
    for name in KIND_MODULES:
        importlib.import_module(name)
    return STAGE_KINDS.names()
