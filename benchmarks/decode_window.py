"""Rollout seconds with the whole KV cache from the first token vs a cache grown in windows
(``Sampler(decode_window=W)``), as the generation length T doubles.

Each decode step reads every layer's whole KV cache. With the cache allocated at prompt + T slots
from the start, a rollout reads about T² slots per row; grown by W slots as it fills, about T²/2 +
W·T/2, at one decode compile per cache size. Measured on the random Qwen2 of
``benchmarks/grpo_step.py`` (hidden 256, 4 layers, vocab 512), 8 prompts × 16 samples (6-token
prompts) at temperature 1, in one process pinned to ``--cores`` cores; the settings alternate call
by call; medians of ``--repeats`` after a warm-up call each (compiles).

    .venv/bin/python benchmarks/decode_window.py [--cores 1 --repeats 4 --lengths 64,128,256,512]

Writes ``benchmarks/results/decode_window.json`` (``--out``).
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
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--lengths", default="64,128,256,512")
    ap.add_argument("--windows", default="32,64,128")
    ap.add_argument("--compute-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_window.json"))
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])  # before JAX starts its pools
    sys.path.insert(0, str(ROOT))
    import dataclasses

    import numpy as np

    from benchmarks._machine import describe_machine
    from benchmarks._rollout_bench import interleaved_generate, random_model
    from benchmarks.grpo_step import MODEL
    from r1jax.sampling import Sampler, SamplingParams

    params, config = random_model()
    config = dataclasses.replace(config, compute_dtype=args.compute_dtype)
    prompts = [np.random.default_rng(i).integers(0, MODEL["vocab_size"], 6) for i in range(8)]
    windows = [None] + [int(w) for w in args.windows.split(",")]
    runs = []
    for length in (int(x) for x in args.lengths.split(",")):
        sampling = SamplingParams(temperature=1.0, max_new_tokens=length, n=16, seed=0)
        samplers = {w: Sampler(config, max_batch_rows=128, decode_window=w) for w in windows}
        outputs, seconds = interleaved_generate(samplers, params, prompts, sampling, args.repeats)
        whole = outputs[None]
        same = {str(w): all((a.token_ids == b.token_ids).all() for ga, gb in zip(out, whole) for a, b in zip(ga, gb))
                for w, out in outputs.items() if w is not None}
        med = {str(w): statistics.median(v) for w, v in seconds.items()}
        runs.append({"new_tokens": length, "seconds": {str(w): v for w, v in seconds.items()}, "median_s": med,
                     "speedup_over_whole": {k: med["None"] / v for k, v in med.items() if k != "None"},
                     "cache_sizes_compiled": {str(w): len({sh.cache_len for sh in s.compiled_shapes})
                                              for w, s in samplers.items()},
                     "same_tokens_as_whole": same})
        print(f"T={length}: " + ", ".join(f"window {k}: {v:.3f} s" for k, v in med.items()) + f"; same tokens {same}",
              flush=True)
    growth = {w: [b["median_s"][w] / a["median_s"][w] for a, b in zip(runs, runs[1:])] for w in runs[0]["median_s"]}
    result = {"benchmark": "decode_window", "machine": describe_machine(), "cores": args.cores,
              "command": "benchmarks/decode_window.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "shape": {"prompts": 8, "samples_per_prompt": 16, "prompt_tokens": 6, "temperature": 1.0},
              "model": {**MODEL, "param_dtype": "float32", "compute_dtype": args.compute_dtype, "cache_dtype": "float32"},
              "time_growth_per_doubling_of_T": growth, "load_average_at_end": os.getloadavg(), "runs": runs}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("time growth per doubling of T:", {k: [round(x, 2) for x in v] for k, v in growth.items()})
    return result


if __name__ == "__main__":
    main()
