"""Shared tiny configurations for the model tests."""

import jax
import pytest

from r1jax.models import ModelConfig, init_params


def tiny_config(**overrides) -> ModelConfig:
    """2 layers, width 32, 4 query heads over 2 kv heads, vocab 96; weights large enough that
    attention is far from uniform (so masking mistakes show)."""
    base = dict(
        architecture="llama",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def qwen3_model():
    """A Qwen3-style config (q/k norm, head_dim != hidden/heads, tied embeddings) and params."""
    config = tiny_config(architecture="qwen3", head_dim=16, tie_word_embeddings=True, attention_bias=True)
    return config, init_params(config, jax.random.key(1))


@pytest.fixture(scope="session")
def make_config():
    """The :func:`tiny_config` factory."""
    return tiny_config
