"""Task mixtures: one RL run's prompts drawn from several task domains with weights (DeepSeek-R1 §4.1).

A config names the tasks of the mix, each with its weight and its own options::

    data:
      task: mixture
      num_train: 10000          # examples per epoch of the mixed training set
      num_eval: 64              # held-out examples per entry (unless the entry sets num_eval)
      mixture:
        - {task: arithmetic, weight: 0.4, domain: math, difficulty: 2}
        - {task: countdown, weight: 0.2, domain: math, difficulty: 3}
        - {task: stem_choice, weight: 0.1, domain: stem}
        - {task: logic, weight: 0.2, difficulty: 4}
        - {task: code, weight: 0.1, difficulty: 2}
        - {task: general, weight: 0.0, verifier: none}      # weight 0: evaluated, not trained
    reward:
      components: [{name: domain_verifier, weight: 1.0}, {name: format_strict, weight: 1.0}]

**Training set.** Entry ``k`` gets ``n_k`` of the ``data.num_train`` examples, its share of the
weights rounded by largest remainder (so the counts sum to ``num_train`` and follow the weights to
within one example). They are drawn from the entry's own dataset (built by the task registry from
``data`` with the entry's options in place): a synthetic entry makes a pool of ``num_train``
examples (default: ``n_k``, each used once), a file entry uses its file; the pool is visited in a
seeded order, cycling when ``n_k`` exceeds it. The ``(entry, index)`` slots are then shuffled with
``numpy.random.default_rng([data.seed, 0x6d6978])``. The result is a plain indexable dataset of fixed
length, so :class:`~r1jax.data.iterator.PromptIterator` draws from it unchanged: deterministic given
``data.seed`` and resumable from its ``state()``.

**Eval set.** Every entry's held-out split (also weight-0 entries: evaluated, not trained), up to
``num_eval`` examples each, interleaved round-robin (entry 0, 1, ..., 0, 1, ...), so that the first
``eval.num_prompts`` examples cover the domains evenly.

**Examples** are the task's own, tagged::

    {"id": "mixture/train/17", "source_id": "logic/train/4", "task": "logic", "domain": "logic",
     "verifier": "exact_match", "prompt": "...", "answer": "cal", "solution": "...",
     "reference": {"verifier": "exact_match", "reference": "cal"}}

``domain`` is the entry's ``domain`` (default: its task name); ``verifier`` the registered accuracy
reward that checks it (default: the first reward the task declares in
:data:`~r1jax.data.factory.TASK_REWARDS`; ``none`` for prompts only a reward model can score). The
reference is wrapped with its verifier's name, so the one reward component ``domain_verifier``
(:mod:`r1jax.rewards.domain`) scores every example with its own verifier.

:func:`domain_metrics` gives the per-domain accuracy and reward means of a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.config import ConfigError, field
from r1jax.rewards.domain import NO_VERIFIER

__all__ = [
    "MixtureEntry",
    "MixtureDataset",
    "NO_VERIFIER",
    "weighted_counts",
    "train_slots",
    "round_robin_slots",
    "tag_example",
    "domain_metrics",
]

_MIX_CODE = 0x6D6978  # "mix": keeps the mixture's draws apart from the tasks' own seeded draws


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    """One task of a mixture (an item of ``data.mixture``); unset options take the ``data`` values."""

    task: str = field(help="task name in the registry (arithmetic, countdown, logic, stem_choice, code, general, ...)")
    weight: float = field(1.0, ge=0.0, help="share of the training examples (normalised over entries; 0: eval only)")
    domain: str | None = field(None, help="domain name its examples are tagged with (default: the task name)")
    verifier: str | None = field(None, help="accuracy reward that checks it (default: the task's own; none: no rule)")
    difficulty: int | None = field(None, ge=1, help="the task's difficulty (default: data.difficulty)")
    num_train: int | None = field(None, ge=1, help="synthetic: distinct training problems (default: its share)")
    num_eval: int | None = field(None, ge=1, help="held-out examples of this entry (default: data.num_eval)")
    train_path: str | None = field(None, help="jsonl/parquet: the training file")
    eval_path: str | None = field(None, help="jsonl/parquet: the eval file (default: a hash split of train_path)")

    def check(self) -> None:
        if not self.task:
            raise ConfigError("task: a mixture entry needs a registered task name")
        if self.domain is not None and (not self.domain or any(c.isspace() or c == "/" for c in self.domain)):
            raise ConfigError(f"domain: {self.domain!r} must be a non-empty name without blanks or '/'")

    @property
    def domain_name(self) -> str:
        """The domain examples are tagged with."""
        return self.domain if self.domain is not None else self.task


# -------------------------------------------------------------------------------------------- slots


def weighted_counts(weights: Sequence[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` by largest remainder (ties: the earlier entry).

    >>> weighted_counts([0.5, 0.3, 0.2], 7)
    [4, 2, 1]

    Raises:
      ValueError: a negative or non-finite weight, or weights summing to 0.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(w)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: total - int(counts.sum())]:
        counts[k] += 1
    return [int(c) for c in counts]


def train_slots(counts: Sequence[int], sizes: Sequence[int], seed: int) -> np.ndarray:
    """The shuffled ``[sum(counts), 2]`` (entry, index) slots of a mixed training set.

    Entry ``k`` fills ``counts[k]`` slots with indices of its dataset of ``sizes[k]`` examples, in
    the order ``default_rng([seed, MIX, k]).permutation(sizes[k])``, cycled; all slots are then
    shuffled by ``default_rng([seed, MIX])``.
    """
    blocks = []
    for k, (count, size) in enumerate(zip(counts, sizes)):
        if count:
            if size < 1:
                raise ValueError(f"entry {k} has {count} slots but an empty dataset")
            order = np.random.default_rng([seed, _MIX_CODE, k]).permutation(size)
            blocks.append(np.stack([np.full(count, k), order[np.arange(count) % size]], axis=1))
    slots = np.concatenate(blocks).astype(np.int64)
    return slots[np.random.default_rng([seed, _MIX_CODE]).permutation(len(slots))]


def round_robin_slots(sizes: Sequence[int]) -> np.ndarray:
    """The ``[sum(sizes), 2]`` (entry, index) slots taking one example of each entry in turn.

    >>> round_robin_slots([2, 1]).tolist()
    [[0, 0], [1, 0], [0, 1]]
    """
    slots = [(k, j) for j in range(max(sizes, default=0)) for k, size in enumerate(sizes) if j < size]
    return np.asarray(slots, np.int64).reshape(-1, 2)


def tag_example(example: Mapping[str, Any], *, index: int, split: str, domain: str, verifier: str) -> dict[str, Any]:
    """A task's example as a mixture example: new ``id``, ``source_id``, ``domain``, ``verifier``, and
    ``reference`` wrapped as ``{"verifier": verifier, "reference": <the original>}``."""
    return {**example, "id": f"mixture/{split}/{index}", "source_id": example.get("id"), "domain": domain,
            "verifier": verifier, "reference": {"verifier": verifier, "reference": example.get("reference")}}


class MixtureDataset:
    """An indexable mixture: example ``i`` is slot ``i``'s example of its entry's dataset, tagged.

    Args:
      parts: one indexable dataset per entry.
      tags: one ``(domain, verifier)`` per entry.
      slots: ``[N, 2]`` (entry, index) pairs (:func:`train_slots`, :func:`round_robin_slots`).
      split: ``"train"`` or ``"eval"`` (written into the ids).
    """

    name = "mixture"

    def __init__(self, parts: Sequence[Any], tags: Sequence[tuple[str, str]], slots: np.ndarray, split: str):
        if len(parts) != len(tags):
            raise ValueError(f"MixtureDataset: {len(parts)} parts but {len(tags)} tags")
        slots = np.asarray(slots, np.int64).reshape(-1, 2)
        if len(slots) == 0:
            raise ValueError(f"MixtureDataset: the {split} split has no examples")
        self.parts, self.tags, self.slots, self.split = list(parts), list(tags), slots, split

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self.slots):
            raise IndexError(f"mixture/{self.split}: index {index} out of range 0..{len(self.slots) - 1}")
        k, j = (int(v) for v in self.slots[index])
        domain, verifier = self.tags[k]
        return tag_example(self.parts[k][j], index=index, split=self.split, domain=domain, verifier=verifier)

    def domains(self) -> list[str]:
        """The domain of every example, in index order (without generating the examples)."""
        return [self.tags[int(k)][0] for k in self.slots[:, 0]]

    def examples(self, indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Examples at ``indices`` (default: all)."""
        return [self[i] for i in (range(len(self)) if indices is None else indices)]

    def __repr__(self) -> str:
        return f"MixtureDataset(split={self.split!r}, size={len(self)}, tags={self.tags})"


# -------------------------------------------------------------------------------------------- metrics


def domain_metrics(domains: Sequence[str], correct: np.ndarray | None, rewards: np.ndarray, *,
                   verifiers: Sequence[str] | None = None,
                   prefixes: tuple[str, str] = ("accuracy", "reward")) -> dict[str, float]:
    """Per-domain means of a batch: ``accuracy/<domain>`` and ``reward/<domain>``.

    Args:
      domains: the domain of each of the P prompts (``[e["domain"] for e in examples]``).
      correct: [P] or [P, G] correctness (bool or 0/1; G samples per prompt), or None (no accuracy).
      rewards: [P] or [P, G] total rewards.
      verifiers: each prompt's verifier (``e["verifier"]``): a domain whose prompts all have
        verifier ``none`` gets no accuracy (nothing checks it); None: every domain gets one.
      prefixes: the key prefixes for accuracy and reward (e.g. ``("accuracy_by_domain", ...)`` when a
        domain name could clash with a reward component's ``reward/<name>``).

    Returns:
      ``{f"{prefixes[0]}/{d}": mean correctness, f"{prefixes[1]}/{d}": mean reward}`` over the
      samples of each domain present, domains in sorted order.

    Raises:
      ValueError: arrays whose first dimension is not P, or ``verifiers`` of another length.
    """
    p = len(domains)
    rewards = np.asarray(rewards, np.float64)
    arrays = {"rewards": rewards} if correct is None else {"rewards": rewards, "correct": np.asarray(correct)}
    for name, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] != p:
            raise ValueError(f"domain_metrics: {name} has shape {arr.shape}; its first dimension must be "
                             f"the {p} prompts of domains")
    if verifiers is not None and len(verifiers) != p:
        raise ValueError(f"domain_metrics: {len(verifiers)} verifiers for {p} prompts")
    names = np.asarray(list(domains), dtype=object)
    out: dict[str, float] = {}
    for d in sorted(set(domains)):
        mask = names == d
        checked = verifiers is None or any(v != NO_VERIFIER for v, m in zip(verifiers, mask) if m)
        if correct is not None and checked:
            out[f"{prefixes[0]}/{d}"] = float(np.asarray(arrays["correct"][mask], np.float64).mean())
        out[f"{prefixes[1]}/{d}"] = float(rewards[mask].mean())
    return out
