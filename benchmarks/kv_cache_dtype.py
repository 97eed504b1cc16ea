"""Rollout seconds with a float32 vs a bfloat16 KV cache (``Sampler(cache_dtype=...)``), and how far
each moves the sampler's log-probs from the trainer's.

Each decode step reads every layer's whole KV cache; bfloat16 halves those reads. The keys and
values are then rounded to bfloat16, while the trainer attends over float32 ones, so the reported
log-probs move off the trainer's: measured here per token against a full forward of the same
(bfloat16-compute) model over the sampled tokens. On-policy GRPO recomputes its log-probs, so the
gap reaches only the rollout-vs-trainer diagnostics (``trainer_sampler_kl``) and importance
corrections.

Random Qwen2 of ``benchmarks/grpo_step.py`` (hidden 256, 4 layers, vocab 512), bfloat16 compute,
6-token prompts, temperature 1, in one process pinned to ``--cores`` cores; the two caches
alternate call by call; medians of ``--repeats`` after a warm-up call each (compiles).

    .venv/bin/python benchmarks/kv_cache_dtype.py [--cores 1 --repeats 5]

Writes ``benchmarks/results/kv_cache_dtype.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (prompts, samples per prompt, new tokens): grpo_step.py's base and x4 shapes, then T doubled twice.
SHAPES = ((8, 8, 64), (16, 8, 128), (8, 16, 128), (8, 16, 256))


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.strip().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"--shapes: {text!r} is not PROMPTSxGROUPxTOKENS of positive integers (e.g. 8x16x128)")
    return tuple(int(p) for p in parts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", default=None,
                    help="comma-separated PROMPTSxGROUPxTOKENS, e.g. 2x2x8,2x2x16 (default: "
                         + ",".join("x".join(map(str, s)) for s in SHAPES) + ")")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kv_cache_dtype.json"))
    args = ap.parse_args(argv)
    shapes = SHAPES if args.shapes is None else tuple(_shape(s) for s in args.shapes.split(","))
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])  # before JAX starts its pools
    sys.path.insert(0, str(ROOT))
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks._machine import describe_machine
    from benchmarks._rollout_bench import interleaved_generate, random_model
    from benchmarks.grpo_step import MODEL
    from r1jax.models import forward, lm_head_weight
    from r1jax.sampling import Sampler, SamplingParams
    from r1jax_kernels import token_logprobs

    params, config = random_model()
    config = dataclasses.replace(config, compute_dtype="bfloat16")
    trainer_logp = jax.jit(lambda p, t: token_logprobs(forward(p, config, t)[:, :-1], lm_head_weight(p, config), t[:, 1:]))

    def gap(prompts, groups):
        """|sampler log-prob - trainer log-prob| of every generated token."""
        err = []
        for prompt, group in zip(prompts, groups):
            seqs = jnp.asarray(np.stack([np.concatenate([prompt, s.token_ids]) for s in group]), jnp.int32)
            want = np.asarray(trainer_logp(params, seqs))[:, len(prompt) - 1:]
            err.append(np.abs(np.stack([s.logprobs for s in group]) - want).ravel())
        err = np.concatenate(err)
        return {"mean": float(err.mean()), "p99": float(np.quantile(err, 0.99)), "max": float(err.max())}

    runs = []
    for n_prompts, group, length in shapes:
        prompts = [np.random.default_rng(i).integers(0, MODEL["vocab_size"], 6) for i in range(n_prompts)]
        sampling = SamplingParams(temperature=1.0, max_new_tokens=length, n=group, seed=0)
        samplers = {d: Sampler(config, max_batch_rows=n_prompts * group, cache_dtype=d) for d in ("float32", "bfloat16")}
        outputs, seconds = interleaved_generate(samplers, params, prompts, sampling, args.repeats)
        med = {d: statistics.median(v) for d, v in seconds.items()}
        runs.append({"prompts": n_prompts, "group": group, "new_tokens": length, "seconds": seconds, "median_s": med,
                     "bfloat16_speedup": med["float32"] / med["bfloat16"],
                     "logprob_gap_to_trainer": {d: gap(prompts, out) for d, out in outputs.items()}})
        print(f"{n_prompts}x{group}x{length}: float32 {med['float32']:.3f} s, bfloat16 {med['bfloat16']:.3f} s "
              f"({runs[-1]['bfloat16_speedup']:.2f}x); gap {runs[-1]['logprob_gap_to_trainer']}", flush=True)
    doubling = [(a, b) for a, b in zip(runs, runs[1:]) if (a["prompts"], a["group"]) == (b["prompts"], b["group"])]
    growth = {d: [b["median_s"][d] / a["median_s"][d] for a, b in doubling] for d in ("float32", "bfloat16")}
    result = {"benchmark": "kv_cache_dtype", "machine": describe_machine(), "cores": args.cores,
              "command": "benchmarks/kv_cache_dtype.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": {**MODEL, "param_dtype": "float32", "compute_dtype": "bfloat16"},
              "prompt_tokens": 6, "temperature": 1.0,
              "time_growth_per_doubling_of_T": growth, "load_average_at_end": os.getloadavg(), "runs": runs}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("time growth per doubling of T (consecutive shapes of the same rows; 8 x 16 by default):", {k: [round(x, 2) for x in v] for k, v in growth.items()})
    return result


if __name__ == "__main__":
    main()
