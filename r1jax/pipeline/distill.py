"""The ``distill`` stage kind: a teacher's rejection-sampled answers → SFT of a smaller student.

DeepSeek-R1 distilled its reasoning into small dense models by plain SFT on the ~800k samples
curated with DeepSeek-R1 (arXiv 2501.12948, §2.4 / §4.1: no RL stage for the students). This kind
is the composition of the two other kinds, not a copy of either:

1. :func:`r1jax.pipeline.sample.run_sample` with the teacher (the input ``model``) on ``prompts``
   (config section ``sample``), in ``out_dir/teacher_samples``;
2. :func:`r1jax.pipeline.sft.run_sft` of the student on that data (config section ``sft``), in
   ``out_dir/student``: a new model from ``sft.model.config`` (a smaller ModelConfig; the teacher's
   tokenizer unless ``sft.model.tokenizer`` names another), or the input ``student`` HF directory.

Both halves resume from their own directories, so a killed distill stage continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

from r1jax.config import ConfigError, field, from_dict
from r1jax.pipeline.datasets import read_jsonl, read_rows, write_json
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind
from r1jax.pipeline.sample import SampleStage, parse_sample_config, run_sample
from r1jax.pipeline.sft import parse_sft_config, run_sft

__all__ = ["DistillConfig", "parse_distill_config", "run_distill", "DistillStage"]


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The ``distill`` stage's config section: the two halves' sections."""

    sample: dict[str, Any] = field(default_factory=dict, help="the teacher's rejection sampling (sample kind keys)")
    sft: dict[str, Any] = field(default_factory=dict, help="the student's SFT (sft kind keys)")


def parse_distill_config(stage: str, config: Mapping[str, Any]):
    """``(DistillConfig, SampleConfig, SFTConfig)``, validated; ConfigError lines start ``stage NAME: sample:`` etc."""
    try:
        cfg = from_dict(DistillConfig, config)
    except ConfigError as e:
        raise ConfigError(f"stage {stage}: {e}") from None
    sample = parse_sample_config(f"{stage}: sample", cfg.sample)
    sft = parse_sft_config(f"{stage}: sft", cfg.sft, tokenizer_given=True)
    if (sft.prompt_field, sft.completion_field) != ("prompt", "completion"):
        raise ConfigError(f"stage {stage}: sft: prompt_field / completion_field must be 'prompt' / 'completion' "
                          "(the fields of the sampled dataset)")
    return cfg, sample, sft


def run_distill(stage: str, config: Mapping[str, Any], *, model: pathlib.Path, prompts: pathlib.Path,
                out_dir: pathlib.Path, mix: pathlib.Path | None = None, student: pathlib.Path | None = None,
                eval_data: pathlib.Path | None = None, seed: int = 0, judge=None) -> StageResult:
    """Samples the teacher ``model`` on ``prompts``, then trains the student on what was kept.

    Returns:
      A :class:`StageResult` with ``model`` (the student's HF directory), ``data`` (the teacher's
      kept samples) and ``metrics`` (``out_dir/metrics.json``); metrics ``sample/<name>`` and ``sft/<name>``.
    """
    _, sample_cfg, sft_cfg = parse_distill_config(stage, config)
    out_dir = pathlib.Path(out_dir)
    sampled = run_sample(stage, sample_cfg, model=model, prompts=prompts, out_dir=out_dir / "teacher_samples",
                         mix=mix, seed=seed, judge=judge)
    if not read_jsonl(sampled.outputs["data"], allow_empty=True):
        raise RuntimeError(f"stage {stage}: rejection sampling of the teacher kept no samples; see "
                           f"{sampled.outputs['provenance']}")
    trained = run_sft(stage, sft_cfg, data=sampled.outputs["data"], out_dir=out_dir / "student", model=student,
                      eval_data=eval_data, tokenizer_dir=pathlib.Path(model), seed=seed)
    metrics = {**{f"sample/{k}": v for k, v in sampled.metrics.items()},
               **{f"sft/{k}": v for k, v in trained.metrics.items()}}
    metrics_path = write_json(out_dir / "metrics.json", {"stage": stage, "metrics": metrics})
    return StageResult({"model": trained.outputs["model"], "data": sampled.outputs["data"],
                        "metrics": metrics_path}, metrics)


@register_stage_kind("distill")
class DistillStage(StageKind):
    """``kind: distill``: teacher ``model`` → ``sample`` → ``sft`` of a student (see :func:`run_distill`)."""

    inputs = ("model", "prompts")
    optional_inputs = ("mix", "student", "eval_data")
    outputs = ("model", "data", "metrics")

    def check(self, stage, config, inputs):
        _, sample_cfg, sft_cfg = parse_distill_config(stage, config)
        SampleStage().check(f"{stage}: sample", sample_cfg, inputs)
        if sft_cfg.model.config is None and "student" not in inputs:
            raise ConfigError(f"stage {stage}: sft: no student: give sft.model.config (a new, smaller model) or "
                              "the input `student` (an HF directory)")
        if sft_cfg.model.config is not None and "student" in inputs:
            raise ConfigError(f"stage {stage}: sft: give either sft.model.config or the input `student`, not both")
        if inputs.get("eval_data") is not None:
            read_rows(inputs["eval_data"], (sft_cfg.prompt_field, sft_cfg.completion_field), stage=stage,
                       input_name="eval_data")

    def run(self, ctx: StageContext) -> StageResult:
        return run_distill(ctx.name, ctx.config, model=ctx.inputs["model"], prompts=ctx.inputs["prompts"],
                           out_dir=ctx.out_dir, mix=ctx.inputs.get("mix"), student=ctx.inputs.get("student"),
                           eval_data=ctx.inputs.get("eval_data"), seed=ctx.seed)
