"""A tiny random Qwen2 built with `transformers`, saved in HF format and loaded through r1jax."""

import numpy as np
import pytest

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
            # A wide init spreads the logits, so greedy argmaxes are far from ties.
            initializer_range=0.3)


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(torch model, directory) of a random tiny Qwen2ForCausalLM saved with save_pretrained."""
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**TINY)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so loading them is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(d)
    return model, str(d)


@pytest.fixture(scope="session")
def tiny(hf_tiny):
    """(params, config) loaded with r1jax.models.load_pretrained (float32)."""
    from r1jax.models import load_pretrained

    params, config = load_pretrained(hf_tiny[1])
    return params, config


@pytest.fixture(scope="session")
def sampler(tiny):
    from r1jax.sampling import Sampler

    # Every test batch pads to 8 rows, 8 prompt slots, 8 new tokens: few compiled shapes.
    return Sampler(tiny[1], max_batch_rows=8, min_batch_bucket=8)


PROMPTS = [[3, 17, 5], [9, 1, 44, 2, 60, 7], [12]]


@pytest.fixture
def prompts():
    return [np.asarray(p, np.int32) for p in PROMPTS]
