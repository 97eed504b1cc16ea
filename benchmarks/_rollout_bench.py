"""Shared pieces of the rollout benchmarks (``prefill.py``, ``decode_window.py``)."""

from __future__ import annotations

import tempfile
import time


def random_model():
    """``(params, config)`` of ``grpo_step.py``'s random Qwen2 (``torch.manual_seed(0)``, float32), loaded
    through a Hugging Face checkpoint as a user's model would be."""
    import torch
    import transformers

    from benchmarks.grpo_step import MODEL
    from r1jax.models import load_pretrained

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**MODEL, tie_word_embeddings=False)).save_pretrained(d)
        return load_pretrained(d)


def interleaved_generate(samplers: dict, params, prompts, sampling, repeats: int) -> tuple[dict, dict]:
    """One warm-up ``generate`` per sampler (compiles), then ``repeats`` rounds calling each in turn.

    Returns ``(outputs of the warm-up calls, seconds of the timed calls)``, both keyed like ``samplers``.
    """
    outputs = {k: s.generate(params, prompts, sampling) for k, s in samplers.items()}
    seconds: dict = {k: [] for k in samplers}
    for _ in range(repeats):
        for k, sampler in samplers.items():
            start = time.perf_counter()
            sampler.generate(params, prompts, sampling)
            seconds[k].append(time.perf_counter() - start)
    return outputs, seconds
