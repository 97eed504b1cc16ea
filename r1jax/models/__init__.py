"""Decoder-only transformer (Llama / Qwen2 / Qwen3): pure functions on a nested-dict pytree.

Public API (the cross-module contract)::

    ModelConfig, init_params, forward, forward_with_cache, init_cache, KVCache,
    lm_head_weight, logits, init_value_head, value, load_pretrained, save_pretrained

Sharding lives in :mod:`r1jax.models.sharding`.

Example::

    import jax
    from r1jax.models import ModelConfig, init_params, forward, lm_head_weight, load_pretrained

    params, config = load_pretrained("path/to/Qwen2.5-0.5B", param_dtype="float32")
    hidden = jax.jit(forward, static_argnums=1)(params, config, tokens, attention_mask=mask)
    logits = hidden @ lm_head_weight(params, config)          # or r1jax_kernels.token_logprobs

Parameters are a nested dict with the L layers stacked on a leading axis (scanned); the KV cache
holds one buffer per layer: ``KVCache.k`` is a tuple of L arrays [B, K, Dh, S] (keys
transposed), ``KVCache.v`` a tuple of L arrays [B, K, S, Dh].
"""

from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.hf import load_pretrained, save_pretrained
from r1jax.models.transformer import (
    KVCache,
    PARAM_AXES,
    cast_for_compute,
    default_positions,
    forward,
    forward_grouped,
    forward_with_cache,
    init_cache,
    init_params,
    init_value_head,
    lm_head_weight,
    logits,
    value,
)

__all__ = [
    "ModelConfig",
    "RopeScaling",
    "KVCache",
    "PARAM_AXES",
    "cast_for_compute",
    "default_positions",
    "init_params",
    "forward",
    "forward_grouped",
    "forward_with_cache",
    "init_cache",
    "lm_head_weight",
    "logits",
    "init_value_head",
    "value",
    "load_pretrained",
    "save_pretrained",
]

