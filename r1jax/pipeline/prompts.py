"""The ``prompts`` stage kind: a split of a configured task written as a JSONL prompts file.

Sampling stages (``sample``, ``distill``) read their prompts from a file; for a synthetic task
(``data.task: arithmetic``, ``countdown``) this stage makes that file from the same
:class:`~r1jax.data.DataConfig` the RL stages use, so all stages draw from one task and one
held-out partition (``split: train`` never contains a held-out problem). Rows are
``{"id", "prompt", "reference"}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from r1jax.config import ConfigError, field, from_dict
from r1jax.data import DataConfig, make_dataset
from r1jax.pipeline.datasets import write_jsonl
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind

__all__ = ["PromptsConfig", "PromptsKind"]


@dataclasses.dataclass(frozen=True)
class PromptsConfig:
    data: DataConfig = field(default_factory=DataConfig, help="the task (as in an experiment config's data section)")
    split: str = field("train", choices=("train", "eval"), help="which split to write")
    limit: int = field(0, ge=0, help="at most this many rows (0: the whole split)")


def _config(stage: str, config: Mapping[str, Any]) -> PromptsConfig:
    try:
        return from_dict(PromptsConfig, dict(config))
    except ConfigError as e:
        raise ConfigError(f"stage {stage}: config.{e}") from None


@register_stage_kind("prompts")
class PromptsKind(StageKind):
    outputs = ("data",)

    def check(self, stage, config, inputs) -> None:
        _config(stage, config)

    def run(self, ctx: StageContext) -> StageResult:
        cfg = _config(ctx.name, ctx.config)
        try:
            dataset = make_dataset(cfg.data, cfg.split)
        except ValueError as e:
            raise ConfigError(f"stage {ctx.name}: config.data: {e}") from None
        n = len(dataset) if not cfg.limit else min(cfg.limit, len(dataset))
        rows = [{"id": ex["id"], "prompt": ex["prompt"], "reference": ex["reference"]}
                for ex in (dataset[i] for i in range(n))]
        path = write_jsonl(ctx.out_dir / "prompts.jsonl", rows)
        return StageResult(outputs={"data": path}, metrics={"rows": float(n)})
