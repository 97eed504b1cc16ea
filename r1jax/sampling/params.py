"""Sampling parameters and per-sample results: plain Python, no JAX.

These types are shared by the embedded JAX sampler (:mod:`r1jax.sampling.sampler`), the rollout
service (:mod:`r1jax.rollout`) and the vLLM engine, whose process must never import JAX; so this
module imports only the standard library and numpy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import numpy as np

__all__ = ["FinishReason", "Sample", "SamplingParams"]

FinishReason = Literal["stop", "length"]
"""Why a sample ended: ``"stop"`` (it emitted one of ``stop_token_ids``, which is kept as its last
token) or ``"length"`` (it reached ``max_new_tokens``)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample completions for a batch of prompts.

    Frozen and hashable. Only ``max_new_tokens`` (rounded up to a bucket), ``n`` and the number
    of stop ids shape the compiled sampler; ``temperature``, ``top_p``, ``top_k``, the stop id
    values and ``seed`` are traced per row, so sweeping them never recompiles and requests with
    different values can share one batch.

    Attributes:
        temperature: softmax temperature; ``0`` means greedy (argmax) decoding.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability mass (after
            temperature and top-k) reaches ``top_p``; ``1.0`` disables it.
        top_k: keep the ``top_k`` most likely tokens; ``0`` disables it.
        max_new_tokens: the most tokens generated per sample.
        stop_token_ids: a sample ends (finish reason ``"stop"``) right after emitting one of these.
        n: samples per prompt (the GRPO group size).
        seed: the same seed, prompts and weights give the same tokens; ``None`` draws a fresh
            seed per request.

    The log-probs returned with each sample are the "processed" log-probs
    ``log_softmax(logits / temperature)`` of the sampled token, BEFORE top-p/top-k truncation,
    exactly as the trainer computes them. Greedy rows (``temperature == 0``) report the
    temperature-1 log-probs.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1
    seed: int | None = None

    def __post_init__(self):
        # Normalise list -> tuple so the dataclass stays hashable.
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check_number("temperature", self.temperature, lambda v: v >= 0.0, ">= 0")
        _check_number("top_p", self.top_p, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
        _check_int("top_k", self.top_k, lambda v: v >= 0, ">= 0 (0 disables top-k)")
        _check_int("max_new_tokens", self.max_new_tokens, lambda v: v >= 1, ">= 1")
        _check_int("n", self.n, lambda v: v >= 1, ">= 1")
        for i, t in enumerate(self.stop_token_ids):
            _check_int(f"stop_token_ids[{i}]", t, lambda v: v >= 0, ">= 0")
        if self.seed is not None:
            _check_int("seed", self.seed, lambda v: 0 <= v < 2**32, "in [0, 2**32)")

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (``temperature == 0``)."""
        return self.temperature == 0.0

    @property
    def truncates(self) -> bool:
        """Whether top-p or top-k truncation is active (selects the compiled filter path)."""
        return self.top_p < 1.0 or self.top_k > 0


def _check_number(name, value, ok, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"sampling.{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or not ok(value):
        raise ValueError(f"sampling.{name}: must be {what}, got {value!r}")


def _check_int(name, value, ok, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"sampling.{name}: expected an int, got {type(value).__name__} {value!r}")
    if not ok(value):
        raise ValueError(f"sampling.{name}: must be {what}, got {value!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One completion.

    Attributes:
        token_ids: int32 ``[L]`` generated tokens (the stop token included when
            ``finish_reason == "stop"``), never padded.
        logprobs: float32 ``[L]`` processed log-prob of each generated token under the weights
            that produced it (see :class:`SamplingParams`).
        finish_reason: ``"stop"`` or ``"length"``.
    """

    token_ids: np.ndarray
    logprobs: np.ndarray
    finish_reason: FinishReason

    def __post_init__(self):
        object.__setattr__(self, "token_ids", np.asarray(self.token_ids, dtype=np.int32))
        object.__setattr__(self, "logprobs", np.asarray(self.logprobs, dtype=np.float32))
        if self.token_ids.ndim != 1 or self.token_ids.shape != self.logprobs.shape:
            raise ValueError(
                f"Sample: token_ids {self.token_ids.shape} and logprobs {self.logprobs.shape} "
                "must be 1-D of the same length")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"Sample.finish_reason: expected 'stop' or 'length', got {self.finish_reason!r}")

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (self.finish_reason == other.finish_reason
                and np.array_equal(self.token_ids, other.token_ids)
                and np.array_equal(self.logprobs, other.logprobs))

    __hash__ = None  # arrays inside: not hashable


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, max_length: int,
                  max_new_tokens: int) -> list[np.ndarray]:
    """Validates prompts of token ids against a model; returns them as int32 arrays.

    Args:
        prompts: one sequence of token ids per prompt.
        vocab_size: ids must lie in ``[0, vocab_size)``.
        max_length: ``len(prompt) + max_new_tokens`` must not exceed it.
        max_new_tokens: the requested generation budget.

    Returns:
        A list of 1-D int32 arrays.

    Raises:
        ValueError: naming the prompt (and token position) at fault: no prompts, an empty
            prompt, an id outside the vocabulary, or a prompt too long for the budget.
    """
    if len(prompts) == 0:
        raise ValueError("prompts: empty list; give at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1:
            raise ValueError(f"prompts[{i}]: expected a 1-D sequence of token ids, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"prompts[{i}]: empty prompt; every prompt needs at least one token")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"prompts[{i}]: token ids must be integers, got dtype {a.dtype}")
        bad = np.flatnonzero((a < 0) | (a >= vocab_size))
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"prompts[{i}][{j}]: token id {int(a[j])} is outside the vocabulary "
                             f"[0, {vocab_size})")
        if a.size + max_new_tokens > max_length:
            raise ValueError(f"prompts[{i}]: {a.size} prompt tokens + max_new_tokens {max_new_tokens} "
                             f"= {a.size + max_new_tokens} exceeds the model's max length {max_length}")
        out.append(a.astype(np.int32))
    return out
