"""Input checks and small helpers shared by the log-prob backends of ``r1jax_kernels``.

Shape and dtype checks are static (they never force a value). Value checks (a concrete
temperature <= 0, a concrete target id outside the vocabulary) run only on concrete inputs:
under ``jit`` nothing is inspected, and a target outside ``[0, V)`` gives a NaN log-prob in every
backend instead (loud, and the same in all of them), never a silently wrong number.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_logprob_inputs(hidden: Any, lm_head: Any, targets: Any) -> tuple[Array, Array, Array]:
    """Validates the (hidden, lm_head, targets) triple of ``token_logprobs``.

    Returns:
        The three inputs as JAX arrays (dtypes unchanged).

    Raises:
        TypeError: non-floating ``hidden``/``lm_head``, non-integer ``targets``.
        ValueError: shapes that do not fit ``hidden[..., D] @ lm_head[D, V]`` and ``targets[...]``,
            or (when ``targets`` is concrete) a target id outside ``[0, V)``.
    """
    hidden, lm_head, targets = jnp.asarray(hidden), jnp.asarray(lm_head), jnp.asarray(targets)
    if not jnp.issubdtype(hidden.dtype, jnp.floating):
        raise TypeError(f"hidden: expected a floating array [..., D], got dtype {hidden.dtype}")
    if not jnp.issubdtype(lm_head.dtype, jnp.floating):
        raise TypeError(f"lm_head: expected a floating array [D, V], got dtype {lm_head.dtype}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets: expected an integer array of token ids, got dtype {targets.dtype}")
    if hidden.ndim < 1:
        raise ValueError(f"hidden: expected shape [..., D], got a scalar")
    if lm_head.ndim != 2:
        raise ValueError(f"lm_head: expected shape [D, V], got {tuple(lm_head.shape)}")
    if lm_head.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"lm_head: first dimension {lm_head.shape[0]} does not match the hidden size "
            f"{hidden.shape[-1]} of hidden {tuple(hidden.shape)} (lm_head must be [D, V])")
    if lm_head.shape[1] < 1:
        raise ValueError("lm_head: the vocabulary dimension V is empty")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets: expected shape {tuple(hidden.shape[:-1])} (hidden's shape without D), "
            f"got {tuple(targets.shape)}")
    check_targets_in_range(targets, lm_head.shape[1])
    return hidden, lm_head, targets


def check_targets_in_range(targets: Array, vocab_size: int, name: str = "targets") -> None:
    """Raises ValueError naming the first bad position when concrete targets leave ``[0, V)``."""
    if not is_concrete(targets) or targets.size == 0:
        return
    t = np.asarray(targets)
    bad = (t < 0) | (t >= vocab_size)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: token id {int(t[pos])} at position {pos} is outside the vocabulary "
            f"[0, {vocab_size})")


def check_positive(name: str, value: Any) -> None:
    """Raises ValueError when a concrete ``value`` has an entry <= 0 or NaN; tracers pass."""
    if not is_concrete(value):
        return
    v = np.asarray(value, dtype=np.float64)
    if np.isnan(v).any() or (v <= 0).any():
        raise ValueError(f"{name}: must be > 0, got {value}")


def temperature_per_token(temperature: Any, batch_shape: tuple[int, ...]) -> Array:
    """Broadcasts a scalar (or ``batch_shape``-broadcastable) temperature to float32 ``batch_shape``.

    Raises:
        ValueError: a shape that does not broadcast to ``batch_shape``, or a concrete value <= 0.
    """
    tau = jnp.asarray(temperature, dtype=jnp.float32)
    try:
        np.broadcast_shapes(tau.shape, batch_shape)
        ok = np.broadcast_shapes(tau.shape, batch_shape) == tuple(batch_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"temperature: shape {tuple(tau.shape)} does not broadcast to the token shape "
            f"{tuple(batch_shape)}")
    check_positive("temperature", temperature)
    return jnp.broadcast_to(tau, batch_shape)


def invalid_target_mask(targets: Array, vocab_size: int) -> Array:
    """True where a target id is outside ``[0, vocab_size)`` (those log-probs are NaN)."""
    return (targets < 0) | (targets >= vocab_size)


def num_tokens(batch_shape: tuple[int, ...]) -> int:
    return int(math.prod(batch_shape))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
