"""GAE speed: ``lax.associative_scan`` vs reverse ``lax.scan`` vs a NumPy loop over time.

Usage (from the repository root)::

    python benchmarks/gae.py                      # B=64, T=8192 on CPU
    python benchmarks/gae.py --batch 8 --length 512 --repeats 3 --out /tmp/gae.json

Both JAX versions are the one GAE of r1jax (``r1jax.algos.gae_advantages`` with
``method="associative_scan"`` / ``"scan"``), jitted with gamma and lambda traced. The NumPy
baseline is the textbook backward loop over time, vectorised over the batch, in float64.
Each function runs once to warm up (compile), then ``--repeats`` interleaved rounds (one call
of each per round, so load changes on a shared machine hit all alike); median and min are
reported, JAX calls end with ``block_until_ready``. Results, the machine and the ratios go to ``benchmarks/results/gae.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gae.py` puts benchmarks/, not the root, first
    sys.path.insert(0, str(ROOT))


def numpy_gae(rewards, values, mask, gamma, lam):
    """Backward loop over time, vectorised over the batch (right-padded rows), float64."""
    import numpy as np

    rewards, values = rewards.astype(np.float64), values.astype(np.float64)
    batch, length = rewards.shape
    adv = np.zeros((batch, length))
    next_value = np.zeros(batch)
    next_adv = np.zeros(batch)
    for t in range(length - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = np.where(m, a, 0.0)
        next_value = np.where(m, values[:, t], next_value)
        next_adv = np.where(m, a, next_adv)
    return adv


def interleaved_timings(fns, repeats):
    """Seconds per call of each function: one warm-up call each (compiles), then ``repeats``
    rounds calling every function once per round, so that a change in machine load hits all
    of them alike (this machine is shared)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.95)
    parser.add_argument("--platform", default="cpu", help="JAX platform (default cpu)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gae.json"))
    args = parser.parse_args(argv)

    os.environ["JAX_PLATFORMS"] = args.platform
    import jax
    import numpy as np

    from benchmarks._machine import describe_machine
    from r1jax.algos import gae_advantages

    rng = np.random.default_rng(0)
    shape = (args.batch, args.length)
    rewards = rng.normal(size=shape).astype(np.float32)
    values = rng.normal(size=shape).astype(np.float32)
    lengths = rng.integers(args.length // 2, args.length + 1, size=(args.batch, 1))
    mask = np.arange(args.length)[None, :] < lengths  # ragged, right-padded rows

    device_args = [jax.device_put(x) for x in (rewards, values, mask)]
    gamma, lam = np.float32(args.gamma), np.float32(args.lam)
    jitted = {
        method: jax.jit(lambda r, v, m, g, l, method=method: gae_advantages(
            r, v, m, gamma=g, lam=l, method=method).advantages)
        for method in ("associative_scan", "scan")
    }

    def jax_runner(fn):
        return lambda: fn(*device_args, gamma, lam).block_until_ready()

    fns = {method: jax_runner(fn) for method, fn in jitted.items()}
    fns["numpy_loop"] = lambda: numpy_gae(rewards, values, mask, args.gamma, args.lam)
    times = interleaved_timings(fns, args.repeats)
    outputs = {name: np.asarray(fn()) for name, fn in fns.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}

    reference = outputs["numpy_loop"]
    scale = float(np.max(np.abs(reference)))

    report = {
        "benchmark": "gae",
        "description": "r1jax.algos.gae_advantages: associative_scan vs reverse lax.scan vs a "
                       "NumPy loop over time (vectorised over the batch); jitted, gamma/lambda "
                       "traced; one warm-up each, then interleaved rounds; median and min; block_until_ready.",
        "machine": describe_machine(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "config": {"batch": args.batch, "length": args.length, "repeats": args.repeats,
                   "gamma": args.gamma, "lam": args.lam, "dtype": "float32",
                   "mask": "ragged right padding, lengths uniform in [T/2, T]"},
        "median_seconds": median,
        "min_seconds": best,
        "all_seconds": times,
        "ratios_vs_associative_scan": {k: v / median["associative_scan"] for k, v in median.items()},
        "ratios_vs_associative_scan_of_min": {k: v / best["associative_scan"] for k, v in best.items()},
        "max_abs_error_vs_numpy_float64": {
            k: float(np.max(np.abs(outputs[k] - reference))) for k in ("associative_scan", "scan")},
        "max_abs_numpy_advantage": scale,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_seconds", "min_seconds",
                                             "ratios_vs_associative_scan",
                                             "max_abs_error_vs_numpy_float64")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
