"""pass@k: the unbiased estimator of Chen et al. (2021).

With ``n`` samples per problem of which ``c`` are correct, the probability that at least one of
``k`` samples drawn without replacement from those ``n`` is correct is

    pass@k = 1 - C(n - c, k) / C(n, k)                      (Chen et al. 2021, eq. 1)

The binomial ratio is evaluated as a product, never through factorials:

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)    (valid when n - c >= k)

and the product is accumulated in log space (``sum log1p(-k / i)``) with ``1 - exp(.)`` taken by
``-expm1``, so both ends (pass@k near 0 and near 1) keep full relative precision. When
``n - c < k`` every ``k``-subset contains a correct sample and pass@k is exactly 1.

Everything here is NumPy on the host: evaluation runs after sampling, outside any ``jit``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

__all__ = ["pass_at_k", "mean_pass_at_k"]


def _as_int_array(x: Any, name: str) -> np.ndarray:
    """Returns ``x`` as an int64 array; TypeError naming ``name`` for non-integer input."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected integers, got dtype {arr.dtype} (value {x!r})")
    return arr.astype(np.int64)


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    """Index (as a tuple) of the first True entry of ``mask``."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def pass_at_k(n: Any, c: Any, k: Any) -> np.ndarray:
    """Unbiased pass@k per problem, vectorised over problems (NumPy broadcasting).

    Args:
      n: number of samples drawn for each problem; int or integer array, every entry >= 1.
      c: number of those samples that are correct; integer array broadcastable with ``n``,
        ``0 <= c <= n``.
      k: the ``k`` of pass@k; int or integer array broadcastable with ``n``, ``1 <= k <= n``.

    Returns:
      float64 array of the broadcast shape of ``(n, c, k)`` (a 0-d array for scalar inputs):
      ``1 - C(n - c, k) / C(n, k)`` for each entry, in [0, 1]. ``pass@1 == c / n``;
      ``pass@n == 1`` whenever ``c > 0``; ``c == 0`` gives exactly 0.

    Raises:
      TypeError: a non-integer ``n``, ``c`` or ``k``.
      ValueError: ``n < 1``, ``c`` outside ``[0, n]``, or ``k`` outside ``[1, n]`` (the message
        names the first offending entry; the estimator is undefined for ``k > n``).

    References:
      Chen et al., "Evaluating Large Language Models Trained on Code", arXiv 2107.03374 (2021),
      eq. 1 and the numerically stable product form of its Figure 3.
    """
    n_a = _as_int_array(n, "n")
    c_a = _as_int_array(c, "c")
    k_a = _as_int_array(k, "k")
    try:
        n_b, c_b, k_b = np.broadcast_arrays(n_a, c_a, k_a)
    except ValueError as e:
        raise ValueError(f"pass_at_k: n {n_a.shape}, c {c_a.shape} and k {k_a.shape} "
                         f"do not broadcast") from e
    if np.any(n_b < 1):
        i = _first_bad(n_b < 1)
        raise ValueError(f"n: need at least one sample per problem, got n={n_b[i]} at index {i}")
    if np.any((c_b < 0) | (c_b > n_b)):
        i = _first_bad((c_b < 0) | (c_b > n_b))
        raise ValueError(f"c: number correct must be in [0, n], got c={c_b[i]} with n={n_b[i]} "
                         f"at index {i}")
    if np.any(k_b < 1):
        i = _first_bad(k_b < 1)
        raise ValueError(f"k: must be >= 1, got k={k_b[i]} at index {i}")
    if np.any(k_b > n_b):
        i = _first_bad(k_b > n_b)
        raise ValueError(f"k: pass@{k_b[i]} needs at least k={k_b[i]} samples per problem, but "
                         f"problem at index {i} has only n={n_b[i]}")

    shape = n_b.shape
    n_f, c_f, k_f = (a.reshape(-1) for a in (n_b, c_b, k_b))
    out = np.ones(n_f.shape, dtype=np.float64)
    # Rows with n - c < k: every k-subset holds a correct sample; pass@k is exactly 1.
    rows = np.flatnonzero(n_f - c_f >= k_f)
    # Process rows in blocks so the [rows, max c] factor matrix stays small.
    block = max(1, (1 << 22) // max(1, int(c_f.max(initial=0))))
    for start in range(0, rows.size, block):
        r = rows[start:start + block]
        nr, cr, kr = n_f[r][:, None], c_f[r][:, None], k_f[r][:, None]
        j = np.arange(int(cr.max(initial=0)))[None, :]
        valid = j < cr
        # i = n, n-1, ..., n-c+1 (all > k on these rows); padding gets i = inf, a factor of 1.
        i = np.where(valid, nr - j, np.inf)
        log_ratio = np.log1p(-kr / i).sum(axis=1)
        out[r] = 0.0 - np.expm1(log_ratio)  # "0.0 -" keeps c = 0 at +0.0, not -0.0
    return out.reshape(shape)


def mean_pass_at_k(correct: Any, ks: int | Iterable[int]) -> dict[int, float]:
    """pass@k averaged over problems, from a boolean correctness matrix.

    Args:
      correct: ``[problems, n]`` array of bools (or 0/1 integers): ``correct[p, s]`` is whether
        sample ``s`` of problem ``p`` is correct. Every problem has the same ``n``; for a ragged
        set of samples call :func:`pass_at_k` with per-problem ``n`` and ``c``.
      ks: one ``k`` or an iterable of them, each in ``[1, n]``.

    Returns:
      ``{k: mean over problems of pass@k}`` as Python floats, in the order of ``ks``.

    Raises:
      ValueError: ``correct`` not rank 2, no problems or no samples, entries other than 0/1,
        an empty ``ks``, or a ``k`` outside ``[1, n]``.
      TypeError: a non-integer ``k``.

    References:
      Chen et al., arXiv 2107.03374 (2021), eq. 1 (the per-problem estimator is averaged over
      problems, as in their Section 2.1).
    """
    arr = np.asarray(correct)
    if arr.ndim != 2:
        raise ValueError(f"correct: expected a [problems, n] array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"correct: need at least one problem and one sample, got shape "
                         f"{arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"correct: expected bools or 0/1 numbers, got dtype {arr.dtype}")
        if not np.all((arr == 0) | (arr == 1)):
            bad = _first_bad(~((arr == 0) | (arr == 1)))
            raise ValueError(f"correct: entries must be 0/1, got {arr[bad]} at index {bad}")
    arr = arr.astype(bool)
    ks_list = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not ks_list:
        raise ValueError("ks: need at least one k")
    n = arr.shape[1]
    c = arr.sum(axis=1)
    out: dict[int, float] = {}
    for k in ks_list:
        value = float(np.mean(pass_at_k(n, c, k)))  # validates k (type and range) first
        out[int(k)] = value
    return out
