"""Decoder-only transformer (Llama / Qwen2 / Qwen3) as pure functions on a nested-dict pytree.

Parameters are a plain nested dict of arrays; the ``L`` decoder layers are stacked on a leading
axis. The full-sequence :func:`forward` runs them unrolled, or with ``config.scan_layers`` as one
``jax.lax.scan`` (one layer traced and compiled, whatever ``L``: for deep models).
The KV cache (:class:`KVCache`) holds one buffer per layer, in the layouts the attention
matmuls read (keys [B, K, Dh, S], values [B, K, S, Dh]), so a decode step writes its slot in
place and copies nothing; :func:`forward_with_cache` runs the layers unrolled over it.

Layout (``D`` width, ``H`` query heads, ``K`` kv heads, ``Dh`` head width, ``F`` MLP width)::

    embed        [V, D]                 final_norm [D]             lm_head [D, V] (untied only)
    layers/attn_norm [L, D]             layers/mlp_norm [L, D]
    layers/q_proj [L, D, H, Dh]         layers/k_proj, v_proj [L, D, K, Dh]
    layers/o_proj [L, H, Dh, D]
    layers/q_bias [L, H, Dh]            layers/k_bias, v_bias [L, K, Dh]   (attention biases)
    layers/o_bias [L, D]                                                   (Llama/Qwen3 biases)
    layers/q_norm, k_norm [L, Dh]                                          (Qwen3)
    layers/gate_proj, up_proj [L, D, F] layers/down_proj [L, F, D]
    value_head/kernel [D], value_head/bias []                              (critic only)

:data:`PARAM_AXES` gives the logical axis names of every leaf; ``r1jax.models.sharding`` maps
them onto a device mesh.

Speed on XLA:CPU: every weight matmul (q/k/v/o projections, MLP) goes through ``_dense``,
whose custom backward pass computes weight gradients from the activations as they are (in
bfloat16, over the leading axes unflattened, which gets XLA's bfloat16 kernel); the attention
head reshapes are ``einops`` rearranges into the batched-matmul layouts; RoPE's cos and sin come
from a constant table of positions when the positions are known to be bounded (XLA would
otherwise evaluate them inside every layer's rotation, per head).

Numerics: the weight matmuls read their inputs in ``config.matmul_dtype`` (``compute_dtype``,
default the parameter dtype: bfloat16 compute of float32 parameters is a config) and accumulate
in float32; activations stay in the parameter dtype; RMSNorm statistics, RoPE angles and the
attention softmax are computed in float32 (as Hugging Face does); the output projection, hence
:func:`logits` and every log-prob, and :func:`value` are float32.

References:
  Touvron et al., "LLaMA", arXiv 2302.13971 (pre-norm RMSNorm, SwiGLU, RoPE);
  Su et al., "RoFormer", arXiv 2104.09864, eq. 34 (rotary embeddings);
  Ainslie et al., "GQA", arXiv 2305.13245 (grouped-query attention);
  Shazeer, "GLU variants improve transformer", arXiv 2002.05202, eq. 6 (SwiGLU);
  Zhang & Sennrich, "Root mean square layer normalization", arXiv 1910.07467, eq. 4;
  Qwen2 technical report, arXiv 2407.10671 (q/k/v bias); Qwen3 technical report, arXiv 2505.09388 (q/k norm).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from r1jax.models.config import ModelConfig
from r1jax.models.sharding import constrain

__all__ = [
    "KVCache",
    "PARAM_AXES",
    "param_specs",
    "init_params",
    "forward",
    "forward_with_cache",
    "init_cache",
    "lm_head_weight",
    "logits",
    "init_value_head",
    "value",
    "rms_norm",
    "rope_inv_freq",
    "apply_rope",
    "default_positions",
    "cast_for_compute",
]

Params = dict[str, Any]

# Logical axis names of every parameter, by "/"-joined path. One home: init_params, the HF name
# table and the sharding rules all read this.
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "final_norm": ("embed",),
    "lm_head": ("embed", "vocab"),
    "layers/attn_norm": ("layers", "embed"),
    "layers/mlp_norm": ("layers", "embed"),
    "layers/q_proj": ("layers", "embed", "heads", "head_dim"),
    "layers/k_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/v_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/o_proj": ("layers", "heads", "head_dim", "embed"),
    "layers/q_bias": ("layers", "heads", "head_dim"),
    "layers/k_bias": ("layers", "kv_heads", "head_dim"),
    "layers/v_bias": ("layers", "kv_heads", "head_dim"),
    "layers/o_bias": ("layers", "embed"),
    "layers/q_norm": ("layers", "head_dim"),
    "layers/k_norm": ("layers", "head_dim"),
    "layers/gate_proj": ("layers", "embed", "mlp"),
    "layers/up_proj": ("layers", "embed", "mlp"),
    "layers/down_proj": ("layers", "mlp", "embed"),
    "value_head/kernel": ("embed",),
    "value_head/bias": (),
}

# The layer weights every forward reads through ``_dense`` (what ``compute_dtype`` casts).
_MATMUL_WEIGHTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Logical axes of the activations that get a sharding constraint.
ACT_BTD = ("batch", "seq", "embed")
ACT_BTHD = ("batch", "seq", "heads", "head_dim")
ACT_BTF = ("batch", "seq", "mlp")
# Per-layer KV-cache layouts: keys transposed (the score matmul contracts head_dim against a
# [Dh, S] operand), values as the output matmul reads them ([S, Dh]).
CACHE_K_AXES = ("batch", "kv_heads", "head_dim", "seq")
CACHE_V_AXES = ("batch", "kv_heads", "seq", "head_dim")

_F32 = jnp.float32
# Finite "minus infinity" for masked attention scores: a row with no valid key (a padding query)
# becomes a uniform average instead of NaN, so gradients stay finite.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


class KVCache(NamedTuple):
    """Key/value cache, one buffer per layer (a pytree).

    Each layer's buffers are written in place (``dynamic_update_slice``) and read by the
    attention matmuls as they are, with no per-step copy or transpose.

    Attributes:
      k: tuple of L arrays [B, K, Dh, S]: keys (RoPE already applied), transposed.
      v: tuple of L arrays [B, K, S, Dh]: values.
      mask: [B, S] bool, True where a slot holds a real (non-padding) token.
      index: [] int32, the next slot to write (the same for every row).
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array


# ---------------------------------------------------------------------------------------------
# Parameters


def param_specs(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and initialiser kind of every parameter of ``config``, by "/"-joined path.

    Args:
      config: the architecture.

    Returns:
      ``{path: (shape, kind)}`` with kind one of "normal", "ones", "zeros".
    """
    c = config
    L, D, F, V = c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size
    H, K, Dh = c.num_heads, c.num_kv_heads, c.resolved_head_dim
    specs: dict[str, tuple[tuple[int, ...], str]] = {
        "embed": ((V, D), "normal"),
        "layers/attn_norm": ((L, D), "ones"),
        "layers/q_proj": ((L, D, H, Dh), "normal"),
        "layers/k_proj": ((L, D, K, Dh), "normal"),
        "layers/v_proj": ((L, D, K, Dh), "normal"),
        "layers/o_proj": ((L, H, Dh, D), "normal"),
        "layers/mlp_norm": ((L, D), "ones"),
        "layers/gate_proj": ((L, D, F), "normal"),
        "layers/up_proj": ((L, D, F), "normal"),
        "layers/down_proj": ((L, F, D), "normal"),
        "final_norm": ((D,), "ones"),
    }
    if c.qkv_bias:
        specs["layers/q_bias"] = ((L, H, Dh), "zeros")
        specs["layers/k_bias"] = ((L, K, Dh), "zeros")
        specs["layers/v_bias"] = ((L, K, Dh), "zeros")
    if c.o_bias:
        specs["layers/o_bias"] = ((L, D), "zeros")
    if c.use_qk_norm:
        specs["layers/q_norm"] = ((L, Dh), "ones")
        specs["layers/k_norm"] = ((L, Dh), "ones")
    if not c.tie_word_embeddings:
        specs["lm_head"] = ((D, V), "normal")
    return specs


def _nest(flat: dict[str, Any]) -> Params:
    out: Params = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random parameters: weight matrices ~ N(0, initializer_range²), norms 1, biases 0.

    Args:
      config: the architecture.
      key: a PRNG key.

    Returns:
      The nested-dict parameter pytree (layout in the module docstring), in ``config.param_dtype``.
      Jitted: to create the parameters already sharded, wrap it again with
      ``jax.jit(init_params, static_argnums=0, out_shardings=sharding.param_shardings(config, mesh))``.
    """
    specs = param_specs(config)
    keys = jax.random.split(key, len(specs))
    flat = {}
    for k, (path, (shape, kind)) in zip(keys, sorted(specs.items())):
        if kind == "normal":
            x = config.initializer_range * jax.random.normal(k, shape, _F32)
        elif kind == "ones":
            x = jnp.ones(shape, _F32)
        else:
            x = jnp.zeros(shape, _F32)
        flat[path] = x.astype(config.dtype)
    return _nest(flat)


def init_value_head(config: ModelConfig, key: jax.Array) -> Params:
    """A scalar value head for a critic, to merge into the parameters: ``{**params, **head}``.

    Args:
      config: the architecture (its width D and dtype).
      key: a PRNG key.

    Returns:
      ``{"value_head": {"kernel": [D], "bias": []}}``, kernel ~ N(0, 1/D), bias 0, float32.
    """
    d = config.hidden_size
    kernel = jax.random.normal(key, (d,), _F32) / math.sqrt(d)
    return {"value_head": {"kernel": kernel, "bias": jnp.zeros((), _F32)}}


def value(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Per-token state values V(s_t) of a critic from the final hidden states.

    Args:
      params: parameters holding ``value_head`` (see :func:`init_value_head`).
      config: the architecture.
      hidden: [B, T, D] output of :func:`forward`.

    Returns:
      [B, T] float32 values.

    References:
      Schulman et al., "Proximal policy optimization algorithms", arXiv 1707.06347 (the critic of eq. 9).
    """
    del config
    if "value_head" not in params:
        raise KeyError("params has no 'value_head': merge in init_value_head(config, key) first")
    head = params["value_head"]
    return jnp.einsum("...d,d->...", hidden.astype(_F32), head["kernel"].astype(_F32)) + head["bias"].astype(_F32)


def lm_head_weight(params: Params, config: ModelConfig) -> jax.Array:
    """The output projection [D, V] (the embedding transposed when embeddings are tied)."""
    if config.tie_word_embeddings:
        return params["embed"].T
    return params["lm_head"]


# ---------------------------------------------------------------------------------------------
# Building blocks


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm with float32 statistics: ``weight * x / sqrt(mean(x²) + eps)``.

    Args:
      x: [..., N] activations.
      weight: [N] scale.
      eps: epsilon inside the square root.

    Returns:
      Normalised ``x`` in the dtype of ``x`` (promoted with ``weight``).

    References:
      Zhang & Sennrich, arXiv 1910.07467, eq. 4.
    """
    x32 = x.astype(_F32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies θ^(-2i/Dh), i < Dh/2, with the configured scaling (float32 numpy).

    References:
      Su et al., arXiv 2104.09864, eq. 15; Llama 3, arXiv 2407.21783, section 3.3 (llama3 scaling).
    """
    dim = config.resolved_head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    inv = inv.astype(np.float32).astype(np.float64)
    s = config.rope_scaling
    if s is not None:
        if s.rope_type == "linear":
            inv = inv / s.factor
        else:  # llama3
            low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
            high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
            medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
            inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def _rope_tables(positions: jax.Array, inv_freq: np.ndarray, below: int | None = None) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, 1, Dh/2] (float32) of the RoPE angles ``position * inv_freq``.

    With ``below`` (static: every position is known to be smaller) they are looked up in a
    constant table of the first ``below`` positions instead of computed. XLA fuses the
    computed cos and sin into each layer's q and k rotation and evaluates them there, per
    head and element; a table lookup costs a load.
    """
    if below is not None:
        angles = np.arange(below, dtype=np.float32)[:, None] * np.asarray(inv_freq, np.float32)
        cos, sin = jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))
        return cos[positions][:, :, None, :], sin[positions][:, :, None, :]
    angles = positions.astype(_F32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    x32 = x.astype(_F32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates ``x`` [B, T, N, Dh] by angle ``position * inv_freq`` (half-split layout, as HF).

    Angles, cos and sin are computed in float32; the result has the dtype of ``x``.
    """
    return _rotate(x, *_rope_tables(positions, inv_freq))


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: ModelConfig) -> jax.Array:
    """Grouped-query attention over keys and values in the cache layout.

    Args:
      q: [B, T, H, Dh] queries; query head ``h`` reads kv head ``h // (H / K)``.
      k: [B, K, Dh, S] keys, transposed so that the score matmul reads them without a copy.
      v: [B, K, S, Dh] values.
      mask: [B, T, S] bool, True where query t may attend to key s.
      config: the architecture.

    Returns:
      [B, T, H, Dh] attention outputs.
    """
    B, T, H, Dh = q.shape
    K = k.shape[1]
    # The query heads sharing a kv head are stacked on the query axis: one batched matmul per
    # (row, kv head), in the layouts the matmul wants.
    # The matmuls read the keys and values as stored, the queries and probabilities cast to their
    # dtype, and accumulate in float32: a bfloat16 KV cache is read in place (converting it to
    # float32 would copy the whole cache every decode step). Training passes float32 keys.
    qg = rearrange(q, "b t (k g) d -> b k (g t) d", k=K).astype(k.dtype)
    scores = jnp.einsum("bkqd,bkds->bkqs", qg, k, preferred_element_type=_F32)
    scores = rearrange(scores, "b k (g t) s -> b k g t s", t=T) * (1.0 / math.sqrt(config.resolved_head_dim))
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = rearrange(jax.nn.softmax(scores, axis=-1).astype(v.dtype), "b k g t s -> b k (g t) s")
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v, preferred_element_type=_F32)
    return rearrange(out, "b k (g t) d -> b t (k g) d", t=T).astype(q.dtype)


def _attend_grouped(q: jax.Array, prompt_kv: tuple[jax.Array, jax.Array], k: jax.Array, v: jax.Array,
                    prompt_mask: jax.Array, mask: jax.Array, config: ModelConfig) -> jax.Array:
    """:func:`_attend` of continuations over their prompt's keys and values, then their own.

    Args:
      q: [B, T, H, Dh] queries of B = P * R continuations (R of each prompt, consecutive).
      prompt_kv: the prompts' keys [P, K, Dh, Lp] and values [P, K, Lp, Dh] (cache layout).
      k, v: the continuations' own keys [B, K, Dh, T] and values [B, K, T, Dh].
      prompt_mask: [P, Lp] bool, the prompts' real tokens.
      mask: [B, T, T] bool, True where query t may attend to the continuation's key s.

    Returns:
      [B, T, H, Dh] outputs. The softmax runs over both parts of the keys without joining them.
    """
    B, T, H, Dh = q.shape
    K = k.shape[1]
    kp, vp = prompt_kv
    share = functools.partial(jnp.repeat, repeats=B // kp.shape[0], axis=0)
    qg = rearrange(q, "b t (k g) d -> b k (g t) d", k=K).astype(k.dtype)
    scale = 1.0 / math.sqrt(config.resolved_head_dim)

    def scores(keys, allowed):
        s = jnp.einsum("bkqd,bkds->bkqs", qg, keys, preferred_element_type=_F32)
        s = rearrange(s, "b k (g t) s -> b k g t s", t=T) * scale
        return jnp.where(allowed, s, _MASK_VALUE)

    to_p = scores(share(kp).astype(k.dtype), share(prompt_mask)[:, None, None, None, :])
    own = scores(k, mask[:, None, None, :, :])
    top = jax.lax.stop_gradient(jnp.maximum(jnp.max(to_p, axis=-1, keepdims=True),
                                            jnp.max(own, axis=-1, keepdims=True)))
    to_p, own = jnp.exp(to_p - top), jnp.exp(own - top)
    total = jnp.sum(to_p, axis=-1, keepdims=True) + jnp.sum(own, axis=-1, keepdims=True)

    def values(probs, vals):
        probs = rearrange(probs, "b k g t s -> b k (g t) s").astype(vals.dtype)
        return rearrange(jnp.einsum("bkqs,bksd->bkqd", probs, vals, preferred_element_type=_F32),
                         "b k (g t) d -> b k g t d", t=T)

    out = (values(to_p, share(vp).astype(v.dtype)) + values(own, v)) / total
    return rearrange(out, "b k g t d -> b t (k g) d").astype(q.dtype)


# A full-sequence forward's query blocks (``config.attention_blocks``) hold at least this many queries.
_MIN_QUERY_BLOCK = 32


def _causal_attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: ModelConfig) -> jax.Array:
    """:func:`_attend` for a full causal sequence (key ``s`` = query ``s``), skipping keys past each block.

    The queries are split into ``n = min(T // _MIN_QUERY_BLOCK, config.attention_blocks)`` blocks
    and a block ending at query ``b`` reads keys ``[0, b)`` only: no query attends to a later key,
    so the result is the same up to rounding, and the score and value matmuls, the softmax and their
    backward passes shrink to ``(n + 1) / 2n`` of the square (3/4 with 2 blocks, 5/8 with 4).

    Measured on XLA:CPU, bfloat16 GRPO update of benchmarks/grpo_step.py's model, one pinned core,
    interleaved in one process, ``attention_blocks=4``: 8 x 8 x 64 tokens (rows of 72, 2 blocks)
    750 -> 733 ms; 8 x 16 x 128 (rows of 136, 4 blocks) 3051 -> 2937 ms. The compile takes longer
    (a 2-layer forward + backward: 1.6 -> 2.0 s at T = 72, 1.6 -> 2.6 s at 136, and tests/train +
    tests/pipeline 4.4 -> 6.7 minutes), hence off by default: for long runs.
    """
    if config.attention_impl == "cudnn":
        return _flash_attend(q, k, v, mask, config)
    T = q.shape[1]
    n = max(1, min(T // _MIN_QUERY_BLOCK, config.attention_blocks))
    if n == 1:
        return _attend(q, k, v, mask, config)
    ends = [T * (i + 1) // n for i in range(n)]
    starts = [0] + ends[:-1]
    return jnp.concatenate([_attend(q[:, a:b], k[..., :b], v[:, :, :b], mask[:, a:b, :b], config)
                            for a, b in zip(starts, ends)], axis=1)


def _flash_attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: ModelConfig,
                  implementation: str | None = "cudnn") -> jax.Array:
    """:func:`_attend` through :func:`jax.nn.dot_product_attention` (``config.attention_impl: cudnn``).

    cuDNN's fused flash attention never writes the [T, S] scores to memory. The mask reaches it as
    a bias; every query also attends to itself, so a padding query (no valid key) gets finite
    garbage, as in :func:`_attend`, rather than a softmax over nothing. q, k and v are read in the
    compute dtype (bfloat16). ``implementation="xla"`` runs the same mapping on any backend (tests).
    """
    compute = config.matmul_dtype
    T = q.shape[1]
    mask = mask | jnp.eye(T, dtype=bool)[None]
    out = jax.nn.dot_product_attention(
        q.astype(compute), rearrange(k, "b k d s -> b s k d").astype(compute),
        rearrange(v, "b k s d -> b s k d").astype(compute), mask=mask[:, None],
        scale=1.0 / math.sqrt(config.resolved_head_dim), implementation=implementation)
    return out.astype(q.dtype)


def _qkv(layer: Params, x: jax.Array, rope: tuple[jax.Array, jax.Array], config: ModelConfig):
    """Attention inputs of one layer: q [B, T, H, Dh], k [B, K, Dh, T], v [B, K, T, Dh] (cache layout)."""
    h = rms_norm(x, layer["attn_norm"], config.rms_norm_eps)
    q = _project_heads(h, layer["q_proj"], config)
    k = _project_heads(h, layer["k_proj"], config)
    v = _project_heads(h, layer["v_proj"], config)
    if config.qkv_bias:
        q = q + layer["q_bias"]
        k = k + layer["k_bias"]
        v = v + layer["v_bias"]
    if config.use_qk_norm:
        q = rms_norm(q, layer["q_norm"], config.rms_norm_eps)
        k = rms_norm(k, layer["k_norm"], config.rms_norm_eps)
    q = constrain(_rotate(q, *rope), ACT_BTHD)
    k = constrain(rearrange(_rotate(k, *rope), "b t k d -> b k d t"), CACHE_K_AXES)
    v = constrain(rearrange(v, "b t k d -> b k t d"), CACHE_V_AXES)
    return q, k, v


def _attn_out(layer: Params, attn: jax.Array, config: ModelConfig) -> jax.Array:
    w = layer["o_proj"]
    out = _dense(attn.reshape(attn.shape[:-2] + (-1,)), w.reshape(-1, w.shape[-1]), config.matmul_dtype)
    if config.o_bias:
        out = out + layer["o_bias"]
    return out


def _residual_update(layer: Params, x: jax.Array, attn: jax.Array, config: ModelConfig) -> jax.Array:
    """The rest of a layer after attention: the output projection, then the MLP, each residual."""
    x = x + _attn_out(layer, attn, config)
    return constrain(x + _mlp(layer, x, config), ACT_BTD)


def _layer(params: Params, i: int) -> Params:
    """The weights of layer ``i``: a static slice of the stacked layer axis, or the ``i``-th dict
    of layers :func:`unstack_layers` already split."""
    layers = params["layers"]
    if isinstance(layers, tuple):
        return layers[i]
    return {name: w[i] for name, w in layers.items()}


def unstack_layers(params: Params) -> Params:
    """``params`` with ``"layers"`` split into a tuple of one weight dict per layer.

    For :func:`forward_with_cache` inside a decode loop: the slices are taken once, outside the
    loop, rather than in every step (XLA:CPU does not always hoist them; with a bfloat16 KV cache
    it copied every layer's weights every step).
    """
    return {**params, "layers": tuple(_layer(params, i) for i in range(len(params["layers"]["q_proj"])))}


def restack_layers(params: Params) -> Params:
    """The inverse of :func:`unstack_layers`: ``"layers"`` as one dict of ``[L, ...]`` arrays."""
    layers = params["layers"]
    return {**params, "layers": {name: jnp.stack([layer[name] for layer in layers]) for name in layers[0]}}


def _dense(x: jax.Array, w: jax.Array, compute: jnp.dtype) -> jax.Array:
    """``x [..., I] @ w [I, O]``: inputs read in ``compute``, float32 accumulation, result in ``x``'s dtype.

    With ``compute`` bfloat16 and float32 parameters (``ModelConfig.compute_dtype``) the forward
    and both backward matmuls read bfloat16 copies (the saved activation is the bfloat16 copy)
    and the gradients reach ``x`` and ``w`` in float32 through the casts.
    """
    return _matmul(x.astype(compute), w.astype(compute)).astype(x.dtype)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` in float32 accumulation, with a backward pass that XLA maps onto fast matmuls.

    Plain autodiff computes the weight gradient as ``(g^T x)^T``; XLA:CPU folds that transpose
    into its operands and runs a slow generic dot fed by transposing copies. Here the weight
    gradient contracts the token axis of ``x`` and ``g`` directly, giving ``[I, O]`` as stored.
    """
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=_F32)


def _matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = jnp.einsum("...o,io->...i", g, w, preferred_element_type=_F32)
    if x.dtype == _F32:
        dw = jnp.einsum("ni,no->io", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]),
                        preferred_element_type=_F32)
    else:
        # Lower precision: contract the leading (batch, token) axes as they are. XLA:CPU then
        # copies ``x`` to [I, tokens] and runs its bfloat16 matmul kernel; from the flattened
        # form above it upcasts both operands to a float32 generic dot (1.7x slower here).
        dw = jnp.einsum("...i,...o->io", x, g, preferred_element_type=_F32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def cast_for_compute(params: Params, config: ModelConfig) -> Params:
    """``params`` with the layer matmul weights already in ``config.matmul_dtype``.

    Inference only (the sampler casts once per call instead of once per decoded token); the
    forward is the same, since ``_dense`` casts its inputs to that dtype anyway. Identity when
    the compute dtype is the parameter dtype.
    """
    compute = config.matmul_dtype
    if compute == config.dtype:
        return params
    layers = {k: w.astype(compute) if k in _MATMUL_WEIGHTS else w for k, w in params["layers"].items()}
    return {**params, "layers": layers}


def _project_heads(x: jax.Array, w: jax.Array, config: ModelConfig) -> jax.Array:
    """``x [B, T, D] @ w [D, N, Dh] -> [B, T, N, Dh]`` through :func:`_dense` (heads flattened)."""
    out = _dense(x, w.reshape(w.shape[0], -1), config.matmul_dtype)
    return out.reshape(out.shape[:-1] + w.shape[1:])


def _mlp(layer: Params, x: jax.Array, config: ModelConfig) -> jax.Array:
    h = rms_norm(x, layer["mlp_norm"], config.rms_norm_eps)
    compute = config.matmul_dtype
    gate = _dense(h, layer["gate_proj"], compute)
    up = _dense(h, layer["up_proj"], compute)
    act = constrain(jax.nn.silu(gate) * up, ACT_BTF)
    return _dense(act, layer["down_proj"], compute)


def _remat(fn, config: ModelConfig):
    if config.remat == "full":
        return jax.checkpoint(fn)
    if config.remat == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return fn


def _embed(params: Params, tokens: jax.Array) -> jax.Array:
    # Gather the table over fsdp (vocab stays split) before the lookup, as FSDP does for every
    # weight; gathering straight from an fsdp-split table makes XLA replicate the result.
    table = constrain(params["embed"], ("vocab", None))
    return constrain(jnp.take(table, tokens, axis=0), ACT_BTD)


def _check_tokens(tokens: jax.Array, name: str = "tokens") -> None:
    if tokens.ndim != 2:
        raise ValueError(f"{name}: expected shape [B, T], got {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer token ids, got dtype {tokens.dtype}")


def _check_shape(x: jax.Array | None, shape: tuple[int, ...], name: str) -> None:
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (that of tokens), got {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------
# Full-sequence forward


def default_positions(
    shape: tuple[int, int], *, segment_ids: jax.Array | None = None, attention_mask: jax.Array | None = None
) -> jax.Array:
    """Positions when none are given: count of valid tokens before this one within its segment.

    With neither mask nor segments this is ``arange(T)`` per row. With a (left- or right-)padding
    mask it is ``cumsum(mask) - 1`` clipped at 0, the convention of the sampler's prefill, so the
    trainer and the sampler see the same positions. With segment ids (packed sequences) it
    restarts at 0 at each segment start.

    Args:
      shape: (B, T).
      segment_ids: optional [B, T] int segment ids (contiguous runs).
      attention_mask: optional [B, T] bool, True for real tokens.

    Returns:
      [B, T] int32 positions.
    """
    B, T = shape
    valid = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
    count = jnp.cumsum(valid, axis=1)  # valid tokens up to and including t
    if segment_ids is not None:
        start = jnp.concatenate(
            [jnp.ones((B, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
        )
        before = jnp.where(start, count - valid, 0)  # valid tokens before the segment start
        count = count - jax.lax.cummax(before, axis=1)
    return jnp.maximum(count - 1, 0).astype(jnp.int32)


def forward(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
) -> jax.Array:
    """Final hidden states of a batch of (possibly padded or packed) sequences.

    Token t attends to token s iff s <= t, token s is valid (``attention_mask``) and both lie in
    the same segment (``segment_ids``). Padding queries produce finite garbage that callers mask.

    Args:
      params: parameter pytree.
      config: the architecture (static).
      tokens: [B, T] int token ids.
      positions: [B, T] int RoPE positions; default :func:`default_positions` (restarting per
        segment, counting only valid tokens).
      segment_ids: [B, T] int ids of packed sequences; None = one sequence per row.
      attention_mask: [B, T] bool, True for real tokens; None = all real.

    Returns:
      [B, T, D] hidden states after the final RMSNorm (not projected to the vocabulary), in the
      parameter dtype.
    """
    _check_tokens(tokens)
    B, T = tokens.shape
    _check_shape(positions, (B, T), "positions")
    _check_shape(segment_ids, (B, T), "segment_ids")
    _check_shape(attention_mask, (B, T), "attention_mask")
    below = None
    if positions is None:  # counts of earlier tokens: all below T
        positions, below = default_positions((B, T), segment_ids=segment_ids, attention_mask=attention_mask), T
    idx = jnp.arange(T)
    mask = jnp.broadcast_to(idx[None, :, None] >= idx[None, None, :], (B, T, T))
    if attention_mask is not None:
        mask = mask & attention_mask.astype(bool)[:, None, :]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    rope = _rope_tables(positions, rope_inv_freq(config), below)

    def layer_fn(x, layer):
        q, k, v = _qkv(layer, x, rope, config)
        return _residual_update(layer, x, _causal_attend(q, k, v, mask, config), config), None

    x = _run_layers(layer_fn, _embed(params, tokens), params, config)
    return rms_norm(x, params["final_norm"], config.rms_norm_eps)


def _run_layers(layer_fn, x, params: Params, config: ModelConfig, *, extra: tuple | None = None,
                collect: bool = False):
    """``x`` through every layer, rematerialised as configured.

    ``layer_fn(x, layer) -> (x, out)``; with ``extra`` (a tuple of per-layer tuples, each of length
    L), ``layer_fn(x, (layer, extra_i))``. With ``collect`` returns ``(x, outs)``: ``out`` a tuple,
    ``outs`` the same tuple of per-layer tuples."""
    layer_fn = _remat(layer_fn, config)
    L = config.num_layers
    if config.scan_layers:
        xs = params["layers"] if extra is None else (params["layers"], tuple(jnp.stack(e) for e in extra))
        x, outs = jax.lax.scan(layer_fn, x, xs)
        return (x, tuple(tuple(a[i] for i in range(L)) for a in outs)) if collect else x
    # Unrolled, each layer's saved activations are their own buffers; a scan stacks them
    # into [L, ...] arrays, zero-filled and written slice by slice (17% of a small model's
    # forward + backward on XLA:CPU), at the price of compiling L layers.
    outs = []
    for i in range(L):
        x, out = layer_fn(x, _layer(params, i) if extra is None else (_layer(params, i), tuple(e[i] for e in extra)))
        outs.append(out)
    return (x, tuple(zip(*outs))) if collect else x


class PromptCache(NamedTuple):
    """What continuations of a batch of prompts read from them (:func:`prompt_cache`): every layer's
    keys and values, and the final hidden states (which predict each continuation's first token).

    Attributes:
      k: tuple of L arrays [P, K, Dh, Lp]: keys (RoPE applied), transposed.
      v: tuple of L arrays [P, K, Lp, Dh]: values.
      hidden: [P, Lp, D] hidden states after the final RMSNorm.
    """

    k: tuple
    v: tuple
    hidden: jax.Array


def _grouped_masks(prompt_mask: jax.Array | None, shape: tuple[int, int]) -> jax.Array:
    if prompt_mask is None:
        return jnp.ones(shape, bool)
    _check_shape(prompt_mask, shape, "prompt_mask")
    return prompt_mask.astype(bool)


def prompt_cache(params: Params, config: ModelConfig, prompt_tokens: jax.Array, *,
                 prompt_mask: jax.Array | None = None) -> PromptCache:
    """The :class:`PromptCache` of ``P`` prompts ``[P, Lp]``, padded on either side (``prompt_mask``)."""
    _check_tokens(prompt_tokens, "prompt_tokens")
    P, Lp = prompt_tokens.shape
    prompt_mask = _grouped_masks(prompt_mask, (P, Lp))
    ip = jnp.arange(Lp)
    attn = (ip[:, None] >= ip[None, :])[None] & prompt_mask[:, None, :]
    rope = _rope_tables(default_positions((P, Lp), attention_mask=prompt_mask), rope_inv_freq(config), Lp)

    def layer_fn(x, layer):
        q, k, v = _qkv(layer, x, rope, config)
        return _residual_update(layer, x, _attend(q, k, v, attn, config), config), (k, v)

    x, (ks, vs) = _run_layers(layer_fn, _embed(params, prompt_tokens), params, config, collect=True)
    return PromptCache(ks, vs, rms_norm(x, params["final_norm"], config.rms_norm_eps))


def forward_continuations(params: Params, config: ModelConfig, cache: PromptCache, tokens: jax.Array, *,
                          prompt_mask: jax.Array | None = None,
                          attention_mask: jax.Array | None = None) -> jax.Array:
    """Final hidden states ``[P * G, Tc, D]`` of ``G`` continuations of each cached prompt.

    Row ``p * G + g`` of ``tokens`` (right-padded, ``attention_mask``) continues prompt ``p`` of
    ``cache``; it attends to the prompt's real tokens (``prompt_mask``), then causally to its own.
    """
    _check_tokens(tokens)
    P, Lp = cache.hidden.shape[:2]
    B, Tc = tokens.shape
    if B % P:
        raise ValueError(f"tokens: {B} rows are not a whole number of continuations of {P} prompts")
    G = B // P
    prompt_mask = _grouped_masks(prompt_mask, (P, Lp))
    _check_shape(attention_mask, (B, Tc), "attention_mask")
    attention_mask = jnp.ones((B, Tc), bool) if attention_mask is None else attention_mask.astype(bool)
    lengths = jnp.repeat(jnp.sum(prompt_mask, axis=1, dtype=jnp.int32), G)[:, None]
    positions = lengths + default_positions((B, Tc), attention_mask=attention_mask)
    ic = jnp.arange(Tc)
    own = (ic[:, None] >= ic[None, :])[None] & attention_mask[:, None, :]
    rope = _rope_tables(positions, rope_inv_freq(config), Lp + Tc)

    def layer_fn(x, layer_and_kv):
        layer, kv = layer_and_kv
        q, k, v = _qkv(layer, x, rope, config)
        return _residual_update(layer, x, _attend_grouped(q, kv, k, v, prompt_mask, own, config), config), None

    x = _run_layers(layer_fn, _embed(params, tokens), params, config, extra=(cache.k, cache.v))
    return rms_norm(x, params["final_norm"], config.rms_norm_eps)


def forward_grouped(
    params: Params,
    config: ModelConfig,
    prompt_tokens: jax.Array,
    tokens: jax.Array,
    *,
    prompt_mask: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`forward` of ``G`` continuations of each prompt, the prompt's tokens run once.

    Row ``p * G + g`` of ``tokens`` continues prompt ``p``: the hidden states are those of
    :func:`forward` on the rows ``prompt + continuation`` (valid tokens only, up to rounding), but
    each prompt's layers run once for its group (:func:`prompt_cache`), and the continuations
    attend to its keys and values (:func:`forward_continuations`). GRPO samples G completions of
    every prompt, so a prompt of ``Lp`` tokens saves ``(G - 1) * Lp`` tokens of every policy and
    reference forward (and backward); the gradients the G rows send to the shared prompt add up.

    Args:
      params, config: as :func:`forward`.
      prompt_tokens: [P, Lp] prompts, padded on either side (``prompt_mask``).
      tokens: [P * G, Tc] continuations, right-padded (``attention_mask``).
      prompt_mask, attention_mask: bool masks of the real tokens; None = all real.

    Returns:
      ``(prompt_hidden [P, Lp, D], hidden [P * G, Tc, D])`` after the final RMSNorm.
    """
    cache = prompt_cache(params, config, prompt_tokens, prompt_mask=prompt_mask)
    return cache.hidden, forward_continuations(params, config, cache, tokens, prompt_mask=prompt_mask,
                                               attention_mask=attention_mask)


def logits(params: Params, config: ModelConfig, tokens: jax.Array, **kwargs) -> jax.Array:
    """Next-token logits [B, T, V] in float32 (``forward`` then the output projection).

    Convenience for tests and parity checks; training computes log-probs from ``forward``'s
    hidden states with ``r1jax_kernels.token_logprobs`` without materialising these logits.
    """
    hidden = forward(params, config, tokens, **kwargs)
    return jnp.einsum("btd,dv->btv", hidden, lm_head_weight(params, config), preferred_element_type=_F32)


# ---------------------------------------------------------------------------------------------
# KV cache


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty KV cache of ``max_len`` slots per row.

    Args:
      config: the architecture.
      batch: rows B.
      max_len: slots S (prompt + generated tokens must fit).
      dtype: key/value dtype; default the parameter dtype.

    Returns:
      A :class:`KVCache` with zero keys/values (one buffer per layer), an all-False slot mask
      and index 0.
    """
    if batch <= 0 or max_len <= 0:
        raise ValueError(f"init_cache: batch and max_len must be positive, got batch={batch}, max_len={max_len}")
    K, Dh = config.num_kv_heads, config.resolved_head_dim
    dtype = config.dtype if dtype is None else jnp.dtype(dtype)
    layers = range(config.num_layers)
    return KVCache(
        k=tuple(jnp.zeros((batch, K, Dh, max_len), dtype) for _ in layers),
        v=tuple(jnp.zeros((batch, K, max_len, Dh), dtype) for _ in layers),
        mask=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
    )


def forward_with_cache(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    token_mask: jax.Array,
    cache: KVCache,
    *,
    positions_below: int | None = None,
) -> tuple[jax.Array, KVCache]:
    """Runs T new tokens per row against the cache (prefill when T > 1, decode when T = 1).

    The new keys/values go to slots ``[index, index + T)`` of every row; those slots are marked
    valid where ``token_mask``. Each new token attends to valid slots at or before its own. For a
    prefill, prompts are LEFT-padded and ``positions = max(cumsum(mask) - 1, 0)``; for decode,
    ``positions`` is each row's next position.

    The cache buffers are updated with ``dynamic_update_slice``: under ``jit`` with the cache
    donated (or carried by a ``lax.while_loop``) XLA writes the new slots in place.

    If ``index + T`` exceeds the cache length the hidden states are NaN (a loud failure, since the
    write would otherwise be silently clamped).

    Args:
      params: parameter pytree.
      config: the architecture (static).
      tokens: [B, T] int token ids.
      positions: [B, T] int RoPE positions.
      token_mask: [B, T] bool, True for real tokens.
      cache: the :class:`KVCache` (from :func:`init_cache` or a previous call).
      positions_below: a static bound on ``positions`` (the sampler's: the cache length): RoPE's
        cos and sin are then looked up in a table of that many positions instead of computed.
        Positions at or above it would read clamped table rows.

    Returns:
      (hidden [B, T, D] after the final RMSNorm, the updated cache with index + T).
    """
    _check_tokens(tokens)
    B, T = tokens.shape
    _check_shape(positions, (B, T), "positions")
    _check_shape(token_mask, (B, T), "token_mask")
    if len(cache.k) != config.num_layers or len(cache.v) != config.num_layers:
        raise ValueError(f"cache: holds {len(cache.k)} layers but config.num_layers={config.num_layers}")
    Bc, S = cache.mask.shape
    if Bc != B:
        raise ValueError(f"cache: holds {Bc} rows but tokens has {B}")
    if T > S:
        raise ValueError(f"tokens: {T} new tokens do not fit a cache of {S} slots")
    index = cache.index.astype(jnp.int32)
    new_mask = jax.lax.dynamic_update_slice(cache.mask, token_mask.astype(bool), (0, index))
    slots = jnp.arange(S)
    q_slots = index + jnp.arange(T)
    mask = new_mask[:, None, :] & (slots[None, None, :] <= q_slots[None, :, None])  # [B, T, S]
    rope = _rope_tables(positions, rope_inv_freq(config), positions_below)
    zero = jnp.zeros((), jnp.int32)

    x = _embed(params, tokens)
    ks, vs = [], []
    for i in range(config.num_layers):
        layer = _layer(params, i)
        q, k, v = _qkv(layer, x, rope, config)
        ck = jax.lax.dynamic_update_slice(cache.k[i], k.astype(cache.k[i].dtype), (zero, zero, zero, index))
        cv = jax.lax.dynamic_update_slice(cache.v[i], v.astype(cache.v[i].dtype), (zero, zero, index, zero))
        x = _residual_update(layer, x, _attend(q, ck, cv, mask, config), config)
        ks.append(ck)
        vs.append(cv)
    hidden = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    hidden = jnp.where(index + T <= S, hidden, jnp.nan)
    return hidden, KVCache(k=tuple(ks), v=tuple(vs), mask=new_mask, index=index + T)
