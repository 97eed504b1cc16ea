"""A deterministic, resumable iterator over prompt batches.

The order is a pure function of ``(seed, epoch)``: epoch ``e`` visits the dataset in the order
``numpy.random.default_rng([seed, e]).permutation(n)`` (or ``0..n-1`` without shuffling). Batches
run across epoch boundaries, so every batch has ``batch_size`` examples and every example is seen
once per epoch. The whole position is three ints, so ``state()`` is a small JSON-ready dict the
trainer checkpoints beside the model, and ``restore(state)`` continues with exactly the batch that
would have come next.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

__all__ = ["PromptIterator", "IndexedDataset"]

_STATE_VERSION = 1


class IndexedDataset(Protocol):
    """What the iterator needs: a length and integer indexing (synthetic and file datasets both)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class PromptIterator:
    """Endless batches of examples, in a seeded order, with a checkpointable position.

    Args:
      dataset: an :class:`IndexedDataset`.
      batch_size: examples per batch (prompts; the sampler draws G completions of each).
      seed: the shuffling seed (>= 0).
      shuffle: a fresh permutation per epoch (False: dataset order every epoch).

    Example::

        it = PromptIterator(ds, batch_size=8, seed=0)
        batch = next(it)              # list of 8 example dicts
        saved = it.state()            # {"version": 1, "seed": 0, "epoch": 0, "index": 8, ...}
        it2 = PromptIterator(ds, batch_size=8); it2.restore(saved)   # continues identically
    """

    def __init__(self, dataset: IndexedDataset, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        n = len(dataset)
        if n < 1:
            raise ValueError("PromptIterator: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"PromptIterator: batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0:
            raise ValueError(f"PromptIterator: seed must be >= 0, got {seed}")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self._n = n
        self._seed = int(seed)
        self._epoch = 0
        self._index = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    # ---------------------------------------------------------------- order
    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
            else:
                self._order = np.arange(self._n)
            self._order_epoch = epoch
        assert self._order is not None
        return self._order

    def next_indices(self) -> list[int]:
        """Dataset indices of the next batch (advances the position)."""
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._epoch_order(self._epoch)
            take = min(self.batch_size - len(out), self._n - self._index)
            out.extend(int(i) for i in order[self._index : self._index + take])
            self._index += take
            if self._index == self._n:
                self._epoch, self._index = self._epoch + 1, 0
        return out

    def __iter__(self) -> "PromptIterator":
        return self

    def __next__(self) -> list[Any]:
        return [self.dataset[i] for i in self.next_indices()]

    @property
    def epoch(self) -> int:
        """Epochs completed so far (the epoch the next example comes from)."""
        return self._epoch

    # ---------------------------------------------------------------- checkpointing
    def state(self) -> dict[str, int]:
        """The position as a plain, JSON-serialisable dict of ints."""
        return {
            "version": _STATE_VERSION,
            "seed": self._seed,
            "epoch": self._epoch,
            "index": self._index,
            "num_examples": self._n,
            "shuffle": int(self.shuffle),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from a :meth:`state` (the seed and epoch position come from the state).

        Raises:
          ValueError: a key is missing or not an int, or the state belongs to a dataset of another
            size or another shuffle setting (resuming there would silently change the order).
        """
        keys = ("version", "seed", "epoch", "index", "num_examples", "shuffle")
        for k in keys:
            if k not in state:
                raise ValueError(f"iterator state is missing {k!r} (got keys {sorted(state)})")
            if isinstance(state[k], bool) or not isinstance(state[k], int):
                raise ValueError(f"iterator state {k!r} must be an int, got {state[k]!r}")
        unknown = sorted(set(state) - set(keys))
        if unknown:
            raise ValueError(f"iterator state has unknown keys {unknown}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(f"iterator state version {state['version']} is not {_STATE_VERSION}")
        if state["num_examples"] != self._n:
            raise ValueError(
                f"iterator state is for a dataset of {state['num_examples']} examples, this one has {self._n}"
            )
        if bool(state["shuffle"]) != self.shuffle:
            raise ValueError(f"iterator state has shuffle={bool(state['shuffle'])}, this iterator {self.shuffle}")
        if state["seed"] < 0 or state["epoch"] < 0 or not 0 <= state["index"] < self._n:
            raise ValueError(f"iterator state out of range: {dict(state)}")
        self._seed, self._epoch, self._index = state["seed"], state["epoch"], state["index"]
        self._order_epoch = None
