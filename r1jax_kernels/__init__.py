"""r1jax_kernels: memory-lean per-token log-probs over a large vocabulary, and group advantages.

Imported as ``r1jax_kernels`` (the top-level ``kernels/`` directory of the r1jax repository).

Public API::

    token_logprobs(hidden[..., D], lm_head[D, V], targets[...], *, temperature=1.0,
                   return_entropy=False, backend="auto", chunk_size=None) -> logp | (logp, H)
    logprobs_from_logits(logits[..., V], targets[...], temperature=1.0, return_entropy=False)
    grpo_token_terms(hidden, lm_head, targets, old_logp, ref_logp, advantages, ...) -> TokenTerms
    sharded_token_logprobs(hidden, lm_head, targets, *, mesh, ...)   # vocabulary-parallel
    segment_group_advantages(rewards[B], group_ids[B], num_groups, ...)  # ragged groups

Backends of ``token_logprobs``: "reference" (materialised logits), "chunked" (XLA, vocabulary
chunks, custom_vjp), "pallas" (fused GPU kernel; ``interpret=True`` on CPU), "auto".
"""

from r1jax_kernels.chunked import vocab_stats
from r1jax_kernels.group_advantages import segment_group_advantages
from r1jax_kernels.grpo_terms import TokenTerms, grpo_terms_from_logprobs
from r1jax_kernels.logprobs import (BACKENDS, grpo_token_terms, pallas_available,
                                    resolve_backend, token_logprobs)
from r1jax_kernels.reference import logprobs_from_logits
from r1jax_kernels.sharded import sharded_token_logprobs

__all__ = [
    "BACKENDS",
    "TokenTerms",
    "grpo_terms_from_logprobs",
    "grpo_token_terms",
    "logprobs_from_logits",
    "pallas_available",
    "resolve_backend",
    "segment_group_advantages",
    "sharded_token_logprobs",
    "token_logprobs",
    "vocab_stats",
]
