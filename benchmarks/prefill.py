"""Rollout seconds with one prefill per row vs one per prompt (``Sampler(share_prefill=...)``).

A GRPO rollout samples G completions of each prompt; with ``share_prefill`` the sampler runs each
distinct prompt through the model once and copies its KV cache to its G rows. Measured on the
random Qwen2 of ``benchmarks/grpo_step.py`` (hidden 256, 4 layers, vocab 512, float32), 8 prompts ×
8 samples × 64 new tokens at temperature 1, for a short prompt (6 tokens, the benchmark's arithmetic)
and a long one (200 tokens, about the R1-Zero template's length in characters / 2), in one process
pinned to ``--cores`` cores; the two settings alternate call by call; medians of ``--repeats``.

    .venv/bin/python benchmarks/prefill.py [--cores 1 --repeats 7]

Writes ``benchmarks/results/prefill.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--prompt-lengths", default="6,200")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prefill.json"))
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])  # before JAX starts its pools
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from benchmarks._machine import describe_machine
    from benchmarks._rollout_bench import interleaved_generate, random_model
    from benchmarks.grpo_step import MODEL
    from r1jax.sampling import Sampler, SamplingParams

    params, config = random_model()
    rng = np.random.default_rng(0)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=64, n=8, seed=0)
    samplers = {"per_row": Sampler(config, max_batch_rows=64, share_prefill=False),
                "per_prompt": Sampler(config, max_batch_rows=64, share_prefill=True)}
    runs = []
    for length in (int(x) for x in args.prompt_lengths.split(",")):
        prompts = [rng.integers(0, MODEL["vocab_size"], length) for _ in range(8)]
        outputs, seconds = interleaved_generate(samplers, params, prompts, sampling, args.repeats)
        same = all((a.token_ids == b.token_ids).all() for ga, gb in zip(*outputs.values()) for a, b in zip(ga, gb))
        med = {k: statistics.median(v) for k, v in seconds.items()}
        runs.append({"prompt_tokens": length, "seconds": seconds, "median_s": med,
                     "speedup": med["per_row"] / med["per_prompt"], "same_tokens": bool(same)})
        print(f"prompt {length}: per row {med['per_row']:.3f} s, per prompt {med['per_prompt']:.3f} s "
              f"({runs[-1]['speedup']:.2f}x), same tokens {same}")
    result = {"benchmark": "prefill", "machine": describe_machine(), "cores": args.cores,
              "command": "benchmarks/prefill.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "shape": {"prompts": 8, "samples_per_prompt": 8, "new_tokens": 64, "temperature": 1.0},
              "model": {**MODEL, "dtype": "float32"}, "load_average_at_end": os.getloadavg(), "runs": runs}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
