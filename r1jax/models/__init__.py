"""Decoder-only transformer (Llama / Qwen2 / Qwen3): pure functions on a nested-dict pytree.

Public API (the cross-module contract)::

    ModelConfig, init_params, forward, forward_with_cache, init_cache, KVCache,
    lm_head_weight, logits, init_value_head, value, load_pretrained, save_pretrained

Sharding lives in :mod:`r1jax.models.sharding`.
"""

from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.hf import load_pretrained, save_pretrained
from r1jax.models.transformer import (
    KVCache,
    PARAM_AXES,
    default_positions,
    forward,
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
    "default_positions",
    "init_params",
    "forward",
    "forward_with_cache",
    "init_cache",
    "lm_head_weight",
    "logits",
    "init_value_head",
    "value",
    "load_pretrained",
    "save_pretrained",
]

