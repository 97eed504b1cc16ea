"""``DataConfig`` and the task registry: ``make_dataset(config, split)``.

Built-in tasks: ``"arithmetic"``, ``"countdown"`` (synthetic, :mod:`r1jax.data.synthetic`),
``"jsonl"``, ``"parquet"`` (files, :mod:`r1jax.data.files`). :func:`register_task` adds more.

Splits: synthetic tasks partition the problem space by hash (``heldout_fraction``). File tasks read
``eval_path`` for ``"eval"`` when it is given (then ``"train"`` is all of ``train_path``); without
it, the rows of ``train_path`` are partitioned by a hash of the question text.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

from r1jax.config import ConfigError, field
from r1jax.data.files import FieldMap, FileDataset, load_jsonl, load_parquet
from r1jax.data.iterator import IndexedDataset
from r1jax.data.synthetic import ArithmeticTask, CountdownTask, SyntheticDataset
from r1jax.data.templates import PROMPT_TEMPLATES

__all__ = ["DataConfig", "FieldMap", "make_dataset", "register_task", "TASKS", "TASK_REWARDS"]

_FILE_TASKS = ("jsonl", "parquet")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where prompts come from and how they are rendered."""

    task: str = field("arithmetic", help="task name in the registry: arithmetic, countdown, jsonl, parquet, ...")
    difficulty: int = field(2, ge=1, help="arithmetic: digits per operand; countdown: numbers per puzzle")
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
        if self.system_prompt is not None and self.template != "chat":
            raise ConfigError(f"system_prompt: only used with template 'chat', not {self.template!r}")
        if self.task in _FILE_TASKS:
            if not self.train_path:
                raise ConfigError(f"train_path: required for task {self.task!r}")
            for name in ("train_path", "eval_path"):
                p = getattr(self, name)
                if p is not None and not pathlib.Path(p).is_file():
                    raise ConfigError(f"{name}: file not found: {p}")


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
register_task("jsonl", _file(load_jsonl))
register_task("parquet", _file(load_parquet))


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
