"""Small shared helpers of ``r1jax.algos``: dtype, masks, input checks, safe division.

Checks run on shapes (always static) and on hyper-parameters only when they are concrete
Python or NumPy numbers: a traced hyper-parameter (under ``jit`` or ``vmap``) is never
inspected, so sweeping it stays trace-free.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any  # jax.typing.ArrayLike plus Python scalars; kept loose for readability.

DEFAULT_LOG_RATIO_CLAMP = 20.0
"""The bound on every log-ratio before ``exp`` (policy ratios, KL estimators, importance weights)."""


def f32(x: ArrayLike, name: str) -> Array:
    """Returns ``x`` as a float32 array; raises TypeError naming ``name`` for non-numeric input."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {dtype}")
    return jnp.asarray(x).astype(jnp.float32)


def mask_or_ones(mask: ArrayLike | None, shape: Sequence[int], name: str = "mask") -> Array:
    """Returns ``mask`` as a bool array of ``shape`` (all True when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(tuple(shape), dtype=bool)
    mask = jnp.asarray(mask)
    check_shape(mask, shape, name)
    return mask.astype(bool)


def check_shape(x: Array, shape: Sequence[int], name: str) -> None:
    """Raises ValueError naming ``name`` unless ``x.shape == shape``."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")


def check_rank(x: Array, rank: int, name: str, what: str) -> None:
    """Raises ValueError naming ``name`` unless ``x.ndim == rank``; ``what`` names the axes."""
    if x.ndim != rank:
        raise ValueError(f"{name}: expected a rank-{rank} array {what}, got shape {tuple(x.shape)}")


def _concrete_scalar(value: Any) -> float | None:
    """Returns ``value`` as a float when it is a concrete scalar, else None (tracers, arrays)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (bool, int, float, np.number)):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return float(value)
    return None


def check_range(name: str, value: Any, *, ge: float | None = None, gt: float | None = None,
                le: float | None = None, lt: float | None = None) -> None:
    """Raises ValueError naming ``name`` when a concrete scalar ``value`` is out of range.

    Traced values and arrays are not inspected (that would force a concretisation).
    """
    v = _concrete_scalar(value)
    if v is None:
        return
    if np.isnan(v):
        raise ValueError(f"{name}: got NaN")
    bounds = ((ge, lambda: v >= ge, ">="), (gt, lambda: v > gt, ">"),
              (le, lambda: v <= le, "<="), (lt, lambda: v < lt, "<"))
    for bound, ok, op in bounds:
        if bound is not None and not ok():
            raise ValueError(f"{name}: must be {op} {bound}, got {value}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raises ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else 0; NaN-free in value and gradient."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_where(mask: Array, x: Array) -> Array:
    """``x`` where ``mask`` else 0 (a ``where``, not a product: NaN/inf in padding never leak)."""
    return jnp.where(mask, x, jnp.zeros_like(x))
