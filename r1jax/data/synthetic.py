"""Synthetic reasoning tasks generated on the fly: multi-digit arithmetic and Countdown.

Each task draws a problem from a ``numpy`` generator; :class:`SyntheticDataset` turns a task into an
indexable dataset whose example ``i`` of a split is a pure function of ``(seed, split, i)``.

Held-out split: every problem has a canonical key (``"12+47"`` with commutative operands sorted;
Countdown: the sorted numbers and the target). A problem is held out when a hash of ``task|key``
falls below ``heldout_fraction``; the train split rejects held-out problems and the eval split keeps
only them, so the two never share a problem (for any seeds, since the partition ignores the seed).

Examples are dicts::

    {"id": "arithmetic/train/17", "task": "arithmetic", "prompt": "47+85",
     "reference": "132", "answer": "132", "solution": "7+5=12 carry 1, 4+8+1=13 carry 1, 1"}

``reference`` is what the reward checks (Countdown: ``{"target": int, "numbers": [int, ...]}``),
``answer`` the text an SFT target puts in ``<answer>`` (Countdown: an equation), ``solution`` a
chain of thought for SFT.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = [
    "ArithmeticTask",
    "CountdownTask",
    "SyntheticDataset",
    "is_heldout",
    "addition_trace",
    "subtraction_trace",
    "multiplication_trace",
]

_SPLITS = {"train": 0, "eval": 1}
_MAX_ATTEMPTS = 10_000


class SyntheticTask(Protocol):
    """A problem generator: ``sample(rng) -> (canonical_key, example_fields)``."""

    name: str

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]: ...


def is_heldout(task: str, key: str, fraction: float) -> bool:
    """Whether problem ``key`` of ``task`` belongs to the held-out split (a seed-free hash partition)."""
    h = int.from_bytes(hashlib.blake2b(f"{task}|{key}".encode(), digest_size=8).digest(), "big")
    return h / 2.0**64 < fraction


# -------------------------------------------------------------------------------------------- arithmetic


def _digits(n: int) -> list[int]:
    """Decimal digits of n >= 0, least significant first."""
    return [int(c) for c in reversed(str(n))]


def addition_trace(a: int, b: int) -> str:
    """Column addition from the right with the carries written out.

    ``addition_trace(147, 285) == "7+5=12 carry 1, 4+8+1=13 carry 1, 1+2+1=4"``; the written
    digit of each column is the last digit of its sum, a final carry is the leading digit.
    """
    da, db = _digits(a), _digits(b)
    n = max(len(da), len(db))
    da += [0] * (n - len(da))
    db += [0] * (n - len(db))
    steps, carry = [], 0
    for x, y in zip(da, db):
        s = x + y + carry
        step = f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}"
        carry = s // 10
        steps.append(step + (" carry 1" if carry else ""))
    return ", ".join(steps)


def subtraction_trace(a: int, b: int) -> str:
    """Column subtraction (``a >= b``) from the right with the borrows written out.

    ``subtraction_trace(432, 285) == "12-5=7 borrow 1, 13-8-1=4 borrow 1, 4-2-1=1"``: a borrowing
    column shows its digit plus ten.
    """
    if a < b:
        raise ValueError(f"subtraction_trace needs a >= b, got {a} - {b}")
    da, db = _digits(a), _digits(b)
    db += [0] * (len(da) - len(db))
    steps, borrow = [], 0
    for x, y in zip(da, db):
        v = x - y - borrow
        top = x
        if v < 0:
            v += 10
            top = x + 10
        step = f"{top}-{y}" + (f"-{borrow}" if borrow else "") + f"={v}"
        borrow = 1 if top != x else 0
        steps.append(step + (" borrow 1" if borrow else ""))
    return ", ".join(steps)


def multiplication_trace(a: int, b: int) -> str:
    """Long multiplication: one partial product per non-zero digit of ``b``, then their sum.

    ``multiplication_trace(147, 285) == "147*5=735, 147*80=11760, 147*200=29400, 735+11760+29400=41895"``.
    """
    parts = []
    for j, d in enumerate(_digits(b)):
        if d:
            m = d * 10**j
            parts.append((f"{a}*{m}={a * m}", a * m))
    if not parts:
        return f"{a}*0=0"
    steps = [p for p, _ in parts]
    if len(parts) > 1:
        steps.append("+".join(str(v) for _, v in parts) + f"={a * b}")
    return ", ".join(steps)


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
    """Multi-digit arithmetic: ``a op b`` with both operands of ``digits`` digits.

    Attributes:
      digits: the difficulty: digits per operand (1 means 0..9; d > 1 means 10^(d-1)..10^d-1).
      operations: drawn uniformly from ``"+"``, ``"-"`` (operands ordered so the result is >= 0), ``"*"``.
    """

    digits: int = 2
    operations: tuple[str, ...] = ("+",)
    name: str = "arithmetic"

    def __post_init__(self):
        if not 1 <= self.digits <= 18:
            raise ValueError(f"ArithmeticTask.digits must be in 1..18, got {self.digits}")
        if not self.operations or any(op not in ("+", "-", "*") for op in self.operations):
            raise ValueError(f"ArithmeticTask.operations must be a non-empty subset of + - *, got {self.operations!r}")

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        op = self.operations[int(rng.integers(len(self.operations)))]
        lo = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        hi = 10**self.digits
        a, b = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        if op == "+":
            result, trace = a + b, addition_trace(a, b)
        elif op == "-":
            a, b = max(a, b), min(a, b)
            result, trace = a - b, subtraction_trace(a, b)
        else:
            result, trace = a * b, multiplication_trace(a, b)
        key = f"{a}{op}{b}" if op == "-" else f"{min(a, b)}{op}{max(a, b)}"
        return key, {"prompt": f"{a}{op}{b}", "reference": str(result), "answer": str(result), "solution": trace}


# -------------------------------------------------------------------------------------------- countdown

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _wrap(expr: str, prec: int, op: str, right: bool) -> str:
    need = prec < _PREC[op] or (right and prec == _PREC[op] and op in "-/")
    return f"({expr})" if need else expr


@dataclasses.dataclass(frozen=True)
class CountdownTask:
    """Countdown: combine ``num_numbers`` numbers with + - * / (each used exactly once) to reach a target.

    The generator builds a random expression over all the numbers (every intermediate value a
    positive integer: subtraction larger minus smaller, exact division only), so every instance is
    solvable by construction; ``answer`` is that expression and ``solution`` its steps.

    Attributes:
      num_numbers: the difficulty (>= 2).
      max_number: numbers are drawn from 1..max_number.
      max_target: instances whose target exceeds it are redrawn.
    """

    num_numbers: int = 3
    max_number: int = 20
    max_target: int = 100
    name: str = "countdown"

    def __post_init__(self):
        if not 2 <= self.num_numbers <= 8:
            raise ValueError(f"CountdownTask.num_numbers must be in 2..8, got {self.num_numbers}")
        if self.max_number < 1 or self.max_target < 1:
            raise ValueError(f"CountdownTask: max_number and max_target must be >= 1, got {self.max_number}, {self.max_target}")

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
        for _ in range(_MAX_ATTEMPTS):
            numbers = [int(x) for x in rng.integers(1, self.max_number + 1, size=self.num_numbers)]
            items = [(v, str(v), 3) for v in numbers]  # (value, expression, precedence)
            steps = []
            while len(items) > 1:
                i, j = (int(x) for x in rng.choice(len(items), size=2, replace=False))
                (a, ea, pa), (b, eb, pb) = items[i], items[j]
                if a < b:
                    (a, ea, pa), (b, eb, pb) = (b, eb, pb), (a, ea, pa)
                ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b > 1 and a % b == 0 else [])
                op = ops[int(rng.integers(len(ops)))]
                r = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
                steps.append(f"{a}{op}{b}={r}")
                expr = _wrap(ea, pa, op, False) + op + _wrap(eb, pb, op, True)
                items = [it for k, it in enumerate(items) if k not in (i, j)] + [(r, expr, _PREC[op])]
            target, expr, _ = items[0]
            if 1 <= target <= self.max_target:
                break
        else:  # pragma: no cover - needs absurd settings
            raise ValueError(f"CountdownTask: no target <= {self.max_target} found in {_MAX_ATTEMPTS} draws")
        key = f"{sorted(numbers)}->{target}"
        return key, {
            "prompt": f"Use {' '.join(map(str, numbers))} to make {target}",
            "reference": {"target": target, "numbers": numbers},
            "answer": expr,
            "solution": ", ".join(steps),
        }


# -------------------------------------------------------------------------------------------- dataset


class SyntheticDataset:
    """An indexable, deterministic dataset of ``size`` examples of a synthetic task.

    Example ``i`` is drawn from ``numpy.random.default_rng([seed, split_code, i])``; draws whose
    problem falls in the other split (:func:`is_heldout`) are rejected.

    Args:
      task: an :class:`ArithmeticTask`, :class:`CountdownTask` or any ``SyntheticTask``.
      split: ``"train"`` or ``"eval"``.
      size: number of examples (the length of an epoch).
      seed: a non-negative int.
      heldout_fraction: the share of the problem space reserved for ``"eval"`` (0 <= f < 1).
    """

    def __init__(self, task: SyntheticTask, *, split: str = "train", size: int = 10_000, seed: int = 0, heldout_fraction: float = 0.1):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        if split == "eval" and heldout_fraction == 0.0:
            raise ValueError("the eval split of a synthetic task needs heldout_fraction > 0")
        self.task, self.split, self.size, self.seed = task, split, size, seed
        self.heldout_fraction = heldout_fraction
        self.name = task.name

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range 0..{self.size - 1}")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        want_heldout = self.split == "eval"
        for _ in range(_MAX_ATTEMPTS):
            key, fields = self.task.sample(rng)
            if is_heldout(self.name, key, self.heldout_fraction) == want_heldout:
                return {"id": f"{self.name}/{self.split}/{index}", "task": self.name, **fields}
        raise ValueError(
            f"{self.name}/{self.split}: no problem of this split in {_MAX_ATTEMPTS} draws "
            f"(heldout_fraction={self.heldout_fraction} is too small or too large for this difficulty)"
        )

    def examples(self, indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Examples at ``indices`` (default: all)."""
        return [self[i] for i in (range(self.size) if indices is None else indices)]

    def __repr__(self) -> str:
        return f"SyntheticDataset({self.task!r}, split={self.split!r}, size={self.size}, seed={self.seed})"
