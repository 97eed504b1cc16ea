"""The ``rl`` stage kind: the RL trainer (:class:`r1jax.train.loop.Trainer`) as a pipeline stage.

Input ``model``: the Hugging Face directory of the policy to start from. Config: an experiment
config (:class:`r1jax.train.config.ExperimentConfig`, as in ``configs/r1_zero_tiny.yaml``) without
``model.path``, which is the input. ``run.seed`` defaults to the pipeline's seed; ``run.name`` and
``run.out_dir`` are not used: the run directory is ``<stage dir>/run``, always resumed
(``checkpoint.resume: true``), so a killed stage continues from its last checkpoint
(``checkpoint.every``) with the same data order and sampling seeds.

Inputs named after the config's external reward components (``helpfulness``, ``safety``): the
reward-model directories (``stages.<rm stage>.reward_model``) that score them, in place of the
component's ``model`` key, so a retrained reward model re-runs the stage.

Outputs: ``model``, the final policy exported as a Hugging Face directory (``<stage dir>/model``),
and ``metrics``, a JSON file of the final held-out evaluation (:meth:`Trainer.evaluate`).
"""

from __future__ import annotations

import copy
import logging
import pathlib
import shutil
from typing import Any, Mapping

from r1jax.config import ConfigError, from_dict
from r1jax.pipeline.datasets import write_json
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind

__all__ = ["RLKind", "rl_experiment", "external_components", "set_reward_models"]

log = logging.getLogger("r1jax.pipeline")


def external_components(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of the external (reward-model) components in an experiment config's reward section."""
    from r1jax.rewards import get_reward  # noqa: PLC0415

    reward = config.get("reward") if isinstance(config, Mapping) else None
    components = (reward or {}).get("components") if isinstance(reward, Mapping) else None
    names = []
    for c in components if isinstance(components, (list, tuple)) else ():
        name = c.get("name") if isinstance(c, Mapping) else None
        try:
            if isinstance(name, str) and get_reward(name).kind == "external":
                names.append(name)
        except KeyError:
            pass  # an unknown reward: the experiment config's own check names it
    return tuple(names)


def set_reward_models(data: dict[str, Any], reward_models: Mapping[str, pathlib.Path | str | None], *, where: str,
                      source: str) -> None:
    """Sets ``reward.components[i].model`` of the external components named in ``reward_models`` (in place);
    None stands for a directory a stage has yet to make (``"."``: the config check then passes).

    Raises:
      ConfigError: ``<where>.reward.components[i].model``: the config names that model too.
    """
    for name, directory in reward_models.items():
        for i, c in enumerate(data["reward"]["components"]):
            if c.get("name") == name:
                if c.get("model") is not None:
                    raise ConfigError(f"{where}.reward.components[{i}].model: {name!r} gets its reward model from "
                                      f"{source}.{name}; remove one of the two")
                c["model"] = str(directory) if directory is not None else "."


def rl_experiment(stage: str, config: Mapping[str, Any], model: pathlib.Path | None, seed: int | None = None,
                  reward_models: Mapping[str, pathlib.Path | None] | None = None):
    """The checked :class:`~r1jax.train.config.ExperimentConfig` of an ``rl`` stage.

    Args:
      stage: the stage's name (for messages).
      config: the stage's config section.
      model: the input policy directory; None when an earlier stage makes it (the check before any
        stage runs): then every key but ``model.path`` is checked.
      seed: ``run.seed`` when the config does not set one.
      reward_models: external component name -> its reward-model directory (the stage's inputs of
        those names); None for one an earlier stage will make.

    Raises:
      ConfigError: ``stage <name>: config: <dotted key>: ...``.
    """
    from r1jax.train.config import ExperimentConfig, import_user_modules  # noqa: PLC0415

    data = copy.deepcopy(dict(config))
    where = f"stage {stage}: config"
    for section in ("model", "run", "checkpoint"):
        if not isinstance(data.get(section) or {}, Mapping):
            raise ConfigError(f"{where}.{section}: expected a mapping, got {data[section]!r}")
    model_section = dict(data.get("model") or {})
    if model_section.get("path") is not None:
        raise ConfigError(f"{where}.model.path: the policy is the stage's input 'model' (inputs.model); "
                          "remove model.path from the config")
    checkpoint = dict(data.get("checkpoint") or {})
    if checkpoint.get("resume", True) is not True:
        raise ConfigError(f"{where}.checkpoint.resume: an rl stage always resumes its own run (the pipeline "
                          "moves a stale stage directory aside); remove checkpoint.resume")
    checkpoint["resume"] = True
    run = dict(data.get("run") or {})
    if seed is not None:
        run.setdefault("seed", seed)
    import_user_modules(run.get("imports") or (), key=f"{where}.run.imports")
    if model is not None:
        model_section["path"] = str(model)
    else:
        model_section.setdefault("tokenizer", ".")  # stands in for the model an earlier stage will make
    data.update(model=model_section, checkpoint=checkpoint, run=run)
    set_reward_models(data, reward_models or {}, where=where, source="inputs")
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


@register_stage_kind("rl")
class RLKind(StageKind):
    """GRPO / PPO from the input policy (see the module docstring)."""

    inputs = ("model",)
    outputs = ("model", "metrics")

    def input_names(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        """``model`` and one input per external reward component (its reward-model directory)."""
        return ("model", *external_components(config))

    def check(self, stage: str, config: Mapping[str, Any], inputs: Mapping[str, pathlib.Path | None]) -> None:
        """Checks the experiment config, the input model directory and the data (fields of a data file)."""
        from r1jax.data import make_dataset  # noqa: PLC0415

        model = inputs.get("model")
        if model is not None and not (pathlib.Path(model) / "config.json").is_file():
            raise ConfigError(f"stage {stage}: inputs.model: {model} is not a Hugging Face model directory "
                              "(no config.json)")
        cfg = rl_experiment(stage, config, model, reward_models={k: v for k, v in inputs.items() if k != "model"})
        try:
            make_dataset(cfg.data, "train")
            make_dataset(cfg.data, "eval")
        except ValueError as e:
            raise ConfigError(f"stage {stage}: config.data: {e}") from None

    def run(self, ctx: StageContext) -> StageResult:
        """Trains (resuming the run in ``<out_dir>/run``), evaluates, exports the policy."""
        from r1jax.train.loop import Trainer  # noqa: PLC0415
        from r1jax.train.run_dir import move_aside  # noqa: PLC0415

        cfg = rl_experiment(ctx.name, ctx.config, ctx.inputs["model"], ctx.seed,
                            reward_models={k: v for k, v in ctx.inputs.items() if k != "model"})
        model_dir, metrics_path = ctx.out_dir / "model", ctx.out_dir / "metrics.json"
        trainer = Trainer(cfg, ctx.out_dir / "run")
        try:
            trainer.run()
            metrics = trainer.evaluate()
            step = int(trainer.state.step)
            stamp = ctx.out_dir / "model.step"  # the step the export in model/ was made at
            if not (model_dir.is_dir() and stamp.is_file() and stamp.read_text().strip() == str(step)):
                partial = ctx.out_dir / "model.partial"  # an export cut short by a kill: never finished
                if partial.exists():
                    shutil.rmtree(partial)
                trainer.export(partial)
                if model_dir.exists():  # an export of another step (the run was extended): kept
                    log.warning("stage %s: moved the export of an earlier step aside to %s", ctx.name,
                                move_aside(model_dir))
                partial.rename(model_dir)
                stamp.write_text(f"{step}\n")
        finally:
            trainer.close()
        write_json(metrics_path, metrics)
        return StageResult(outputs={"model": model_dir, "metrics": metrics_path},
                           metrics={k: float(v) for k, v in metrics.items()})
