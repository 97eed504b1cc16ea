"""Host-side batch assembly: left-padded prompts, right-padded or packed prompt+completion rows.

Everything here is numpy on the host (the output feeds ``jax.device_put``); shapes are static
where the caller asks for them (``length``, ``num_rows``) so jitted consumers do not recompile.

Conventions of :class:`TokenBatch` (the trainer's input, padded or packed alike):

- ``segment_ids``: 0 on padding, ``k >= 1`` for the k-th sequence of a row (padded rows: 1).
- ``positions``: restart at 0 at the start of every sequence; 0 on padding.
- ``loss_mask[r, t]``: ``tokens[r, t]`` is a completion token, i.e. a token the policy produced; the
  trainer scores it with the hidden state at ``t - 1`` (always the same sequence, since every
  sequence starts with at least one prompt token).
- ``values[name]``: float32 per-token values placed on the completion tokens (sampler log-probs,
  advantages ...), 0 elsewhere.
- ``row, offset, prompt_lengths, completion_lengths`` [N]: where sequence n lives, so per-sequence
  results can be gathered back in the caller's order.

Groups: with ``group_size = G`` the inputs are ``N = P * G`` sequences in which the G samples of a
prompt are consecutive; packing then places a whole group in one row, and
:func:`microbatch_slices` only cuts at group boundaries.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "PromptBatch",
    "TokenBatch",
    "pad_prompts",
    "pad_sequences",
    "pack_sequences",
    "microbatch_slices",
    "round_up",
    "expand_groups",
]


class PromptBatch(NamedTuple):
    """Left-padded prompts for the sampler (contract of ``models.forward_with_cache`` prefill).

    Attributes:
      tokens: int32 [B, T], prompts right-aligned, ``pad_id`` on the left.
      mask: bool [B, T], True on prompt tokens.
      positions: int32 [B, T], ``cumsum(mask) - 1`` clipped at 0.
      lengths: int32 [B], prompt lengths.
    """

    tokens: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    lengths: np.ndarray


class TokenBatch(NamedTuple):
    """Prompt+completion rows for the trainer (see the module docstring for the conventions)."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    values: dict[str, np.ndarray]
    row: np.ndarray
    offset: np.ndarray
    prompt_lengths: np.ndarray
    completion_lengths: np.ndarray


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _as_ids(seq: Any, what: str) -> np.ndarray:
    a = np.asarray(seq)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{what} must be a 1-D sequence of ints, got {a.dtype} with shape {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"{what} contains a negative id {int(a.min())}")
    return a.astype(np.int32)


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, *, length: int | None = None, multiple_of: int = 1
) -> PromptBatch:
    """Left-pads prompts into one array.

    Args:
      prompts: B non-empty id sequences.
      pad_id: the fill id.
      length: the padded length T (default: the longest prompt, rounded up to ``multiple_of``).
      multiple_of: round T up to a multiple of this (fewer distinct shapes, fewer compiles).

    Returns:
      A :class:`PromptBatch`.
    """
    if not len(prompts):
        raise ValueError("pad_prompts: no prompts")
    ids = [_as_ids(p, f"prompt {i}") for i, p in enumerate(prompts)]
    for i, a in enumerate(ids):
        if a.size == 0:
            raise ValueError(f"prompt {i} is empty (a prompt needs at least one token, e.g. BOS)")
    longest = max(a.size for a in ids)
    t = round_up(longest, multiple_of) if length is None else length
    if longest > t:
        i = next(i for i, a in enumerate(ids) if a.size > t)
        raise ValueError(f"prompt {i} has {ids[i].size} tokens, more than length={t}")
    tokens = np.full((len(ids), t), pad_id, np.int32)
    mask = np.zeros((len(ids), t), bool)
    for i, a in enumerate(ids):
        tokens[i, t - a.size :] = a
        mask[i, t - a.size :] = True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return PromptBatch(tokens, mask, positions, np.array([a.size for a in ids], np.int32))


def _validate(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    token_values: Mapping[str, Sequence[Sequence[float]]] | None,
    sequence_values: Mapping[str, Sequence[float]] | None,
):
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not len(prompts):
        raise ValueError("no sequences")
    ps = [_as_ids(p, f"prompt {i}") for i, p in enumerate(prompts)]
    cs = [_as_ids(c, f"completion {i}") for i, c in enumerate(completions)]
    for i, p in enumerate(ps):
        if p.size == 0:
            raise ValueError(f"prompt {i} is empty (the first completion token is scored from the last prompt token)")
    tv: dict[str, list[np.ndarray]] = {}
    for name, per_seq in (token_values or {}).items():
        if len(per_seq) != len(cs):
            raise ValueError(f"token_values[{name!r}] has {len(per_seq)} sequences, expected {len(cs)}")
        tv[name] = []
        for i, v in enumerate(per_seq):
            v = np.asarray(v, np.float32).reshape(-1)
            if v.size != cs[i].size:
                raise ValueError(
                    f"token_values[{name!r}][{i}] has {v.size} values but completion {i} has {cs[i].size} tokens"
                )
            tv[name].append(v)
    sv: dict[str, np.ndarray] = {}
    for name, v in (sequence_values or {}).items():
        v = np.asarray(v, np.float32).reshape(-1)
        if v.size != len(cs):
            raise ValueError(f"sequence_values[{name!r}] has {v.size} values, expected {len(cs)}")
        if name in tv:
            raise ValueError(f"{name!r} is both a token value and a sequence value")
        sv[name] = v
    return ps, cs, tv, sv


def _fill(
    num_rows: int,
    length: int,
    pad_id: int,
    ps: list[np.ndarray],
    cs: list[np.ndarray],
    tv: dict[str, list[np.ndarray]],
    sv: dict[str, np.ndarray],
    placement: Sequence[tuple[int, int, int]],
) -> TokenBatch:
    """Writes sequence n at (row, offset) with segment id seg, for (row, offset, seg) = placement[n]."""
    tokens = np.full((num_rows, length), pad_id, np.int32)
    segment_ids = np.zeros((num_rows, length), np.int32)
    positions = np.zeros((num_rows, length), np.int32)
    loss_mask = np.zeros((num_rows, length), bool)
    values = {name: np.zeros((num_rows, length), np.float32) for name in list(tv) + list(sv)}
    for n, (r, o, seg) in enumerate(placement):
        p, c = ps[n], cs[n]
        lp, lc = p.size, c.size
        tokens[r, o : o + lp] = p
        tokens[r, o + lp : o + lp + lc] = c
        segment_ids[r, o : o + lp + lc] = seg
        positions[r, o : o + lp + lc] = np.arange(lp + lc, dtype=np.int32)
        loss_mask[r, o + lp : o + lp + lc] = True
        for name, v in tv.items():
            values[name][r, o + lp : o + lp + lc] = v[n]
        for name, v in sv.items():
            values[name][r, o + lp : o + lp + lc] = v[n]
    placement_a = np.asarray(placement, np.int32).reshape(-1, 3)
    return TokenBatch(
        tokens=tokens,
        segment_ids=segment_ids,
        positions=positions,
        attention_mask=segment_ids > 0,
        loss_mask=loss_mask,
        values=values,
        row=placement_a[:, 0].copy(),
        offset=placement_a[:, 1].copy(),
        prompt_lengths=np.array([p.size for p in ps], np.int32),
        completion_lengths=np.array([c.size for c in cs], np.int32),
    )


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int = 0,
    *,
    length: int | None = None,
    multiple_of: int = 1,
    token_values: Mapping[str, Sequence[Sequence[float]]] | None = None,
    sequence_values: Mapping[str, Sequence[float]] | None = None,
) -> TokenBatch:
    """One right-padded row per sequence ``prompt + completion``.

    Args:
      prompts, completions: N id sequences each (prompts non-empty).
      pad_id: the fill id.
      length: the row length T (default: the longest sequence rounded up to ``multiple_of``).
      multiple_of: see :func:`pad_prompts`.
      token_values: per-completion-token values, ``{name: [values of completion n]}``.
      sequence_values: per-sequence scalars broadcast over that sequence's completion tokens.

    Returns:
      A :class:`TokenBatch` with N rows (row n is sequence n, segment id 1).
    """
    ps, cs, tv, sv = _validate(prompts, completions, token_values, sequence_values)
    longest = max(p.size + c.size for p, c in zip(ps, cs))
    t = round_up(longest, multiple_of) if length is None else length
    if longest > t:
        n = next(n for n in range(len(ps)) if ps[n].size + cs[n].size > t)
        raise ValueError(f"sequence {n} has {ps[n].size + cs[n].size} tokens, more than length={t}")
    return _fill(len(ps), t, pad_id, ps, cs, tv, sv, [(n, 0, 1) for n in range(len(ps))])


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    row_length: int,
    pad_id: int = 0,
    *,
    group_size: int = 1,
    num_rows: int | None = None,
    rows_multiple_of: int = 1,
    token_values: Mapping[str, Sequence[Sequence[float]]] | None = None,
    sequence_values: Mapping[str, Sequence[float]] | None = None,
) -> TokenBatch:
    """Packs sequences into fixed-length rows (first-fit decreasing), with segment ids.

    The packing unit is a group of ``group_size`` consecutive sequences (the samples of one
    prompt), so a group always shares a row; units are placed longest first into the first row
    with room (ties keep input order, so the result is deterministic). Inside a row, the sequences
    of a unit are contiguous and in input order.

    Args:
      prompts, completions: N id sequences each; N a multiple of ``group_size``.
      row_length: T, the length of every row.
      pad_id: the fill id.
      group_size: G, the samples per prompt kept together (1: pack sequences freely).
      num_rows: pad the output to exactly this many rows (static shapes); error if more are needed.
      rows_multiple_of: otherwise round the row count up to a multiple of this (e.g. data-parallel size).
      token_values, sequence_values: as in :func:`pad_sequences`.

    Returns:
      A :class:`TokenBatch`.
    """
    ps, cs, tv, sv = _validate(prompts, completions, token_values, sequence_values)
    n = len(ps)
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} sequences do not split into groups of group_size={group_size}")
    lengths = [p.size + c.size for p, c in zip(ps, cs)]
    units = [list(range(u * group_size, (u + 1) * group_size)) for u in range(n // group_size)]
    unit_len = [sum(lengths[i] for i in u) for u in units]
    for u, ln in enumerate(unit_len):
        if ln > row_length:
            what = f"group {u} (sequences {units[u][0]}..{units[u][-1]})" if group_size > 1 else f"sequence {u}"
            raise ValueError(f"{what} has {ln} tokens, more than row_length={row_length}")
    order = sorted(range(len(units)), key=lambda u: -unit_len[u])  # stable: ties keep input order
    free: list[int] = []  # remaining room per row
    count: list[int] = []  # sequences per row so far
    placement: list[tuple[int, int, int]] = [(0, 0, 0)] * n
    for u in order:
        r = next((r for r, room in enumerate(free) if room >= unit_len[u]), None)
        if r is None:
            r = len(free)
            free.append(row_length)
            count.append(0)
        for i in units[u]:
            placement[i] = (r, row_length - free[r], count[r] + 1)
            free[r] -= lengths[i]
            count[r] += 1
    rows = len(free)
    if num_rows is not None:
        if rows > num_rows:
            raise ValueError(f"packing needs {rows} rows of {row_length} tokens, more than num_rows={num_rows}")
        rows = num_rows
    else:
        rows = round_up(rows, rows_multiple_of)
    return _fill(rows, row_length, pad_id, ps, cs, tv, sv, placement)


def microbatch_slices(num_sequences: int, num_microbatches: int, group_size: int = 1) -> list[slice]:
    """Equal consecutive slices of a batch that cut only at group boundaries.

    Args:
      num_sequences: N, a multiple of ``group_size``.
      num_microbatches: M; the number of groups N / G must be a multiple of M.
      group_size: G.

    Returns:
      M slices of N / M sequences each.
    """
    if group_size < 1 or num_sequences % group_size:
        raise ValueError(f"{num_sequences} sequences do not split into groups of {group_size}")
    groups = num_sequences // group_size
    if num_microbatches < 1 or groups % num_microbatches:
        raise ValueError(
            f"{groups} groups of {group_size} do not split into {num_microbatches} equal micro-batches"
        )
    step = num_sequences // num_microbatches
    return [slice(k * step, (k + 1) * step) for k in range(num_microbatches)]


def expand_groups(items: Sequence[Any], group_size: int) -> list[Any]:
    """Each item repeated ``group_size`` times, consecutively: ``[a, b] -> [a, a, b, b]`` for G = 2."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return [x for x in items for _ in range(group_size)]
