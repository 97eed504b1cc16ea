"""r1jax.sampling: the embedded JAX sampler (KV cache, prefill + decode, top-p/top-k, log-probs).

``SamplingParams`` and ``Sample`` (:mod:`r1jax.sampling.params`) are plain Python and import
without JAX (the vLLM rollout server uses them); the sampler itself (:mod:`r1jax.sampling.sampler`)
is imported lazily on first use of its names.
"""

from r1jax.sampling.params import FinishReason, Sample, SamplingParams, check_prompts

__all__ = [
    "FinishReason", "Sample", "SamplingParams", "check_prompts",
    "Sampler", "Row", "BatchShape", "RowParams", "DecodeState",
    "prefill", "decode", "sample_tokens", "filter_logits", "bucket",
]

_LAZY = {"Sampler", "Row", "BatchShape", "RowParams", "DecodeState", "prefill", "decode",
         "sample_tokens", "filter_logits", "bucket"}


def __getattr__(name):
    if name in _LAZY:
        from r1jax.sampling import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'r1jax.sampling' has no attribute {name!r}")
