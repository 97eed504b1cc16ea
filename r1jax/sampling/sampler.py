"""The embedded JAX sampler: batched generation with a KV cache, top-p / top-k, per-token log-probs.

Two jitted pure functions do the work:

* :func:`prefill` runs the LEFT-padded prompts through :func:`r1jax.models.forward_with_cache`
  once and returns a :class:`DecodeState` holding the cache and the next-token logits;
* :func:`decode` runs up to ``num_steps`` decode steps in a ``lax.while_loop`` that stops early
  once every row has finished: sample a token per row, record its processed log-prob, feed it
  back through the cache. The state is donated, so the cache and output buffers are updated in
  place.

Shapes are static and bucketed (batch, prompt length and the generation budget rounded up to a
power of two or a multiple of a bucket size; stop ids padded), so a new batch rarely compiles.
Everything that does not change shapes is traced and per row: temperature, top-p, top-k, the
stop ids, the per-row budget and the random stream. Rows of different requests can therefore
share a batch, and sweeping a sampling parameter never recompiles.

Log-probs are the trainer's: :func:`r1jax_kernels.logprobs_from_logits` of the float32 logits
``hidden @ lm_head`` at the row's temperature, BEFORE top-p / top-k truncation (the "processed"
log-probs; DESIGN.md "The sampler and the trainer compute the same log-probs").

Randomness: row ``(prompt i, sample j)`` of a request with seed ``s`` draws step ``t`` by inverting
the CDF at one uniform number from ``fold_in(fold_in(fold_in(PRNGKey(s), i), j), t)``, independent
of batch composition and padding.

The :class:`Sampler` class is the host-side driver: it buckets, pads, batches whole prompt groups,
calls the two functions and turns rows back into :class:`~r1jax.sampling.params.Sample` objects.

References:
  Holtzman et al., "The curious case of neural text degeneration", ICLR 2020, arXiv 1904.09751,
  section 3.1 (nucleus / top-p sampling); Fan et al., "Hierarchical neural story generation",
  arXiv 1805.04833 (top-k sampling); Pope et al., "Efficiently scaling transformer inference",
  arXiv 2211.05102 (KV-cache prefill / decode).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import secrets
import threading
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models import KVCache, ModelConfig, cast_for_compute, forward_with_cache, init_cache, lm_head_weight
from r1jax.models.transformer import unstack_layers
from r1jax.sampling.params import Sample, SamplingParams
from r1jax_kernels import logprobs_from_logits

__all__ = [
    "BatchShape", "RowParams", "DecodeState", "Row", "Sampler",
    "filter_logits", "argmax_first", "categorical_inverse_cdf", "sample_tokens", "prefill", "decode", "bucket",
]

_F32 = jnp.float32


# ------------------------------------------------------------------------------------------------
# Pure, jit-able pieces


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """Static shape of one compiled batch (hashable: a static jit argument).

    Attributes:
        batch: rows B (padded).
        prompt_len: padded prompt length P (prompts are LEFT-padded to it).
        max_new_tokens: generation buffer N (each row stops at its own traced budget <= N).
        num_stop: stop-id slots per row (padded with -1).
        truncate: whether the top-p / top-k filter is compiled in (False: plain sampling, no sort).
        stochastic: whether any row samples (False: all rows greedy, no random draw is compiled).
        cache_dtype: KV-cache dtype name, or None for the parameter dtype.
        pad_id: token written after a row has finished.
        prefill_batch: rows of the prefill when rows share prompts (the distinct prompts, padded to a
            power of two): each prompt is run once and its cache copied to its rows; None = one
            prefill row per row.
        cache_len: KV-cache slots (``Sampler(decode_window=W)`` starts at ``prompt_len + W`` and
            doubles the room after the prompt as it fills); None = ``prompt_len + max_new_tokens`` from the start.
    """

    batch: int
    prompt_len: int
    max_new_tokens: int
    num_stop: int = 1
    truncate: bool = False
    stochastic: bool = True
    cache_dtype: str | None = None
    pad_id: int = 0
    prefill_batch: int | None = None
    cache_len: int | None = None


class RowParams(NamedTuple):
    """Per-row sampling parameters, all traced.

    Attributes:
        temperature: [B] float32; 0 = greedy.
        top_p: [B] float32 in (0, 1]; 1 = off.
        top_k: [B] int32; 0 = off.
        max_new: [B] int32 per-row generation budget (<= N).
        stop_ids: [B, S] int32 stop token ids, -1 = empty slot.
        keys: [B, 2] uint32 per-row PRNG keys.
    """

    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array
    max_new: jax.Array
    stop_ids: jax.Array
    keys: jax.Array


class DecodeState(NamedTuple):
    """Everything the decode loop carries (a pytree; donated between calls).

    Attributes:
        cache: the KV cache (``P + N`` slots).
        logits: [B, V] float32 logits for each row's next token.
        positions: [B] int32 RoPE position of each row's next token.
        step: [] int32 tokens generated so far (the next output column).
        tokens: [B, N] int32 generated tokens (``pad_id`` after a row finished).
        logprobs: [B, N] float32 processed log-probs of ``tokens`` (0 after a row finished).
        lengths: [B] int32 tokens generated per row.
        done: [B] bool, the row has finished (or is batch padding).
        stopped: [B] bool, the row finished on a stop token.
        row: the :class:`RowParams`.
    """

    cache: KVCache
    logits: jax.Array
    positions: jax.Array
    step: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array
    stopped: jax.Array
    row: RowParams


def _order_keys(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values ``x`` (-inf < ... < -0 <= +0 < ... < inf)."""
    u = jax.lax.bitcast_convert_type(x.astype(_F32), jnp.uint32)
    return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(0x80000000))


def _lowest_key(pred, batch: int) -> jax.Array:
    """Per row, the smallest uint32 key ``x`` with ``pred(x)`` True (``pred`` monotone False -> True).

    A 32-step bisection over the whole key space, so the result is exact, not approximate.
    """
    lo = jnp.zeros((batch,), jnp.uint32)
    hi = jnp.full((batch,), 0xFFFFFFFF, jnp.uint32)

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jnp.where(pred(lo), lo, hi)


def filter_logits(scaled: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Top-k then top-p (nucleus) truncation of temperature-scaled logits; dropped tokens get -inf.

    Args:
        scaled: [B, V] float32 logits already divided by the temperature.
        top_p: [B] nucleus mass in (0, 1]; 1 keeps everything top-k kept.
        top_k: [B] int; 0 (or >= V) keeps every token.

    Returns:
        [B, V] with every token outside the kept set at ``-inf``. The kept set is the ``top_k``
        largest logits, then the smallest prefix of them (by decreasing probability) whose mass
        reaches ``top_p``; at least one token is always kept. Ties with the last kept logit are
        kept too.

    No sort: each threshold (the k-th largest logit; the smallest logit whose strictly-larger
    neighbours hold less than ``top_p`` of the mass) is found exactly by bisection over the
    32-bit order keys of the logits: 2 x 32 masked reductions over ``[B, V]``, several times
    cheaper than sorting the vocabulary on CPU.

    References:
        Holtzman et al., arXiv 1904.09751, eq. 2 (the top-p vocabulary); Fan et al.,
        arXiv 1805.04833, section 5.4 (top-k).
    """
    B, V = scaled.shape
    keys = _order_keys(scaled)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V).astype(jnp.int32)
    # Top-k: the smallest key x with fewer than k logits strictly above it is the k-th largest.
    k_key = _lowest_key(lambda x: jnp.sum(keys > x[:, None], axis=-1) < k, B)
    in_k = keys >= k_key[:, None]
    probs = jnp.where(in_k, jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)), 0.0)
    budget = top_p * jnp.sum(probs, axis=-1)
    # Top-p: keep a token iff the mass strictly above it is below top_p (of the top-k mass).
    p_key = _lowest_key(lambda x: jnp.sum(jnp.where(keys > x[:, None], probs, 0.0), axis=-1) < budget, B)
    p_key = jnp.where(top_p >= 1.0, jnp.uint32(0), p_key)
    keep = in_k & (keys >= p_key[:, None])
    return jnp.where(keep, scaled, -jnp.inf)


def argmax_first(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` (the first maximum; a NaN counts as the maximum), as int32.

    Written as a max, a compare and a min over the index: XLA:CPU runs ``jnp.argmax``'s variadic
    (value, index) reduction as a scalar loop, about 7x slower at [64, 512], where it was 3% of a
    greedy decode step.
    """
    m = jnp.max(x, axis=-1, keepdims=True)
    return _first_true((x == m) | jnp.isnan(x))


def _first_true(mask: jax.Array) -> jax.Array:
    """Per row (last axis), the index of the first True in ``mask``; its length when there is none."""
    iota = jax.lax.broadcasted_iota(jnp.int32, mask.shape, mask.ndim - 1)
    return jnp.min(jnp.where(mask, iota, mask.shape[-1]), axis=-1)


def categorical_inverse_cdf(scaled: jax.Array, u: jax.Array) -> jax.Array:
    """Draws one token per row from ``softmax(scaled)`` by inverting its CDF at ``u``.

    One uniform number per row instead of a Gumbel variate per vocabulary entry (the cost of
    ``jax.random.categorical``), which matters when decoding is dominated by small ops.

    The CDF is searched in two levels, never built over the whole vocabulary: the vocabulary is cut
    into blocks of about sqrt(V) tokens, a prefix sum over the block masses finds the block that
    holds ``u``, and a prefix sum inside that one block finds the token. ``jnp.cumsum`` over
    [64, 512] lowers to a quadratic reduce-window on XLA:CPU; this is about 5x faster there.

    Args:
        scaled: [B, V] float32 logits (``-inf`` = excluded token).
        u: [B] float32 uniform numbers in [0, 1).

    Returns:
        [B] int32: the first token whose cumulative probability exceeds ``u`` (up to float
        rounding at block edges); never a token of probability 0.
    """
    B, V = scaled.shape
    blk = 1 << max(0, math.ceil(math.log2(V) / 2))
    nb = -(-V // blk)
    probs = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))
    blocks = jnp.pad(probs, ((0, 0), (0, nb * blk - V))).reshape(B, nb, blk)
    mass = jnp.sum(blocks, axis=-1)                                        # [B, nb]
    upto = jax.lax.associative_scan(jnp.add, mass, axis=-1)                # inclusive block CDF
    target = u * upto[:, -1]
    j = _first_live_above(upto, mass, target)                              # the block holding u
    before = jnp.take_along_axis(jnp.pad(upto, ((0, 0), (1, 0))), j[:, None], -1)[:, 0]
    inside = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]   # [B, blk]
    cdf = before[:, None] + jax.lax.associative_scan(jnp.add, inside, axis=-1)
    return (j * blk + _first_live_above(cdf, inside, target)).astype(jnp.int32)


def _first_live_above(cdf: jax.Array, mass: jax.Array, target: jax.Array) -> jax.Array:
    """Per row, the first index whose ``cdf`` exceeds ``target`` among those of positive ``mass``;
    the last of positive mass when float rounding leaves none above (``u`` near 1)."""
    live = mass > 0
    first = _first_true(live & (cdf > target[:, None]))
    last = jnp.max(jnp.where(live, jax.lax.broadcasted_iota(jnp.int32, cdf.shape, 1), 0), axis=-1)
    return jnp.where(first < cdf.shape[1], first, last)


def sample_tokens(logits: jax.Array, row: RowParams, step: jax.Array, *, truncate: bool,
                  stochastic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row and returns its processed log-prob.

    Args:
        logits: [B, V] float32 next-token logits.
        row: per-row parameters (temperature 0 = greedy argmax).
        step: [] int32 decode step (folded into each row's key).
        truncate: static; apply :func:`filter_logits` (top-p / top-k).
        stochastic: static; False when every row is greedy (skips the random draw).

    Returns:
        ``(tokens [B] int32, logp [B] float32)`` where ``logp`` is
        ``logprobs_from_logits(logits, tokens, temperature)``: after temperature, before
        truncation. Greedy rows report the temperature-1 log-prob.
    """
    greedy = row.temperature <= 0.0
    tau = jnp.where(greedy, 1.0, row.temperature).astype(_F32)
    tokens = argmax_first(logits)
    if stochastic:
        scaled = logits.astype(_F32) / tau[:, None]
        if truncate:
            scaled = filter_logits(scaled, row.top_p, row.top_k)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row.keys, step)
        u = jax.vmap(lambda k: jax.random.uniform(k, (), _F32))(keys)
        tokens = jnp.where(greedy, tokens, categorical_inverse_cdf(scaled, u))
    logp = logprobs_from_logits(logits, tokens, tau)
    return tokens, logp


def _project(params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    # The same matmul as r1jax_kernels' reference: float32 accumulation.
    return jnp.einsum("bd,dv->bv", hidden, lm_head_weight(params, config), preferred_element_type=_F32)


def compact(tree: Any, rows: jax.Array) -> Any:
    """``tree`` (a :class:`DecodeState`, a cache) at the batch rows ``rows``: every per-row array
    gathered, scalars (the step, the cache's write index) shared. Moves the unfinished rows into
    a smaller batch, and copies a prompt's prefill to its samples."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0) if x.ndim else x, tree)


def prefill(params: Any, config: ModelConfig, tokens: jax.Array, prompt_mask: jax.Array,
            active: jax.Array, row: RowParams, source: jax.Array | None = None, *,
            shape: BatchShape) -> DecodeState:
    """Runs the LEFT-padded prompts through the model and returns the initial decode state.

    Args:
        params: model parameters.
        config: the architecture (static).
        tokens: [U, P] int32 LEFT-padded prompts: one per row (U = B), or the distinct prompts
            (U = ``shape.prefill_batch``) with ``source``.
        prompt_mask: [U, P] bool, True on real prompt tokens (a suffix of each row).
        active: [B] bool, False for batch-padding rows (they start finished).
        row: per-row sampling parameters.
        source: [B] int32, the prompt row of each row (with ``shape.prefill_batch``): its cache,
            logits and position are copies of that prompt's.
        shape: the static :class:`BatchShape`.

    Returns:
        A :class:`DecodeState` at step 0.
    """
    B, (U, P) = shape.batch, tokens.shape
    N = shape.max_new_tokens
    params = cast_for_compute(params, config)
    positions = jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1) - 1, 0)
    cache = init_cache(config, U, shape.cache_len or P + N, dtype=shape.cache_dtype)
    hidden, cache = forward_with_cache(params, config, tokens, positions, prompt_mask, cache,
                                       positions_below=cache.mask.shape[1])
    logits = _project(params, config, hidden[:, -1])
    next_positions = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
    if source is not None:  # each prompt ran once: its rows start from copies
        cache, logits, next_positions = compact((cache, logits, next_positions), source)
    return DecodeState(
        cache=cache,
        logits=logits,
        positions=next_positions,
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((B, N), shape.pad_id, jnp.int32),
        logprobs=jnp.zeros((B, N), _F32),
        lengths=jnp.zeros((B,), jnp.int32),
        done=~active,
        stopped=jnp.zeros((B,), bool),
        row=row,
    )


def decode(params: Any, config: ModelConfig, state: DecodeState, num_steps: jax.Array, *,
           shape: BatchShape) -> DecodeState:
    """Runs up to ``num_steps`` decode steps, stopping early once every row is done.

    Args:
        params: model parameters.
        config: the architecture (static).
        state: the current :class:`DecodeState` (donate it under jit).
        num_steps: [] int32 traced step budget of this call (never beyond the buffer N).
        shape: the static :class:`BatchShape`.

    Returns:
        The advanced state.
    """
    limit = jnp.minimum(state.step + num_steps, shape.max_new_tokens)
    params = unstack_layers(cast_for_compute(params, config))  # once per call, outside the token loop

    def cond(st: DecodeState):
        return (st.step < limit) & ~jnp.all(st.done)

    def body(st: DecodeState) -> DecodeState:
        tok, logp = sample_tokens(st.logits, st.row, st.step, truncate=shape.truncate,
                                  stochastic=shape.stochastic)
        live = ~st.done
        tok = jnp.where(live, tok, shape.pad_id)
        logp = jnp.where(live, logp, 0.0)
        tokens = jax.lax.dynamic_update_slice(st.tokens, tok[:, None], (0, st.step))
        logprobs = jax.lax.dynamic_update_slice(st.logprobs, logp[:, None], (0, st.step))
        lengths = st.lengths + live.astype(jnp.int32)
        hit_stop = live & jnp.any(tok[:, None] == st.row.stop_ids, axis=-1)
        done = st.done | hit_stop | (lengths >= st.row.max_new)
        hidden, cache = forward_with_cache(params, config, tok[:, None], st.positions[:, None],
                                           live[:, None], st.cache, positions_below=st.cache.mask.shape[1])
        return DecodeState(cache=cache, logits=_project(params, config, hidden[:, 0]),
                           positions=st.positions + 1, step=st.step + 1, tokens=tokens,
                           logprobs=logprobs, lengths=lengths, done=done,
                           stopped=st.stopped | hit_stop, row=st.row)

    return jax.lax.while_loop(cond, body, state)


_prefill_jit = jax.jit(prefill, static_argnames=("config", "shape"))
_compact_jit = jax.jit(compact)
# XLA:CPU's bfloat16 float-normalization pass rewrites a bfloat16 dynamic-update-slice as a
# float32 one: each decode step converted every layer's whole bfloat16 KV cache to float32 and
# back to write one slot (0.54 s against 0.38 s for a float32 cache on benchmarks/grpo_step.py's
# rollout). Without the pass the slot is written in place; the decode's other bfloat16 ops (the
# casts feeding the weight matmuls, the matmuls themselves) run natively either way.
_DECODE_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "float-normalization-bf16"}
_decode_jit = jax.jit(decode, static_argnames=("config", "shape"), donate_argnames=("state",),
                      compiler_options=_DECODE_COMPILER_OPTIONS)


@functools.partial(jax.jit, static_argnames=("extra",))
def _grow_cache(cache: KVCache, extra: int) -> KVCache:
    """``cache`` with ``extra`` empty slots appended to every layer's keys and values (and the slot mask)."""

    def pad(x, axis):
        return jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])

    return cache._replace(k=tuple(pad(k, 3) for k in cache.k), v=tuple(pad(v, 2) for v in cache.v),
                          mask=pad(cache.mask, 1))


def row_keys(seeds: np.ndarray, prompt_index: np.ndarray, sample_index: np.ndarray) -> jax.Array:
    """[B, 2] uint32 keys ``fold_in(fold_in(PRNGKey(seed), prompt_index), sample_index)``."""
    def one(s, p, j):
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(s), p), j)

    return jax.vmap(one)(jnp.asarray(seeds, jnp.uint32), jnp.asarray(prompt_index, jnp.uint32),
                         jnp.asarray(sample_index, jnp.uint32))


_row_keys_jit = jax.jit(row_keys)


# ------------------------------------------------------------------------------------------------
# Host-side driver


def bucket(n: int, multiple: int | None = None, minimum: int = 1) -> int:
    """Rounds ``n`` up to a multiple of ``multiple`` (or, when None, to a power of two), >= minimum."""
    n = max(int(n), int(minimum), 1)
    if multiple:
        return int(math.ceil(n / multiple) * multiple)
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
    """One sample to generate: a prompt, its parameters and its place in the random streams."""

    prompt: np.ndarray
    sampling: SamplingParams
    seed: int
    prompt_index: int
    sample_index: int


class Sampler:
    """Host driver of :func:`prefill` / :func:`decode` for one model architecture.

    Args:
        config: the architecture.
        max_batch_rows: rows per batch (prompt groups are never split; a group larger than this
            runs alone).
        min_batch_bucket: smallest padded batch (batches are padded to a power of two >= this).
        prompt_bucket: pad prompt lengths to multiples of this; None = powers of two.
        min_prompt_bucket: smallest padded prompt length.
        new_tokens_bucket: round the generation buffer up to multiples of this; None = powers of two.
        min_new_tokens_bucket: smallest generation buffer.
        decode_chunk: decode steps per device call when streaming (finished rows are reported
            between calls); None = run each batch to completion in one call.
        cache_dtype: KV-cache dtype, "float32" or "bfloat16" (default: the parameter dtype). A
            bfloat16 cache halves the decode attention's reads (the rollout is 1.2-1.3x faster
            on benchmarks/grpo_step.py's model with bfloat16 compute); keys and values are then
            rounded to bfloat16, so the reported log-probs move off the trainer's (which
            attends over float32 keys) by the rounding: see ``benchmarks/results/kv_cache_dtype.json``.
        pad_id: filler token after a row finished (never returned).
        share_prefill: run each distinct prompt of a batch once and copy its KV cache to its rows
            (the G samples of a GRPO group), when that at least halves the prefill's rows.
        drop_finished_every: check every this many decode steps whether the unfinished rows fit in
            half the batch, and if so go on with only them (a power-of-two batch: one compile per
            size); rows stopping early then stop costing compute. None = decode the whole batch
            to the end (with ``decode_chunk``, the check runs at its chunks).
        decode_window: start the KV cache at the prompt plus W = this many slots and, each time
            it fills, double the room after the prompt (W, 2W, 4W, ... up to ``max_new``). A
            decode step reads the whole cache, so this reads at most twice the slots filled so
            far instead of all ``prompt + max_new`` from the first token: with long generations
            the attention's memory traffic, which grows with the square of the length, drops by
            about a third. One decode compile per cache size, log2(max_new / W) + 1 of them;
            None = the whole buffer from the start.
        parallel_batches: :meth:`generate` splits its rows into up to this many batches of whole
            groups and decodes them at once, one thread each. On a CPU with that many cores:
            XLA does not split a decode step's small matmuls (64 rows) across cores, while two
            32-row decodes run one per core (benchmarks/grpo_step.py's rollout on two cores: 1.5x
            faster). Each row's tokens do not depend on its batch (its random stream is its own).
            1 = batches one after another.
    """

    def __init__(self, config: ModelConfig, *, max_batch_rows: int = 64, min_batch_bucket: int = 1,
                 prompt_bucket: int | None = None,
                 min_prompt_bucket: int = 8, new_tokens_bucket: int | None = None,
                 min_new_tokens_bucket: int = 8, decode_chunk: int | None = None,
                 cache_dtype: str | None = None, pad_id: int = 0, share_prefill: bool = True,
                 drop_finished_every: int | None = None, decode_window: int | None = None,
                 parallel_batches: int = 1):
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows: must be >= 1, got {max_batch_rows}")
        if decode_chunk is not None and decode_chunk < 1:
            raise ValueError(f"decode_chunk: must be >= 1 or None, got {decode_chunk}")
        if drop_finished_every is not None and drop_finished_every < 1:
            raise ValueError(f"drop_finished_every: must be >= 1 or None, got {drop_finished_every}")
        if decode_window is not None and decode_window < 1:
            raise ValueError(f"decode_window: must be >= 1 or None, got {decode_window}")
        if parallel_batches < 1:
            raise ValueError(f"parallel_batches: must be >= 1, got {parallel_batches}")
        if cache_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"cache_dtype: must be 'float32', 'bfloat16' or None, got {cache_dtype!r}")
        if not 0 <= pad_id < config.vocab_size:
            raise ValueError(f"pad_id: {pad_id} outside the vocabulary [0, {config.vocab_size})")
        self.config = config
        self.max_batch_rows = max_batch_rows
        self.min_batch_bucket = min_batch_bucket
        self.prompt_bucket = prompt_bucket
        self.min_prompt_bucket = min_prompt_bucket
        self.new_tokens_bucket = new_tokens_bucket
        self.min_new_tokens_bucket = min_new_tokens_bucket
        self.decode_chunk = decode_chunk
        self.cache_dtype = cache_dtype
        self.pad_id = pad_id
        self.share_prefill = share_prefill
        self.drop_finished_every = drop_finished_every
        self.decode_window = decode_window
        self.parallel_batches = parallel_batches
        self._shapes: set[BatchShape] = set()
        self._lock = threading.Lock()

    @property
    def compiled_shapes(self) -> frozenset[BatchShape]:
        """The distinct static batch shapes run so far (each compiled once)."""
        with self._lock:
            return frozenset(self._shapes)

    # -- public API --------------------------------------------------------------------------------

    def generate(self, params: Any, prompts: Sequence[Sequence[int]], sampling: SamplingParams, *,
                 first_prompt_index: int = 0) -> list[list[Sample]]:
        """Samples ``sampling.n`` completions for every prompt.

        Args:
            params: model parameters (any weights of ``config``'s architecture).
            prompts: unpadded token-id sequences.
            sampling: the sampling parameters; ``seed=None`` draws a fresh seed.
            first_prompt_index: global index of ``prompts[0]`` (selects the random streams).

        Returns:
            ``result[i][j]`` = sample ``j`` of prompt ``i``.
        """
        rows = self.make_rows(prompts, sampling, first_prompt_index=first_prompt_index)
        out: list[list[Sample | None]] = [[None] * sampling.n for _ in prompts]

        def run(batch: list[int]) -> None:
            for r, sample in self.run_rows(params, [rows[i] for i in batch]):
                row = rows[batch[r]]
                out[row.prompt_index - first_prompt_index][row.sample_index] = sample

        batches = self.group_batches(rows, sampling.n)
        if self.parallel_batches > 1 and len(batches) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(self.parallel_batches, len(batches))) as pool:
                for done in [pool.submit(run, b) for b in batches]:
                    done.result()  # re-raises a batch's error
        else:
            for batch in batches:
                run(batch)
        return out  # type: ignore[return-value]

    def make_rows(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, *,
                  first_prompt_index: int = 0) -> list[Row]:
        """One :class:`Row` per (prompt, sample), prompt-major; draws the seed when None."""
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(32)
        return [Row(np.asarray(p, np.int32), sampling, seed, first_prompt_index + i, j)
                for i, p in enumerate(prompts) for j in range(sampling.n)]

    def group_batches(self, rows: Sequence[Row], n: int) -> list[list[int]]:
        """Row indices split into batches of whole groups of ``n`` (at most max_batch_rows rows; with
        ``parallel_batches`` k, at most a k-th of the groups each, so that k batches can run at once)."""
        groups = [list(range(i, min(i + n, len(rows)))) for i in range(0, len(rows), n)]
        limit = min(self.max_batch_rows, -(-len(groups) // self.parallel_batches) * n)
        batches: list[list[int]] = []
        for g in groups:
            if batches and len(batches[-1]) + len(g) <= limit:
                batches[-1].extend(g)
            else:
                batches.append(list(g))
        return batches

    def batch_shape(self, rows: Sequence[Row]) -> BatchShape:
        """The bucketed static shape for a batch of rows."""
        prompt_len = bucket(max(len(r.prompt) for r in rows), self.prompt_bucket, self.min_prompt_bucket)
        max_new = bucket(max(r.sampling.max_new_tokens for r in rows), self.new_tokens_bucket,
                         self.min_new_tokens_bucket)
        return BatchShape(
            batch=bucket(len(rows), None, self.min_batch_bucket),
            prompt_len=prompt_len,
            max_new_tokens=max_new,
            num_stop=bucket(max(1, max(len(r.sampling.stop_token_ids) for r in rows))),
            truncate=any(r.sampling.truncates and not r.sampling.greedy for r in rows),
            stochastic=any(not r.sampling.greedy for r in rows),
            cache_dtype=self.cache_dtype,
            pad_id=self.pad_id,
            prefill_batch=self._prefill_batch(rows),
            cache_len=prompt_len + self.decode_window if self.decode_window and self.decode_window < max_new else None,
        )

    def _prefill_batch(self, rows: Sequence[Row]) -> int | None:
        """The distinct prompts' row count (bucketed like the batch), when it is at most half the batch (else None)."""
        distinct = bucket(len({r.prompt.tobytes() for r in rows}), None, self.min_batch_bucket)
        share = self.share_prefill and 2 * distinct <= bucket(len(rows), None, self.min_batch_bucket)
        return distinct if share else None

    def run_rows(self, params: Any, rows: Sequence[Row], *, decode_chunk: int | None = None,
                 cancelled: Any = None) -> Iterator[tuple[int, Sample]]:
        """Generates one batch; yields ``(row position, Sample)`` as rows finish.

        Rows are reported between device calls of ``decode_chunk`` steps (default: the
        sampler's; None = all at the end).

        Args:
            params: model parameters.
            rows: at most a few hundred rows (the batch is padded to a power of two).
            decode_chunk: decode steps per device call.
            cancelled: optional callable; when it returns True between chunks, stop early.
        """
        if not rows:
            return
        shape = self.batch_shape(rows)
        with self._lock:
            self._shapes.add(shape)
        state = _prefill_jit(params, self.config, *self._pack(rows, shape), shape=shape)
        chunk = decode_chunk if decode_chunk is not None else self.decode_chunk
        if self.drop_finished_every is not None:
            chunk = min(chunk or self.drop_finished_every, self.drop_finished_every)
        chunk = shape.max_new_tokens if chunk is None else chunk
        # the row of `rows` in each batch row (-1: batch padding, or a finished row kept as filler)
        origin = np.where(np.arange(shape.batch) < len(rows), np.arange(shape.batch), -1)
        reported = np.zeros(len(rows), bool)
        step = 0
        while True:
            steps = chunk if shape.cache_len is None else min(chunk, shape.cache_len - shape.prompt_len - step)
            state = _decode_jit(params, self.config, state, jnp.int32(steps), shape=shape)
            done, step = jax.device_get((state.done, state.step))
            done = np.asarray(done)
            finished_all = bool(done.all()) or int(step) >= shape.max_new_tokens
            real = origin >= 0
            new = np.flatnonzero(real & (done | finished_all))
            new = new[~reported[origin[new]]]
            if new.size:
                toks, lps, lens, stopped = jax.device_get(
                    (state.tokens, state.logprobs, state.lengths, state.stopped))
                for b in new:
                    n = int(lens[b])
                    yield int(origin[b]), Sample(toks[b, :n].copy(), lps[b, :n].copy(),
                                                 "stop" if stopped[b] else "length")
                reported[origin[new]] = True
            if finished_all or (cancelled is not None and cancelled()):
                return
            if self.drop_finished_every is not None:
                state, shape, origin = self._drop_finished(state, shape, origin, done)
            if shape.cache_len is not None and shape.prompt_len + int(step) == shape.cache_len:  # full: grow
                state, shape = self._grow(state, shape)

    def _grow(self, state: DecodeState, shape: BatchShape) -> tuple[DecodeState, BatchShape]:
        """``state`` with room for twice the generated tokens (at least ``decode_window`` more
        slots; at most the whole buffer): W, 2W, 4W, ... slots after the prompt."""
        full = shape.prompt_len + shape.max_new_tokens
        new_len = min(shape.cache_len + max(self.decode_window, shape.cache_len - shape.prompt_len), full)
        shape = dataclasses.replace(shape, cache_len=new_len if new_len < full else None)
        with self._lock:
            self._shapes.add(shape)
        return state._replace(cache=_grow_cache(state.cache, new_len - state.cache.mask.shape[1])), shape

    def _drop_finished(self, state: DecodeState, shape: BatchShape, origin: np.ndarray, done: np.ndarray):
        """The unfinished rows alone, in the smallest batch bucket, when that halves the batch."""
        live = np.flatnonzero(~done)
        smaller = bucket(len(live), None, self.min_batch_bucket)
        if 2 * smaller > shape.batch:
            return state, shape, origin
        filler = np.flatnonzero(done)[:1].repeat(smaller - len(live))  # finished: stays finished
        keep = np.concatenate([live, filler]).astype(np.int32)
        shape = dataclasses.replace(shape, batch=smaller, prefill_batch=None)
        with self._lock:
            self._shapes.add(shape)
        return _compact_jit(state, jnp.asarray(keep)), shape, np.concatenate([origin[live], -np.ones(len(filler), int)])

    # -- packing -----------------------------------------------------------------------------------

    def _pack(self, rows: Sequence[Row], shape: BatchShape):
        """``(tokens, mask, active, row params, source)``: the prefill's prompts (one per row, or the
        distinct ones with ``source`` mapping rows to them) and the per-row arrays."""
        B, P, S = shape.batch, shape.prompt_len, shape.num_stop
        prompts: dict[bytes, int] = {}
        source = np.zeros((B,), np.int32)
        for b, r in enumerate(rows):
            source[b] = prompts.setdefault(r.prompt.tobytes(), len(prompts)) if shape.prefill_batch else b
        U = shape.prefill_batch or B
        tokens = np.full((U, P), self.pad_id, np.int32)
        mask = np.zeros((U, P), bool)
        active = np.zeros((B,), bool)
        temperature = np.zeros((B,), np.float32)
        top_p = np.ones((B,), np.float32)
        top_k = np.zeros((B,), np.int32)
        max_new = np.ones((B,), np.int32)
        stop_ids = np.full((B, S), -1, np.int32)
        seeds = np.zeros((B,), np.uint32)
        pidx = np.zeros((B,), np.uint32)
        sidx = np.zeros((B,), np.uint32)
        for b, r in enumerate(rows):
            n = len(r.prompt)
            tokens[source[b], P - n:] = r.prompt
            mask[source[b], P - n:] = True
            active[b] = True
            s = r.sampling
            temperature[b], top_p[b], top_k[b], max_new[b] = s.temperature, s.top_p, s.top_k, s.max_new_tokens
            stop_ids[b, :len(s.stop_token_ids)] = s.stop_token_ids
            seeds[b], pidx[b], sidx[b] = r.seed, r.prompt_index % (1 << 32), r.sample_index
        # Prompt rows no row reads (batch padding) get one real token so no attention row is empty.
        used = np.zeros((U,), bool)
        used[source[:len(rows)]] = True
        mask[~used, -1] = True
        row = RowParams(jnp.asarray(temperature), jnp.asarray(top_p), jnp.asarray(top_k),
                        jnp.asarray(max_new), jnp.asarray(stop_ids), _row_keys_jit(seeds, pidx, sidx))
        return (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(active), row,
                jnp.asarray(source) if shape.prefill_batch else None)
