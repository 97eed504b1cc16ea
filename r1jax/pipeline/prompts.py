"""Data-making stage kinds: ``prompts`` (a split of a configured task) and ``preferences`` (toy
preference data for reward models).

Sampling stages (``sample``, ``distill``) read their prompts from a file; for a synthetic task
(``data.task: arithmetic``, ``countdown``) this stage makes that file from the same
:class:`~r1jax.data.DataConfig` the RL stages use, so all stages draw from one task and one
held-out partition (``split: train`` never contains a held-out problem). Rows are
``{"id", "prompt", "reference"}``.

The ``preferences`` kind writes one of :mod:`r1jax.data.preferences`' offline generators as JSONL:
``helpfulness`` pairs (``prompt, chosen, rejected``) for a pairwise ``rm`` stage, ``safety`` points
(``prompt, response, label``) for a pointwise one, or ``prompts`` for an RL stage. ``seed``
defaults to the pipeline's seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from r1jax.config import ConfigError, field, from_dict
from r1jax.data import DataConfig, make_dataset
from r1jax.pipeline.datasets import write_jsonl
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind

__all__ = ["PromptsConfig", "PromptsKind", "PreferencesConfig", "PreferencesKind"]


@dataclasses.dataclass(frozen=True)
class PromptsConfig:
    data: DataConfig = field(default_factory=DataConfig, help="the task (as in an experiment config's data section)")
    split: str = field("train", choices=("train", "eval"), help="which split to write")
    limit: int = field(0, ge=0, help="at most this many rows (0: the whole split)")


def _config(stage: str, config: Mapping[str, Any], cls: type = PromptsConfig) -> Any:
    try:
        return from_dict(cls, dict(config))
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


@dataclasses.dataclass(frozen=True)
class PreferencesConfig:
    generator: str = field("helpfulness", choices=("helpfulness", "safety", "prompts"),
                           help="which r1jax.data.preferences dataset to write")
    n: int = field(400, ge=1, help="rows")
    seed: int | None = field(None, ge=0, help="the generator's seed (None: the pipeline's seed)")


@register_stage_kind("preferences")
class PreferencesKind(StageKind):
    outputs = ("data",)

    def check(self, stage, config, inputs) -> None:
        _config(stage, config, PreferencesConfig)

    def run(self, ctx: StageContext) -> StageResult:
        from r1jax.data.preferences import write_preferences  # noqa: PLC0415

        cfg = _config(ctx.name, ctx.config, PreferencesConfig)
        seed = ctx.seed if cfg.seed is None else cfg.seed
        path = write_preferences(ctx.out_dir / f"{cfg.generator}.jsonl", cfg.generator, cfg.n, seed)
        return StageResult(outputs={"data": path}, metrics={"rows": float(cfg.n)})

