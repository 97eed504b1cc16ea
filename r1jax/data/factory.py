"""``DataConfig`` and the task registry: ``make_dataset(config, split)``.

Built-in tasks: ``"arithmetic"``, ``"countdown"`` (synthetic, :mod:`r1jax.data.synthetic`),
``"logic"``, ``"stem_choice"``, ``"code"``, ``"general"`` (synthetic, one per task domain,
:mod:`r1jax.data.domains`), ``"jsonl"``, ``"parquet"`` (files, :mod:`r1jax.data.files`) and
``"mixture"``: several of these with weights (``data.mixture``, :mod:`r1jax.data.mixture`).
:func:`register_task` adds more.

Splits: synthetic tasks partition the problem space by hash (``heldout_fraction``). File tasks read
``eval_path`` for ``"eval"`` when it is given (then ``"train"`` is all of ``train_path``); without
it, the rows of ``train_path`` are partitioned by a hash of the question text.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

from r1jax.config import ConfigError, field, validate_fields
from r1jax.data.domains import CodeTask, GeneralTask, LogicTask, StemChoiceTask
from r1jax.data.files import FieldMap, FileDataset, load_jsonl, load_parquet
from r1jax.data.iterator import IndexedDataset
from r1jax.data.mixture import (
    NO_VERIFIER,
    MixtureDataset,
    MixtureEntry,
    round_robin_slots,
    train_slots,
    weighted_counts,
)
from r1jax.data.synthetic import ArithmeticTask, CountdownTask, SyntheticDataset
from r1jax.data.templates import PROMPT_TEMPLATES

__all__ = ["DataConfig", "FieldMap", "MixtureEntry", "make_dataset", "register_task", "resolve_verifier", "TASKS",
           "TASK_REWARDS"]

_FILE_TASKS = ("jsonl", "parquet")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where prompts come from and how they are rendered."""

    task: str = field("arithmetic", help="task name in the registry: arithmetic, countdown, jsonl, parquet, "
                                          "mixture, ...")
    mixture: tuple[MixtureEntry, ...] = field((), help="task mixture: the weighted tasks (r1jax.data.mixture)")
    difficulty: int = field(2, ge=1, help="arithmetic: digits per operand; countdown: numbers per puzzle; logic: "
                                          "people; stem_choice: digits of the operands; code: operators")
    seed: int = field(0, ge=0, help="seed of the synthetic problems and of the shuffling order")
    template: str = field("r1_zero", choices=tuple(PROMPT_TEMPLATES), help="prompt template name")
    system_prompt: str | None = field(None, help="system message (template 'chat' only)")
    num_train: int = field(10_000, ge=1, help="synthetic: examples per training epoch")
    num_eval: int = field(256, ge=1, help="synthetic: examples in the eval split")
    heldout_fraction: float = field(0.1, ge=0.0, lt=1.0, help="share of problems reserved for eval (hash partition)")
    operations: tuple[str, ...] = field(("+",), choices=("+", "-", "*"), help="arithmetic operators drawn uniformly")
    countdown_max_number: int = field(20, ge=1, help="countdown: numbers drawn from 1..this")
    countdown_max_target: int = field(100, ge=1, help="countdown: largest target")
    train_path: str | None = field(None, help="jsonl/parquet: the training file")
    eval_path: str | None = field(None, help="jsonl/parquet: the eval file (default: a hash split of train_path)")
    fields: FieldMap = field(default_factory=FieldMap, help="jsonl/parquet: field mapping")
    file_task: str = field("math", help="jsonl/parquet: task name written into examples (selects the reward)")
    cache_dir: str | None = field(None, help="parquet: datasets cache directory")

    def check(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: {self.task!r} is not a registered task; known: {', '.join(sorted(TASKS))}")
        if self.task == "countdown" and self.difficulty < 2:
            raise ConfigError(f"difficulty: countdown needs at least 2 numbers, got {self.difficulty}")
        if self.task == "arithmetic" and self.difficulty > 18:
            raise ConfigError(f"difficulty: arithmetic supports up to 18 digits, got {self.difficulty}")
        if self.task == "arithmetic" and not self.operations:
            raise ConfigError("operations: needs at least one of + - *")
        if self.task == "logic" and not 2 <= self.difficulty <= 12:
            raise ConfigError(f"difficulty: logic puzzles have 2..12 people, got {self.difficulty}")
        if self.task in ("stem_choice", "code") and self.difficulty > 6:
            raise ConfigError(f"difficulty: {self.task} supports up to 6, got {self.difficulty}")
        if self.system_prompt is not None and self.template != "chat":
            raise ConfigError(f"system_prompt: only used with template 'chat', not {self.template!r}")
        if self.task in _FILE_TASKS:
            if not self.train_path:
                raise ConfigError(f"train_path: required for task {self.task!r}")
            for name in ("train_path", "eval_path"):
                p = getattr(self, name)
                if p is not None and not pathlib.Path(p).is_file():
                    raise ConfigError(f"{name}: file not found: {p}")
        if self.mixture and self.task != "mixture":
            raise ConfigError(f"mixture: set task: mixture to train on it (task is {self.task!r})")
        if self.task == "mixture":
            _check_mixture(self)


def _check_mixture(config: DataConfig) -> None:
    """The checks of ``task: mixture``: every entry, its task's own checks, its verifier, the weights."""
    if not config.mixture:
        raise ConfigError("mixture: task 'mixture' needs at least one entry {task: ..., weight: ...}")
    for name in ("train_path", "eval_path"):
        if getattr(config, name) is not None:
            raise ConfigError(f"{name}: with task 'mixture', give each file entry its own {name} (mixture[i].{name})")
    seen: dict[tuple, int] = {}
    for i, entry in enumerate(config.mixture):
        where = f"mixture[{i}]"
        if not isinstance(entry, MixtureEntry):
            raise ConfigError(f"{where}: expected a mixture entry {{task: ..., weight: ...}}, got {entry!r}")
        validate_fields(entry, f"{where}.")
        try:
            entry.check()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if entry.task == "mixture" or entry.task not in TASKS:
            known = ", ".join(sorted(t for t in TASKS if t != "mixture"))
            raise ConfigError(f"{where}.task: {entry.task!r} is not a registered task; known: {known}")
        if entry.task in _FILE_TASKS and entry.num_train is not None:
            raise ConfigError(f"{where}.num_train: only for synthetic tasks (a file task's pool is its file)")
        for name in ("train_path", "eval_path"):
            if entry.task not in _FILE_TASKS and getattr(entry, name) is not None:
                raise ConfigError(f"{where}.{name}: only for file tasks (jsonl, parquet), not {entry.task!r}")
        try:
            _entry_config(config, entry).check()
        except ConfigError as e:
            raise ConfigError(f"{where}.{e}") from None
        resolve_verifier(entry, where)
        key = dataclasses.astuple(dataclasses.replace(entry, weight=0.0))
        if key in seen:
            raise ConfigError(f"{where}: repeats mixture[{seen[key]}] (same task and options); merge their weights")
        seen[key] = i
    if sum(entry.weight for entry in config.mixture) <= 0:
        raise ConfigError("mixture: the weights sum to 0; give at least one entry a weight > 0")


def resolve_verifier(entry: MixtureEntry, where: str = "mixture[i]") -> str:
    """The name of the accuracy reward that checks ``entry``'s examples (``"none"``: no rule does).

    Default: the first reward the task declares (:data:`TASK_REWARDS`). An explicit verifier must be a
    registered rule-based accuracy reward and, when the task declares its rewards, one of them.

    Raises:
      ConfigError: naming ``where.verifier``: a task that declares no verifier and names none, an
        unknown or non-accuracy reward, a reward that cannot score the task's references, or ``none``
        for a task that has a verifier.
    """
    from r1jax.rewards.registry import get_reward  # noqa: PLC0415 - keeps the data package light

    declared = TASK_REWARDS.get(entry.task, ())
    if entry.verifier is None:
        if declared:
            return declared[0]
        raise ConfigError(f"{where}.verifier: task {entry.task!r} declares no verifier; name a rule-based accuracy "
                          "reward (e.g. math_accuracy), or none for prompts that only a reward model scores")
    if entry.verifier == NO_VERIFIER:
        if declared:
            raise ConfigError(f"{where}.verifier: none would leave task {entry.task!r} unchecked; its verifier is "
                              f"{' or '.join(declared)} (leave verifier unset to use it)")
        return NO_VERIFIER
    try:
        spec = get_reward(entry.verifier)
    except KeyError as e:
        raise ConfigError(f"{where}.verifier: {e.args[0]}") from None
    if spec.kind != "rule" or not spec.accuracy or spec.name == "domain_verifier":
        raise ConfigError(f"{where}.verifier: {entry.verifier!r} is not a rule-based accuracy reward (one that says "
                          "whether the answer is correct, e.g. math_accuracy, multiple_choice, exact_match)")
    if declared and entry.verifier not in declared:
        raise ConfigError(f"{where}.verifier: {entry.verifier!r} cannot score the references of task "
                          f"{entry.task!r}; use {' or '.join(declared)}")
    return entry.verifier


def _entry_config(config: DataConfig, entry: MixtureEntry, *, num_train: int | None = None) -> DataConfig:
    """The single-task config of a mixture entry: ``config`` with the entry's task and options in place."""
    return dataclasses.replace(
        config,
        task=entry.task,
        mixture=(),
        difficulty=config.difficulty if entry.difficulty is None else entry.difficulty,
        num_train=num_train or entry.num_train or config.num_train,
        num_eval=entry.num_eval or config.num_eval,
        train_path=entry.train_path,
        eval_path=entry.eval_path,
    )


DatasetBuilder = Callable[[DataConfig, str], IndexedDataset]
TASKS: dict[str, DatasetBuilder] = {}
TASK_REWARDS: dict[str, tuple[str, ...]] = {}
"""Task name → the accuracy rewards that can score its references (tasks without an entry: any)."""


def register_task(name: str, builder: DatasetBuilder, *, rewards: tuple[str, ...] = (),
                  overwrite: bool = False) -> None:
    """Registers ``builder(config, split) -> dataset`` under ``name`` (usable as ``DataConfig.task``).

    Args:
      name: the task name.
      builder: ``builder(config, split) -> dataset``.
      rewards: the accuracy rewards that can score the task's references (empty: not declared).
      overwrite: replace an existing task.
    """
    if name in TASKS and not overwrite:
        raise ValueError(f"task {name!r} is already registered")
    TASKS[name] = builder
    TASK_REWARDS.pop(name, None)
    if rewards:
        TASK_REWARDS[name] = tuple(rewards)


def _synthetic(task: Any) -> DatasetBuilder:
    def build(config: DataConfig, split: str) -> IndexedDataset:
        return SyntheticDataset(
            task(config),
            split=split,
            size=config.num_train if split == "train" else config.num_eval,
            seed=config.seed,
            heldout_fraction=config.heldout_fraction,
        )

    return build


def _file(loader: Callable[..., FileDataset]) -> DatasetBuilder:
    def build(config: DataConfig, split: str) -> IndexedDataset:
        kw: dict[str, Any] = {"task": config.file_task}
        if loader is load_parquet:
            kw["cache_dir"] = config.cache_dir
        if split == "eval" and config.eval_path:
            return loader(config.eval_path, config.fields, **kw)
        ds = loader(config.train_path, config.fields, **kw)
        if config.eval_path:
            return ds
        if config.heldout_fraction == 0.0:
            if split == "eval":
                raise ValueError("no eval split: set eval_path or heldout_fraction > 0")
            return ds
        return ds.split(config.heldout_fraction, heldout=split == "eval")

    return build


register_task(
    "arithmetic",
    _synthetic(lambda c: ArithmeticTask(digits=c.difficulty, operations=c.operations)),
    rewards=("math_accuracy",),
)
register_task(
    "countdown",
    _synthetic(
        lambda c: CountdownTask(num_numbers=c.difficulty, max_number=c.countdown_max_number, max_target=c.countdown_max_target)
    ),
    rewards=("countdown",),
)
register_task("logic", _synthetic(lambda c: LogicTask(people=c.difficulty)), rewards=("exact_match",))
register_task("stem_choice", _synthetic(lambda c: StemChoiceTask(digits=c.difficulty)), rewards=("multiple_choice",))
register_task("code", _synthetic(lambda c: CodeTask(ops=c.difficulty)), rewards=("code_tests",))
register_task("general", _synthetic(lambda c: GeneralTask()))
register_task("jsonl", _file(load_jsonl))
register_task("parquet", _file(load_parquet))


def _build_mixture(config: DataConfig, split: str) -> IndexedDataset:
    """The mixed dataset of ``config.mixture`` (see :mod:`r1jax.data.mixture`)."""
    entries = config.mixture
    tags = [(e.domain_name, resolve_verifier(e, f"mixture[{i}]")) for i, e in enumerate(entries)]
    counts = weighted_counts([e.weight for e in entries], config.num_train) if split == "train" else None
    parts: list[Any] = []
    for i, entry in enumerate(entries):
        if counts is not None and counts[i] == 0:
            parts.append(())  # no training slot: not built
            continue
        sub = _entry_config(config, entry, num_train=entry.num_train or (counts[i] if counts else None))
        try:
            parts.append(TASKS[entry.task](sub, split))
        except ValueError as e:
            raise ValueError(f"mixture[{i}] ({entry.task}, {split}): {e}") from None
    if counts is not None:
        slots = train_slots(counts, [len(p) for p in parts], config.seed)
    else:
        slots = round_robin_slots([min(len(p), e.num_eval or config.num_eval) for p, e in zip(parts, entries)])
    return MixtureDataset(parts, tags, slots, split)


register_task("mixture", _build_mixture, rewards=("domain_verifier",))


def make_dataset(config: DataConfig, split: str = "train") -> IndexedDataset:
    """The dataset of ``config`` for ``split``.

    Args:
      config: a :class:`DataConfig` (validated again here, so a hand-built config is checked too).
      split: ``"train"`` or ``"eval"``.

    Returns:
      An indexable dataset of example dicts (``id, task, prompt, reference, answer, solution``).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    config.check()
    return TASKS[config.task](config, split)
