"""Pallas kernels: log-prob, entropy and GRPO terms in one pass over vocabulary tiles.

What runs
---------
Forward (:func:`_forward_kernel`), one program per block of ``block_tokens`` tokens: loop over
vocabulary tiles of ``block_vocab`` columns; each tile's logits ``h_blk @ W[:, tile]`` are
accumulated over ``block_hidden`` slices of the hidden size, tempered, and folded into an online
logsumexp together with the running ``sum p z`` (entropy) and the target's logit. The block's
per-token log-prob and entropy, and — in the fused variant — the GRPO quantities of
:mod:`r1jax_kernels.grpo_terms` (ratio, clipped-surrogate loss, k1/k2/k3) are written at the end.
No ``[tokens, vocab]`` array exists at any time.

Backward (:func:`_backward_kernel`), one program per (token block, vocabulary tile): recompute
the tile's logits, form their gradient with :func:`r1jax_kernels.chunked.logit_grad` (the same
formula as the chunked backend), and contract it at once into ``d hidden`` and ``d lm_head``,
slice by slice of the hidden size, with atomic adds into float32 accumulators. The cotangents of
the GRPO terms are first turned into a cotangent of the log-prob by ``jax.vjp`` of the same
elementwise function, outside the kernel (a ``[tokens]`` vector; cheap).

Which Pallas backend, and why
-----------------------------
The kernels are written against ``pl.pallas_call`` with a grid, whole-array refs, ``pl.ds``
slices and masked loads (``jax.experimental.pallas.triton.load``), and the atomics of the
Triton dialect. On a GPU they lower through Pallas's Triton backend (the default lowering of
``pallas_call`` in JAX 0.10, which this project pins); on CPU they run with ``interpret=True``,
where they are tested equal to the reference in values and gradients. We chose this over
Mosaic GPU, although Mosaic GPU is the future of Pallas on Hopper (the Triton backend is
deprecated from JAX 0.11), because:

* the Triton-style program (masked loads, a grid of independent programs, atomics) is what this
  project can test here: it runs unchanged in the ``interpret=True`` HLO interpreter on CPU.
  Mosaic GPU kernels (``plgpu.kernel``: warpgroups, TMA copies into swizzled shared memory,
  WGMMA accumulators, barriers) only run for real on a Hopper GPU; their GPU interpret mode
  simulates threads and memory spaces but not the layouts and alignment rules that decide
  whether a Mosaic GPU kernel lowers, so a Mosaic GPU kernel written without a GPU would be
  untested where it matters;
* no GPU was available while this was written. ``benchmarks/kernels_gpu.py`` is the one command
  that checks this kernel on a Hopper GPU (correctness first, then time and memory).

Porting to Mosaic GPU when JAX is upgraded past 0.11 means rewriting these two kernel bodies
(the maths — online logsumexp, :func:`~r1jax_kernels.chunked.logit_grad`, the GRPO epilogue —
carries over unchanged); the public API and its tests stay.

GPU notes and limits: block sizes are powers of two >= 16 (``tl.dot`` and ``tl.arange``); the
``d lm_head`` accumulator is float32 ``[D, V]`` (padded to whole tiles); atomic float adds make
the GPU backward not bitwise deterministic (the chunked backend is); ``hidden`` and ``lm_head``
are cast to a common dtype before the kernel.

References:
    Milakov & Gimelshein 2018, "Online normalizer calculation for softmax" (arXiv 1805.02867);
    Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"
    (arXiv 2411.09009), Sec. 3-4 (tiled logits, recomputation and atomic accumulation);
    Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), eq. 3-4 (GRPO terms).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from r1jax_kernels import _common
from r1jax_kernels import grpo_terms as _terms
from r1jax_kernels.chunked import logit_grad

Array = jax.Array
F32 = jnp.float32


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


@dataclasses.dataclass(frozen=True)
class PallasBlocks:
    """Static tile sizes and launch parameters of the Pallas kernels (hashable).

    Attributes:
        block_tokens: tokens per program (rows of a logits tile).
        block_vocab: vocabulary columns per tile.
        block_hidden: hidden-size slice per partial matmul.
        num_warps: Triton warps per program (GPU only).
        num_stages: Triton software-pipelining stages (GPU only).
    """

    block_tokens: int = 64
    block_vocab: int = 128
    block_hidden: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_tokens", "block_vocab", "block_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16 or not _is_pow2(v):
                raise ValueError(f"PallasBlocks.{name}: expected a power of 2 >= 16 "
                                 f"(Triton dot/arange tiles), got {v!r}")
        for name in ("num_warps", "num_stages"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PallasBlocks.{name}: expected a positive int, got {v!r}")


def _compiler_params(blocks: PallasBlocks):
    return plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


# --------------------------------------------------------------------------------------------
# In-kernel helpers (run inside pallas_call bodies)
# --------------------------------------------------------------------------------------------

def _tile_logits(h_ref, w_ref, r0, c0, row_ok, tau, *, n_hidden, n_vocab, bt, bv, bd):
    """Tempered logits ``[bt, bv]`` of rows ``r0:r0+bt`` and columns ``c0:c0+bv`` (f32).

    Out-of-range rows, columns and hidden slices are loaded as 0 (masked loads), so ragged tails
    never read past an array and never inject garbage."""
    cols = c0 + jnp.arange(bv)
    col_ok = cols < n_vocab

    def hidden_step(k, acc):
        d0 = k * bd
        d_ok = (d0 + jnp.arange(bd)) < n_hidden
        hb = plgpu.load(h_ref.at[pl.ds(r0, bt), pl.ds(d0, bd)],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        wb = plgpu.load(w_ref.at[pl.ds(d0, bd), pl.ds(c0, bv)],
                        mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        return acc + jnp.dot(hb, wb, preferred_element_type=F32)

    u = lax.fori_loop(0, _common.cdiv(n_hidden, bd), hidden_step, jnp.zeros((bt, bv), F32))
    return u / tau[:, None], cols, col_ok


def _forward_kernel(*refs, n_tokens, n_hidden, n_vocab, blocks: PallasBlocks, fused: bool):
    if fused:
        (h_ref, w_ref, y_ref, tau_ref, old_ref, refp_ref, adv_ref, hp_ref,
         logp_ref, ent_ref, lse_ref, mu_ref, ratio_ref, loss_ref, k1_ref, k2_ref, k3_ref) = refs
    else:
        h_ref, w_ref, y_ref, tau_ref, logp_ref, ent_ref, lse_ref, mu_ref = refs
    bt, bv, bd = blocks.block_tokens, blocks.block_vocab, blocks.block_hidden
    r0 = pl.program_id(0) * bt
    rows = pl.ds(r0, bt)
    row_ok = (r0 + jnp.arange(bt)) < n_tokens
    y = plgpu.load(y_ref.at[rows], mask=row_ok, other=0)
    tau = plgpu.load(tau_ref.at[rows], mask=row_ok, other=1.0)
    tile = functools.partial(_tile_logits, h_ref, w_ref, r0, row_ok=row_ok, tau=tau,
                             n_hidden=n_hidden, n_vocab=n_vocab, bt=bt, bv=bv, bd=bd)

    def vocab_step(t, carry):  # online logsumexp, as r1jax_kernels.chunked._forward_stats
        m, s, a, zt = carry
        z, cols, col_ok = tile(t * bv)
        z_seen = jnp.where(col_ok[None, :], z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z_seen, axis=1))
        e = jnp.exp(z_seen - m_new[:, None])
        rescale = jnp.exp(m - m_new)
        s = s * rescale + jnp.sum(e, axis=1)
        a = a * rescale + jnp.sum(e * jnp.where(col_ok[None, :], z, 0.0), axis=1)
        hit = col_ok[None, :] & (cols[None, :] == y[:, None])
        zt = zt + jnp.sum(jnp.where(hit, z, 0.0), axis=1)
        return m_new, s, a, zt

    init = (jnp.full((bt,), -jnp.inf, F32), jnp.zeros((bt,), F32), jnp.zeros((bt,), F32),
            jnp.zeros((bt,), F32))
    m, s, a, zt = lax.fori_loop(0, _common.cdiv(n_vocab, bv), vocab_step, init)
    lse = m + jnp.log(s)
    mu = a / s
    logp = zt - lse
    for ref, val in ((logp_ref, logp), (ent_ref, lse - mu), (lse_ref, lse), (mu_ref, mu)):
        plgpu.store(ref.at[rows], val, mask=row_ok)
    if fused:
        old = plgpu.load(old_ref.at[rows], mask=row_ok, other=0.0)
        refp = plgpu.load(refp_ref.at[rows], mask=row_ok, other=0.0)
        adv = plgpu.load(adv_ref.at[rows], mask=row_ok, other=0.0)
        terms = _terms.terms_core(logp, old, refp, adv, hp_ref[0], hp_ref[1], hp_ref[2],
                                  hp_ref[3], hp_ref[4])
        for ref, val in zip((ratio_ref, loss_ref, k1_ref, k2_ref, k3_ref), terms):
            plgpu.store(ref.at[rows], val, mask=row_ok)


def _backward_kernel(h_ref, w_ref, y_ref, tau_ref, lse_ref, mu_ref, glse_ref, gmu_ref, gzt_ref,
                     _dh_in, _dw_in, _gtau_in, dh_ref, dw_ref, gtau_ref, *,
                     n_tokens, n_hidden, n_vocab, blocks: PallasBlocks):
    bt, bv, bd = blocks.block_tokens, blocks.block_vocab, blocks.block_hidden
    r0 = pl.program_id(0) * bt
    c0 = pl.program_id(1) * bv
    rows = pl.ds(r0, bt)
    row_ok = (r0 + jnp.arange(bt)) < n_tokens
    ld = lambda ref, other: plgpu.load(ref.at[rows], mask=row_ok, other=other)
    y, tau = ld(y_ref, 0), ld(tau_ref, 1.0)
    lse, mu = ld(lse_ref, 0.0), ld(mu_ref, 0.0)
    g_lse, g_mu, g_zt = ld(glse_ref, 0.0), ld(gmu_ref, 0.0), ld(gzt_ref, 0.0)
    z, cols, col_ok = _tile_logits(h_ref, w_ref, r0, c0, row_ok, tau, n_hidden=n_hidden,
                                   n_vocab=n_vocab, bt=bt, bv=bv, bd=bd)
    valid = row_ok[:, None] & col_ok[None, :]
    gz = logit_grad(z, lse, mu, g_lse, g_mu, g_zt, cols[None, :] == y[:, None], valid)
    # Accumulators are padded to whole tiles, so the atomics never need a mask.
    plgpu.atomic_add(gtau_ref, (rows,), jnp.sum(gz * z, axis=1))
    gu = (gz / tau[:, None]).astype(h_ref.dtype)  # gradient w.r.t. the raw logits h @ W

    def hidden_step(k, carry):
        d0 = k * bd
        d_ok = (d0 + jnp.arange(bd)) < n_hidden
        hb = plgpu.load(h_ref.at[rows, pl.ds(d0, bd)],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        wb = plgpu.load(w_ref.at[pl.ds(d0, bd), pl.ds(c0, bv)],
                        mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        dh = lax.dot_general(gu, wb, (((1,), (1,)), ((), ())), preferred_element_type=F32)
        dw = lax.dot_general(hb, gu, (((0,), (0,)), ((), ())), preferred_element_type=F32)
        plgpu.atomic_add(dh_ref, (rows, pl.ds(d0, bd)), dh)
        plgpu.atomic_add(dw_ref, (pl.ds(d0, bd), pl.ds(c0, bv)), dw)
        return carry

    lax.fori_loop(0, _common.cdiv(n_hidden, bd), hidden_step, 0)


# --------------------------------------------------------------------------------------------
# pallas_call wrappers
# --------------------------------------------------------------------------------------------

def _forward_call(h, w, y, tau, extra, *, blocks, interpret):
    n, d = h.shape
    v = w.shape[1]
    fused = extra is not None
    kernel = functools.partial(_forward_kernel, n_tokens=n, n_hidden=d, n_vocab=v,
                               blocks=blocks, fused=fused)
    n_out = 9 if fused else 4
    out_shape = [jax.ShapeDtypeStruct((n,), F32)] * n_out
    args = (h, w, y, tau) + (tuple(extra) if fused else ())
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(_common.cdiv(n, blocks.block_tokens),),
        compiler_params=_compiler_params(blocks), interpret=interpret,
        name="r1jax_logprob_fwd")(*args)


def _backward_call(h, w, y, tau, lse, mu, g_lse, g_mu, g_zt, *, blocks, interpret):
    n, d = h.shape
    v = w.shape[1]
    bt, bv, bd = blocks.block_tokens, blocks.block_vocab, blocks.block_hidden
    n_pad = _common.cdiv(n, bt) * bt
    d_pad = _common.cdiv(d, bd) * bd
    v_pad = _common.cdiv(v, bv) * bv
    kernel = functools.partial(_backward_kernel, n_tokens=n, n_hidden=d, n_vocab=v, blocks=blocks)
    zeros = (jnp.zeros((n_pad, d_pad), F32), jnp.zeros((d_pad, v_pad), F32),
             jnp.zeros((n_pad,), F32))
    out_shape = [jax.ShapeDtypeStruct(z.shape, F32) for z in zeros]
    dh, dw, g_tau = pl.pallas_call(
        kernel, out_shape=out_shape,
        grid=(_common.cdiv(n, bt), _common.cdiv(v, bv)),
        input_output_aliases={9: 0, 10: 1, 11: 2},
        compiler_params=_compiler_params(blocks), interpret=interpret,
        name="r1jax_logprob_bwd")(h, w, y, tau, lse, mu, g_lse, g_mu, g_zt, *zeros)
    return dh[:n, :d], dw[:d, :v], g_tau[:n]


# --------------------------------------------------------------------------------------------
# custom_vjp
# --------------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _pallas_core(h, w, y, tau, extra, blocks, interpret):
    """Outputs ``(logp, entropy, terms...)``; ``extra`` is None or (old, ref, adv, hp)."""
    outs = _forward_call(h, w, y, tau, extra, blocks=blocks, interpret=interpret)
    return (outs[0], outs[1]) + tuple(outs[4:])


def _pallas_core_fwd(h, w, y, tau, extra, blocks, interpret):
    outs = _forward_call(h, w, y, tau, extra, blocks=blocks, interpret=interpret)
    logp, ent, lse, mu = outs[:4]
    return (logp, ent) + tuple(outs[4:]), (h, w, y, tau, extra, lse, mu, logp)


def _pallas_core_bwd(blocks, interpret, residuals, cotangents):
    h, w, y, tau, extra, lse, mu, logp = residuals
    g_logp, g_ent = cotangents[0], cotangents[1]
    g_extra = None
    if extra is not None:
        # d(terms)/d(logp) and d(terms)/d(old, ref, adv, hp): the vjp of the same elementwise maths.
        _, vjp = jax.vjp(_terms.terms_from_packed, logp, *extra)
        g_from_terms, *g_extra = vjp(tuple(cotangents[2:]))
        g_logp = g_logp + g_from_terms
        g_extra = tuple(g_extra)
    # logp = zt - lse and entropy = lse - mu.
    g_lse, g_mu, g_zt = g_ent - g_logp, -g_ent, g_logp
    dh, dw, g_tau = _backward_call(h, w, y, tau, lse, mu, g_lse, g_mu, g_zt,
                                   blocks=blocks, interpret=interpret)
    return dh.astype(h.dtype), dw.astype(w.dtype), None, -g_tau / tau, g_extra


_pallas_core.defvjp(_pallas_core_fwd, _pallas_core_bwd)


def _flatten(hidden, lm_head, targets, temperature):
    batch_shape = tuple(targets.shape)
    n = _common.num_tokens(batch_shape)
    dtype = jnp.result_type(hidden.dtype, lm_head.dtype)
    h = hidden.reshape(n, hidden.shape[-1]).astype(dtype)
    w = lm_head.astype(dtype)
    y = targets.reshape(n).astype(jnp.int32)
    tau = _common.temperature_per_token(temperature, batch_shape).reshape(n)
    return batch_shape, h, w, y, tau


def token_logprobs_pallas(hidden: Array, lm_head: Array, targets: Array, *, temperature=1.0,
                          return_entropy: bool = False, blocks: PallasBlocks | None = None,
                          interpret: bool = False) -> Array | tuple[Array, Array]:
    """Pallas backend of ``token_logprobs`` (inputs assumed validated by the dispatcher).

    Args:
        hidden: ``[..., D]``; lm_head: ``[D, V]``; targets: ``[...]`` int.
        temperature: scalar or broadcastable to ``targets.shape``; traced.
        return_entropy: also return the entropy.
        blocks: tile sizes (default :class:`PallasBlocks`).
        interpret: run in the Pallas interpreter (CPU tests); otherwise lower for the GPU.

    Returns:
        ``logp[...]`` float32, or ``(logp, entropy)``.
    """
    blocks = PallasBlocks() if blocks is None else blocks
    batch_shape, h, w, y, tau = _flatten(hidden, lm_head, targets, temperature)
    logp, ent = _pallas_core(h, w, y, tau, None, blocks, bool(interpret))
    logp = jnp.where(_common.invalid_target_mask(y, w.shape[1]), jnp.nan, logp)
    logp = logp.reshape(batch_shape)
    if not return_entropy:
        return logp
    return logp, ent.reshape(batch_shape)


def grpo_token_terms_pallas(hidden, lm_head, targets, old_logp, ref_logp, advantages, hp, *,
                            temperature=1.0, blocks: PallasBlocks | None = None,
                            interpret: bool = False) -> _terms.TokenTerms:
    """Fused kernel: log-prob, entropy and GRPO terms per token in one pass (validated inputs).

    ``old_logp``, ``ref_logp``, ``advantages`` are float32 arrays of ``targets.shape``; ``hp`` is
    :func:`r1jax_kernels.grpo_terms.pack_hparams`.
    """
    blocks = PallasBlocks() if blocks is None else blocks
    batch_shape, h, w, y, tau = _flatten(hidden, lm_head, targets, temperature)
    n = y.shape[0]
    extra = (old_logp.reshape(n), ref_logp.reshape(n), advantages.reshape(n), hp)
    outs = _pallas_core(h, w, y, tau, extra, blocks, bool(interpret))
    bad = _common.invalid_target_mask(y, w.shape[1])
    outs = [jnp.where(bad, jnp.nan, o).reshape(batch_shape) for o in outs]
    return _terms.TokenTerms(*outs)
