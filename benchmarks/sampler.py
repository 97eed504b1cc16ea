"""Tokens/s of the embedded JAX sampler vs `transformers`' `generate`, same model, same shapes, CPU.

One random Qwen2 is built with `transformers` (PyTorch), saved with `save_pretrained` and loaded into
r1jax with `r1jax.models.load_pretrained`: both sides run the same weights. Both decode greedily
(no stop token, so every row generates exactly `new_tokens` tokens) with a KV cache; the batch is
`batch` prompts of `prompt_len` tokens (equal lengths: no padding on either side). Warm-up calls
(compilation, allocator) are excluded; the measured calls alternate JAX / torch so that load from
other processes hits both alike, and the median is reported. Both run on the same ``--threads``
cores (default 1): the process is pinned to them with ``os.sched_setaffinity`` before JAX starts
(XLA's thread flags do not stop its matmul library from using every core; pinning does), and
torch gets that many intra-op threads.

Also recorded: the fraction of greedy tokens on which the two agree (a sanity check: they should be
equal up to float rounding on near-ties), and the JAX sampler's speed with top-p sampling.

Usage::

    python benchmarks/sampler.py [--batch 16 --new-tokens 128 --prompt-len 32 --repeats 5]

Writes ``benchmarks/results/sampler.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import describe_machine  # noqa: E402


def bench_one(hidden, layers, heads, kv_heads, vocab, batch, prompt_len, new_tokens, repeats, threads):
    """Measures one model shape; returns its JSON record."""
    import jax  # noqa: F401 - already initialised by main, after pinning the process
    import torch
    import transformers

    from r1jax.models import load_pretrained
    from r1jax.sampling import Sampler, SamplingParams

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=prompt_len + new_tokens + 64, tie_word_embeddings=False,
        initializer_range=0.1)
    model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        params, config = load_pretrained(d)

    rng = np.random.default_rng(0)
    prompts = rng.integers(0, vocab, size=(batch, prompt_len)).astype(np.int64)
    B, N = batch, new_tokens
    sampler = Sampler(config, max_batch_rows=B)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=N)
    nucleus = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=N, seed=0)

    def run_jax(sampling):
        out = sampler.generate(params, list(prompts), sampling)
        toks = np.stack([g[0].token_ids for g in out])
        assert toks.shape == (B, N)
        return toks

    ids = torch.from_numpy(prompts)
    mask = torch.ones_like(ids)

    def run_torch():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, use_cache=True)
        toks = out[:, prompts.shape[1]:].numpy()
        assert toks.shape == (B, N)
        return toks

    def timed(fn, *a):
        t = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t

    # Warm-up: compilation (JAX) and first-call allocations (both).
    jax_tokens = run_jax(greedy)
    run_jax(nucleus)
    torch_tokens = run_torch()
    t_jax, t_torch, t_nucleus = [], [], []
    for _ in range(repeats):
        t_jax.append(timed(run_jax, greedy))
        t_torch.append(timed(run_torch))
        t_nucleus.append(timed(run_jax, nucleus))
    tokens = B * N
    med = statistics.median
    return {
        "model": {"architecture": "qwen2", "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads,
                  "vocab": vocab, "intermediate": 4 * hidden, "dtype": "float32",
                  "params": sum(p.numel() for p in model.parameters())},
        "shape": {"batch": B, "prompt_len": prompt_len, "new_tokens": N, "repeats": repeats},
        "seconds": {"jax_greedy": t_jax, "torch_greedy": t_torch, "jax_top_p_0.9": t_nucleus},
        "tokens_per_s": {"jax_greedy": tokens / med(t_jax), "torch_greedy": tokens / med(t_torch),
                         "jax_top_p_0.9": tokens / med(t_nucleus)},
        "ratio_jax_over_torch": med(t_torch) / med(t_jax),
        "greedy_token_agreement": float((jax_tokens == torch_tokens).mean()),
        "compiled_shapes": len(sampler.compiled_shapes),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", default="64x2", help="also measure a small HIDDENxLAYERS model (overhead-bound "
                                                     "regime); empty to skip")
    ap.add_argument("--threads", type=int, default=1,
                    help="cores the process is pinned to, and torch's intra-op threads (default 1: on a shared, "
                         "loaded machine OpenMP spin-waits make multi-threaded torch collapse, which would "
                         "flatter JAX); 0 = all cores, unpinned")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "sampler.json"))
    args = ap.parse_args(argv)
    if args.threads > 0:  # before JAX starts its thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    import jax  # noqa: F401
    import torch
    import transformers

    cpus = len(os.sched_getaffinity(0))
    threads = args.threads if args.threads > 0 else cpus
    torch.set_num_threads(threads)
    common = dict(heads=args.heads, kv_heads=args.kv_heads, vocab=args.vocab, batch=args.batch,
                  prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats, threads=threads)
    main_run = bench_one(args.hidden, args.layers, **common)
    runs = [main_run]
    if args.small:
        h, l = (int(v) for v in args.small.split("x"))
        runs.append(bench_one(h, l, **common))
    result = {
        "benchmark": "sampler",
        "what": "greedy generation tokens/s, r1jax JAX sampler vs transformers generate, same weights and shapes",
        "machine": describe_machine(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": {"torch_intra_op": torch.get_num_threads(), "process_cpus": cpus,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "ratio_jax_over_torch": main_run["ratio_jax_over_torch"],
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps([{k: r[k] for k in ("model", "tokens_per_s", "ratio_jax_over_torch", "greedy_token_agreement")}
                      for r in runs], indent=1))
    return result


if __name__ == "__main__":
    main()
