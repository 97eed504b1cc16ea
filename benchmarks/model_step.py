"""Model-level speed, before vs after a change: forward+backward of a log-prob loss, and generation.

Two source trees of r1jax are compared in ONE process pinned to one core
(``os.sched_setaffinity(0, {0})``, set before JAX starts): ``--before`` (e.g. a pristine checkout
of the base commit, ``git archive BASE | tar -x -C /tmp/r1jax_base``) and ``--after`` (default:
this repository). Each tree's ``r1jax`` and ``r1jax_kernels`` are imported in turn, their
functions kept, and the modules dropped from ``sys.modules`` before the next tree is imported;
both are compiled and warmed up before anything is timed. The timed calls then alternate
before / after (which side goes first alternates too), so load from other processes on a shared
machine hits both alike. Wall time and process CPU time are recorded for every call; medians are
reported with the ratios before / after (> 1: the change is faster).

Workloads, at the shape of ``benchmarks/grpo_step.py`` (a random Qwen2: hidden 256, 4 layers,
4 query / 2 KV heads, intermediate 512, vocab 512, float32 parameters, ``--compute-dtype bfloat16``
for bfloat16 weight matmuls; the same weights for both sides):

* ``grad``: ``jax.value_and_grad`` of the summed per-token log-probs of 64 right-padded rows of
  96 tokens (70 to 96 real tokens per row), under ``jax.jit``; log-probs from
  ``r1jax_kernels.token_logprobs`` as the trainer computes them.
* ``generate``: ``Sampler.generate`` of 8 prompts (8 to 24 tokens) x 8 samples x 64 new tokens at
  temperature 1 (no stop token: every sample is 64 tokens long), one batch of 64 rows.

Also recorded: the two sides' losses and gradient norms, and whether they generated the same
tokens (same seed) with the largest log-prob difference: a change meant to be exact keeps both.

Usage::

    python benchmarks/model_step.py --before /tmp/r1jax_base [--repeats 9 --warmup 2] [--compute-dtype bfloat16]

Writes ``benchmarks/results/model_step.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(architecture="qwen2", vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=4,
             num_heads=4, num_kv_heads=2, max_position_embeddings=512)
ROWS, ROW_LEN, MIN_ROW_LEN = 64, 96, 70
PROMPTS, SAMPLES, NEW_TOKENS = 8, 8, 64
_PACKAGES = ("r1jax", "r1jax_kernels")


def load_tree(root: str) -> types.SimpleNamespace:
    """Imports the model, sampler and log-prob kernel of the r1jax source tree at ``root``.

    The returned functions keep their own module globals; the modules are removed from
    ``sys.modules`` (and ``root`` from ``sys.path``) afterwards so that another tree can be loaded.
    """
    sys.path.insert(0, root)
    try:
        models = importlib.import_module("r1jax.models")
        sampler = importlib.import_module("r1jax.sampling.sampler")
        params_mod = importlib.import_module("r1jax.sampling.params")
        kernels = importlib.import_module("r1jax_kernels")
        for name in ("r1jax.models", "r1jax.sampling.sampler", "r1jax_kernels"):
            where = os.path.dirname(sys.modules[name].__file__)
            if not where.startswith(os.path.abspath(root)):
                raise RuntimeError(f"{name} was imported from {where}, not from {root}")
        return types.SimpleNamespace(
            root=root, ModelConfig=models.ModelConfig, init_params=models.init_params, forward=models.forward,
            lm_head_weight=models.lm_head_weight, token_logprobs=kernels.token_logprobs,
            Sampler=sampler.Sampler, SamplingParams=params_mod.SamplingParams)
    finally:
        sys.path.remove(root)
        for name in list(sys.modules):
            if name.split(".")[0] in _PACKAGES:
                del sys.modules[name]


def make_side(tree, params, tokens, mask, prompts, compute_dtype=None):
    """The two jitted workloads of one tree, warmed up: ``{"grad": fn, "generate": fn}``."""
    import jax
    import jax.numpy as jnp

    config = tree.ModelConfig(**MODEL, **({"compute_dtype": compute_dtype} if compute_dtype else {}))

    def loss(p):
        hidden = tree.forward(p, config, tokens, attention_mask=mask)
        logp = tree.token_logprobs(hidden[:, :-1], tree.lm_head_weight(p, config), tokens[:, 1:])
        return jnp.sum(jnp.where(mask[:, 1:], logp, 0.0))

    grad_fn = jax.jit(jax.value_and_grad(loss))
    sampler = tree.Sampler(config, max_batch_rows=PROMPTS * SAMPLES)
    sampling = tree.SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, n=SAMPLES, seed=0)

    def grad():
        return jax.block_until_ready(grad_fn(params))

    def generate():
        return sampler.generate(params, prompts, sampling)

    return {"grad": grad, "generate": generate}


def cpu_model() -> str:
    """The CPU's model name and its widest vector extension, from /proc/cpuinfo (Linux)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "none")
    return f"{name} ({widest})"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="source tree of the baseline (holding r1jax/ and r1jax_kernels/)")
    ap.add_argument("--after", default=ROOT, help="source tree of the change (default: this repository)")
    ap.add_argument("--describe", nargs=2, metavar=("BEFORE", "AFTER"), default=("", ""),
                    help="what the two trees are (e.g. their commits), recorded in the JSON")
    ap.add_argument("--compute-dtype", default=None, choices=("bfloat16",),
                    help="the model's compute_dtype on both sides (default: float32 throughout)")
    ap.add_argument("--repeats", type=int, default=9, help="timed calls per side and workload (>= 7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side and workload (compilation)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "model_step.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        ap.error("--repeats and --warmup must be >= 1")
    os.sched_setaffinity(0, {0})  # before JAX starts its thread pools: one core, really
    import jax
    import numpy as np

    sys.path.insert(0, ROOT)
    from benchmarks._machine import describe_machine

    sides = {"before": load_tree(os.path.abspath(args.before)), "after": load_tree(os.path.abspath(args.after))}
    rng = np.random.default_rng(0)
    lengths = rng.integers(MIN_ROW_LEN, ROW_LEN + 1, ROWS)
    tokens = jax.numpy.asarray(rng.integers(0, MODEL["vocab_size"], (ROWS, ROW_LEN)), jax.numpy.int32)
    mask = jax.numpy.asarray(np.arange(ROW_LEN)[None] < lengths[:, None])
    prompts = [rng.integers(0, MODEL["vocab_size"], n).astype(np.int32) for n in rng.integers(8, 25, PROMPTS)]
    params = sides["after"].init_params(sides["after"].ModelConfig(**MODEL), jax.random.key(0))

    fns, first = {}, {}
    for name, tree in sides.items():
        fns[name] = make_side(tree, params, tokens, mask, prompts, args.compute_dtype)
        for work, fn in fns[name].items():
            for _ in range(args.warmup):
                first[name, work] = fn()

    seconds = {(s, w, k): [] for s in sides for w in ("grad", "generate") for k in ("wall", "cpu")}
    for r in range(args.repeats):
        for work in ("grad", "generate"):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                _, wall, cpu = timed(fns[side][work])
                seconds[side, work, "wall"].append(wall)
                seconds[side, work, "cpu"].append(cpu)

    med = {key: statistics.median(v) for key, v in seconds.items()}
    (loss_b, grad_b), (loss_a, grad_a) = first["before", "grad"], first["after", "grad"]
    gen_b = [s for group in first["before", "generate"] for s in group]
    gen_a = [s for group in first["after", "generate"] for s in group]
    same = [np.array_equal(b.token_ids, a.token_ids) for b, a in zip(gen_b, gen_a)]
    lp_diff = max((float(np.max(np.abs(b.logprobs - a.logprobs))) for b, a, s in zip(gen_b, gen_a, same) if s),
                  default=None)
    gnorm = lambda g: float(jax.numpy.sqrt(sum(jax.numpy.sum(x * x) for x in jax.tree.leaves(g))))  # noqa: E731
    grad_diff = max(float(jax.numpy.max(jax.numpy.abs(b - a))) for b, a in
                    zip(jax.tree.leaves(grad_b), jax.tree.leaves(grad_a)))
    result = {
        "benchmark": "model_step",
        "what": "median seconds per call, before vs after, one process pinned to one core, calls interleaved",
        "command": "python benchmarks/model_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**describe_machine(), "cpu_model": cpu_model()},
        "load_average_at_end": os.getloadavg(),
        "model": {**MODEL, "compute_dtype": args.compute_dtype},
        "workloads": {
            "grad": f"value_and_grad of summed token log-probs, {ROWS} rows x {ROW_LEN} tokens "
                    f"({MIN_ROW_LEN}-{ROW_LEN} real), compute {args.compute_dtype or 'float32'}",
            "generate": f"Sampler.generate: {PROMPTS} prompts x {SAMPLES} samples x {NEW_TOKENS} new tokens, "
                        "temperature 1, one batch",
        },
        "trees": {"before": {"path": sides["before"].root, "what": args.describe[0]},
                  "after": {"path": sides["after"].root, "what": args.describe[1]}},
        "repeats": args.repeats, "warmup": args.warmup,
        "median_seconds": {f"{s}/{w}/{k}": v for (s, w, k), v in med.items()},
        "ratio_before_over_after": {f"{w}/{k}": med["before", w, k] / med["after", w, k]
                                    for w in ("grad", "generate") for k in ("wall", "cpu")},
        "seconds": {f"{s}/{w}/{k}": v for (s, w, k), v in seconds.items()},
        "agreement": {
            "loss": {"before": float(loss_b), "after": float(loss_a)},
            "grad_norm": {"before": gnorm(grad_b), "after": gnorm(grad_a)},
            "grad_max_abs_diff": grad_diff,
            "generated_rows_identical": f"{sum(same)}/{len(same)}",
            "logprob_max_abs_diff_on_identical_rows": lp_diff,
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratio_before_over_after", "agreement")}, indent=1))
    return result


if __name__ == "__main__":
    main()
