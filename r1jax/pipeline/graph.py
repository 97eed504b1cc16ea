"""The pipeline config: named stages, their inputs (paths or ``stages.<name>.<output>``), checked up front.

A pipeline config (YAML)::

    out_dir: runs/r1_pipeline          # the pipeline directory: manifest.json, stages/<name>/, table
    seed: 0                            # handed to every stage (StageContext.seed)
    imports: []                        # modules or .py files that register extra stage kinds
    eval:                              # optional: held-out evaluation of every model a stage makes
      format_reward: format_strict     # the reward component whose mean is the "format rate"
      language_reward: language_consistency_en   # optional: a component whose mean is the "lang" column
      config: {data: ..., reward: ..., rollout: ..., eval: ..., run: {seed: 0}}   # an experiment
                                       # config without `model` (r1jax.train.config.ExperimentConfig)
      extra:                           # optional: more evaluations of each model, each adding columns
        - name: general
          config: {data: {task: general}, reward: {components: [{name: helpfulness}]}, ...}
          columns: {help: helpfulness}             # column -> metric of that evaluation (eval/<metric>)
          reward_models: {helpfulness: stages.helpful_rm.reward_model}   # its external components' models
    stages:
      - name: zero                     # [A-Za-z_][A-Za-z0-9_-]*, unique
        kind: rl                       # a registered stage kind (r1jax.pipeline.STAGE_KINDS)
        label: Zero                    # the model's row in the table (default: the name)
        inputs: {model: r1jax/assets/tiny_base}
        config: {...}                  # the kind's own config section
      - name: cold_start
        kind: sft
        inputs: {model: stages.zero.model, data: data/cold_start.jsonl}

An extra evaluation's ``reward_models`` may refer to any stage's output, earlier or later: a model
is evaluated with it once that stage has finished (the runner's last pass evaluates what it could
not before).

An input value that starts with ``stages.`` is a reference to an output of an earlier stage (write
``./stages...`` for a path that really starts so); any other string is a path that must exist.
:func:`load_pipeline` checks everything (unknown keys, names, kinds, references, required inputs,
paths, each kind's own ``check``, the eval section) and raises a one-line :class:`ConfigError`
naming the stage and field before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import pathlib
import re
from typing import Any, Mapping, Sequence

from r1jax.config import ConfigError, parse_overrides, read_config
from r1jax.pipeline.kinds import STAGE_KINDS, StageKind

__all__ = ["InputRef", "Stage", "EvalSection", "ExtraEval", "Pipeline", "parse_pipeline", "load_pipeline",
           "apply_pipeline_overrides", "TOP_KEYS", "STAGE_KEYS", "EVAL_KEYS"]

TOP_KEYS = ("out_dir", "seed", "imports", "eval", "stages")
STAGE_KEYS = ("name", "kind", "label", "inputs", "config")
EVAL_KEYS = ("format_reward", "language_reward", "config", "extra")
EXTRA_EVAL_KEYS = ("name", "config", "columns", "reward_models")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_REF_PREFIX = "stages."


@dataclasses.dataclass(frozen=True)
class InputRef:
    """An input made by an earlier stage: ``stages.<stage>.<output>``."""

    stage: str
    output: str

    def __str__(self) -> str:
        return f"{_REF_PREFIX}{self.stage}.{self.output}"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a pipeline, as configured."""

    name: str
    kind: str
    label: str
    inputs: Mapping[str, pathlib.Path | InputRef]
    config: Mapping[str, Any]

    def kind_class(self) -> type[StageKind]:
        return STAGE_KINDS[self.kind]

    def depends_on(self) -> tuple[str, ...]:
        """The names of the stages whose outputs this stage reads."""
        return tuple(dict.fromkeys(v.stage for v in self.inputs.values() if isinstance(v, InputRef)))


@dataclasses.dataclass(frozen=True)
class ExtraEval:
    """A further evaluation of each model (``eval.extra[i]``): its metrics become table columns."""

    name: str
    config: Mapping[str, Any]                               # an ExperimentConfig mapping without `model`
    columns: Mapping[str, str]                              # column header -> metric (without "eval/")
    reward_models: Mapping[str, pathlib.Path | InputRef]    # external component -> reward-model directory


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """The held-out evaluation of each model a stage makes (see :mod:`r1jax.pipeline.runner`)."""

    config: Mapping[str, Any]       # an ExperimentConfig mapping without `model`
    format_reward: str
    language_reward: str | None = None
    extra: tuple[ExtraEval, ...] = ()


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A checked pipeline config."""

    out_dir: pathlib.Path
    seed: int
    imports: tuple[str, ...]
    stages: tuple[Stage, ...]
    eval: EvalSection | None

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _unknown(keys: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), list(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}unknown key '{k}'{hint}; allowed keys: {', '.join(allowed)}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return copy.deepcopy(dict(value))


def load_kinds_and_imports(imports: Sequence[str]) -> None:
    """Imports the built-in stage kinds and the config's ``imports`` (which may register more)."""
    from r1jax.pipeline import load_kinds  # noqa: PLC0415 (the package imports this module)
    from r1jax.train.config import import_user_modules  # noqa: PLC0415

    load_kinds()
    import_user_modules(imports, key="imports")


def _path_or_ref(where: str, value: Any) -> pathlib.Path | InputRef:
    """An existing path (resolved) or an unchecked ``stages.<stage>.<output>`` reference."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path or stages.<stage>.<output>, got {value!r}")
    if not value.startswith(_REF_PREFIX):
        path = pathlib.Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"{where}: no such file or directory: {value}")
        return path.resolve()
    parts = value[len(_REF_PREFIX):].split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{where}: {value!r} is not a reference of the form stages.<stage>.<output>")
    return InputRef(*parts)


def _check_output(where: str, ref: InputRef, stage: Stage) -> InputRef:
    outputs = stage.kind_class().outputs
    if ref.output not in outputs:
        raise ConfigError(f"{where}: {ref}: stage {ref.stage!r} (kind {stage.kind}) has no output "
                          f"{ref.output!r}; its outputs: {', '.join(outputs) or '(none)'}")
    return ref


def _parse_input(stage: str, name: str, value: Any, earlier: Mapping[str, Stage],
                 all_names: Sequence[str]) -> pathlib.Path | InputRef:
    where = f"stage {stage}: inputs.{name}"
    ref = _path_or_ref(where, value)
    if not isinstance(ref, InputRef):
        return ref
    if ref.stage == stage:
        raise ConfigError(f"{where}: {value} refers to the stage itself (a cycle); a stage reads only outputs "
                          "of earlier stages")
    if ref.stage not in earlier:
        if ref.stage in all_names:
            raise ConfigError(f"{where}: {value} refers to stage {ref.stage!r}, which comes later in the "
                              "pipeline (stages run in order; a stage reads only outputs of earlier stages)")
        raise ConfigError(f"{where}: {value} refers to a missing stage {ref.stage!r}; stages before it: "
                          f"{', '.join(earlier) or '(none)'}")
    return _check_output(where, ref, earlier[ref.stage])


def _parse_ref_anywhere(where: str, value: Any, stages: Mapping[str, Stage]) -> pathlib.Path | InputRef:
    """A path that exists, or ``stages.<stage>.<output>`` naming a declared output of any stage."""
    ref = _path_or_ref(where, value)
    if not isinstance(ref, InputRef):
        return ref
    if ref.stage not in stages:
        raise ConfigError(f"{where}: {value!r} is not stages.<stage>.<output> of a stage in the pipeline "
                          f"({', '.join(stages)})")
    return _check_output(where, ref, stages[ref.stage])


def _parse_stage(i: int, raw: Any, earlier: Mapping[str, Stage], all_names: Sequence[str]) -> Stage:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"stages[{i}]: expected a mapping with name, kind, inputs, config; got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"stages[{i}].name: expected a name matching {_NAME.pattern}, got {name!r}")
    _unknown(raw, STAGE_KEYS, f"stage {name}: ")
    if name in earlier:
        raise ConfigError(f"stage {name}: name: duplicate stage name (stages[{list(earlier).index(name)}] "
                          f"and stages[{i}])")
    kind = raw.get("kind")
    if kind not in STAGE_KINDS:
        raise ConfigError(f"stage {name}: kind: unknown stage kind {kind!r}; known kinds: "
                          f"{', '.join(STAGE_KINDS.names()) or '(none)'}")
    cls: type[StageKind] = STAGE_KINDS[kind]
    label = raw.get("label", name)
    if not isinstance(label, str) or not label:
        raise ConfigError(f"stage {name}: label: expected a non-empty string, got {label!r}")
    raw_inputs = _mapping(raw.get("inputs"), f"stage {name}: inputs")
    config = _mapping(raw.get("config"), f"stage {name}: config")
    allowed = cls().input_names(config)
    for key in raw_inputs:
        if key not in allowed:
            raise ConfigError(f"stage {name}: inputs.{key}: kind {kind} takes no input {key!r}; its inputs: "
                              f"{', '.join(allowed) or '(none)'}")
    for key in cls.inputs:
        if key not in raw_inputs:
            raise ConfigError(f"stage {name}: inputs.{key}: missing required input of kind {kind} "
                              "(a path or stages.<stage>.<output>)")
    inputs = {k: _parse_input(name, k, v, earlier, all_names) for k, v in raw_inputs.items()}
    return Stage(name=name, kind=kind, label=label, inputs=inputs, config=config)


def _parse_eval(raw: Any, stages: Mapping[str, Stage]) -> EvalSection | None:
    if raw is None:
        return None
    section = _mapping(raw, "eval")
    _unknown(section, EVAL_KEYS, "eval: ")
    config = _mapping(section.get("config"), "eval.config")
    if "model" in config:
        raise ConfigError("eval.config.model: the evaluated model is each stage's output `model`; "
                          "remove the model section")
    fmt = section.get("format_reward", "format_strict")
    if not isinstance(fmt, str) or not fmt:
        raise ConfigError(f"eval.format_reward: expected a reward component name, got {fmt!r}")
    lang = section.get("language_reward")
    if lang is not None and (not isinstance(lang, str) or not lang):
        raise ConfigError(f"eval.language_reward: expected a reward component name, got {lang!r}")
    raw_extra = section.get("extra") or []
    if not isinstance(raw_extra, Sequence) or isinstance(raw_extra, str):
        raise ConfigError(f"eval.extra: expected a list of evaluations (name, config, columns), got {raw_extra!r}")
    extra = tuple(_parse_extra(i, raw, stages, [e.get("name") for e in raw_extra[:i] if isinstance(e, Mapping)])
                  for i, raw in enumerate(raw_extra))
    ev = EvalSection(config=config, format_reward=fmt, language_reward=lang, extra=extra)
    from r1jax.pipeline.runner import eval_experiment, extra_eval_experiment  # noqa: PLC0415 (checks in full)

    eval_experiment(ev, None)
    for e in extra:
        extra_eval_experiment(e, None, {k: None for k in e.reward_models})
    return ev


def _parse_extra(i: int, raw: Any, stages: Mapping[str, Stage], earlier_names: Sequence[str]) -> ExtraEval:
    where = f"eval.extra[{i}]"
    section = _mapping(raw, where)
    _unknown(section, EXTRA_EVAL_KEYS, f"{where}: ")
    name = section.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}.name: expected a name matching {_NAME.pattern}, got {name!r}")
    if name in earlier_names:
        raise ConfigError(f"{where}.name: duplicate evaluation name {name!r}")
    config = _mapping(section.get("config"), f"{where}.config")
    if "model" in config:
        raise ConfigError(f"{where}.config.model: the evaluated model is each stage's output `model`; "
                          "remove the model section")
    columns = _mapping(section.get("columns"), f"{where}.columns")
    if not columns or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in columns.items()):
        raise ConfigError(f"{where}.columns: expected a non-empty mapping column -> metric name, got {columns!r}")
    models = {}
    for key, value in _mapping(section.get("reward_models"), f"{where}.reward_models").items():
        # any stage's output: the evaluation waits until that stage has finished
        models[key] = _parse_ref_anywhere(f"{where}.reward_models.{key}", value, stages)
    return ExtraEval(name=name, config=config, columns=columns, reward_models=models)


def parse_pipeline(data: Mapping[str, Any]) -> Pipeline:
    """Builds and checks a :class:`Pipeline` from a config mapping; writes nothing.

    Order of checks: top-level keys, ``imports`` (imported, so the kinds they register exist), each
    stage in order (name, keys, duplicate, kind, inputs: references to earlier stages' declared outputs,
    required inputs, paths), the eval section, then each kind's own ``check``.

    Raises:
      ConfigError: one line naming the stage (or top-level key) and the field at fault.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("the top of a pipeline config must be a mapping (out_dir, seed, imports, eval, stages)")
    # top-level keys starting with "x-" hold YAML anchors that stages share (``x-rl: &rl ...``)
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    _unknown(data, TOP_KEYS, "")
    out_dir = data.get("out_dir")
    if not isinstance(out_dir, str) or not out_dir:
        raise ConfigError(f"out_dir: expected the pipeline directory (a path), got {out_dir!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    imports = data.get("imports") or ()
    if isinstance(imports, str) or not isinstance(imports, Sequence):
        raise ConfigError(f"imports: expected a list of modules or .py files, got {imports!r}")
    load_kinds_and_imports(imports)
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, Sequence) or isinstance(raw_stages, str) or not raw_stages:
        raise ConfigError("stages: expected a non-empty list of stages (each with name, kind, inputs, config)")
    all_names = [s.get("name") for s in raw_stages if isinstance(s, Mapping)]
    stages: dict[str, Stage] = {}
    for i, raw in enumerate(raw_stages):
        stage = _parse_stage(i, raw, stages, all_names)
        stages[stage.name] = stage
    evaluation = _parse_eval(data.get("eval"), stages)
    for stage in stages.values():
        kind = stage.kind_class()()
        inputs = {k: (None if isinstance(v, InputRef) else v) for k, v in stage.inputs.items()}
        try:
            kind.check(stage.name, copy.deepcopy(dict(stage.config)), inputs)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(f"stage {stage.name}") else f"stage {stage.name}: {msg}") from None
    return Pipeline(out_dir=pathlib.Path(out_dir).expanduser(), seed=seed, imports=tuple(imports),
                    stages=tuple(stages.values()), eval=evaluation)


def _unshared_copy(value: Any) -> Any:
    """A copy of nested dicts / lists in which no two places share an object (YAML anchors ``&a`` / ``*a``
    make two stages share one config dict: an override of one must not change the other)."""
    if isinstance(value, Mapping):
        return {k: _unshared_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared_copy(v) for v in value]
    return value


def apply_pipeline_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of a pipeline config with dotted ``key=value`` overrides applied.

    ``stages.<name>.<key>...`` addresses the stage of that name in the ``stages`` list, e.g.
    ``stages.zero.config.run.steps=2`` or ``stages.cold_start.inputs.data=other.jsonl``.

    Raises:
      ConfigError: a malformed override, or one naming a stage that is not in the list.
    """
    out = _unshared_copy(data)
    for key, value in parse_overrides(overrides):
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # the stages list: address a stage by its name
                match = [s for s in node if isinstance(s, Mapping) and s.get("name") == part]
                if not match:
                    names = [s.get("name") for s in node if isinstance(s, Mapping)]
                    raise ConfigError(f"override {key}: no stage named {part!r}; stages: {', '.join(map(str, names))}")
                node = match[0]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, (dict, list)):
                raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        if isinstance(node, list):
            raise ConfigError(f"override {key}: name a key of the stage, e.g. {key}.config.<key>=...")
        node[parts[-1]] = value
    return out


def load_pipeline(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Reads a pipeline config file, applies overrides and checks it (:func:`parse_pipeline`)."""
    return parse_pipeline(apply_pipeline_overrides(read_config(path), overrides))
