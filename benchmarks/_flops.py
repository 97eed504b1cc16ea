"""Useful FLOPs of a decoder-only transformer's passes, and a matmul peak measured in this process.

One count for every framework a benchmark compares (what the work needs, not what a framework
executes): 2 FLOPs per weight per token for the layer projections and the output head (the
embedding is a lookup), and 4·H·Dh per layer per attended (query, key) pair over the causal prefix
(scores and the value update).
"""

from __future__ import annotations

import statistics
import time


def forward_flops(*, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
                  tokens: float, sequences: int, cached: float = 0.0) -> float:
    """FLOPs of ``sequences`` forwards of ``tokens`` new tokens each, after ``cached`` tokens in a KV cache."""
    head_dim = hidden // heads
    per_token = 2 * (layers * (hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
                               + 3 * hidden * intermediate) + hidden * vocab)
    pairs = tokens * cached + tokens * (tokens + 1) / 2
    return sequences * (tokens * per_token + pairs * 4 * heads * head_dim * layers)


def generation_flops(dims: dict, *, prompts: int, samples: int, prompt_tokens: float, new_tokens: int) -> float:
    """Sampling ``samples`` completions of ``new_tokens`` for each of ``prompts`` prompts: each prompt
    once (one prefill per prompt), each new token once."""
    return (forward_flops(**dims, tokens=prompt_tokens, sequences=prompts)
            + forward_flops(**dims, tokens=new_tokens, sequences=prompts * samples, cached=prompt_tokens))


def median_seconds(fn, repeats: int = 15) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(framework: str, shapes=((4608, 256, 512), (1024, 1024, 1024))) -> dict:
    """The best matmul GFLOP/s of this process over ``shapes`` (M, K, N): ``xla`` float32 and
    bfloat16 (float32 accumulation), or ``torch`` float32."""
    out = {}
    if framework == "xla":
        import jax
        import jax.numpy as jnp

        f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        for dtype in ("float32", "bfloat16"):
            out[dtype] = max(2 * m * k * n / 1e9 / median_seconds(
                lambda a=jnp.ones((m, k), dtype), b=jnp.ones((k, n), dtype): f(a, b).block_until_ready())
                for m, k, n in shapes)
    else:
        import torch

        out["float32"] = max(2 * m * k * n / 1e9 / median_seconds(lambda a=torch.ones(m, k), b=torch.ones(k, n): a @ b)
                             for m, k, n in shapes)
    return out
