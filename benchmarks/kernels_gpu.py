"""Log-prob kernels on a GPU: correctness, then time and peak memory of reference / chunked / Pallas.

One command on a Hopper (or any CUDA compute capability >= 8.0) machine::

    python benchmarks/kernels_gpu.py            # writes benchmarks/results/kernels_gpu_<gpu>.json

1. Correctness (stops on failure): at a moderate shape with a ragged vocabulary, the chunked and
   Pallas backends against the reference in values (log-prob, entropy) and gradients (hidden,
   lm_head), float32 and bfloat16; the fused Pallas GRPO terms against ``r1jax.algos`` applied
   to the reference log-probs.
2. Performance at seq 8192 x vocab 151,936 x hidden 2048 in bfloat16, forward only and
   forward + backward (``value_and_grad`` w.r.t. hidden and lm_head): median wall time, XLA's
   compiled temporary bytes, and the device's ``peak_bytes_in_use`` measured in a fresh
   subprocess per (backend, pass) so that peaks do not mix. Ratios against the reference.
   ``--sweep`` also times a few Pallas tile configurations.

Run on an H200 (session 17, ``results/kernels_gpu_h200.json``): every correctness check passed,
and the Pallas kernel was slower than the chunked backend (forward 32.4 vs 12.8 ms, forward +
backward 401.5 vs 40.9 ms; 286 ms at the best swept tiles), so ``auto`` resolves to chunked. On a machine without a CUDA GPU the
script says so and exits with status 2. ``--cpu-smoke`` runs the same code paths at toy sizes
on CPU (Pallas in interpret mode; no results file unless ``--out`` is given) to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/kernels_gpu.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._machine import describe_machine
from r1jax_kernels import grpo_token_terms, pallas_available, token_logprobs
from r1jax_kernels.pallas_logprobs import PallasBlocks

BACKENDS = ("reference", "chunked", "pallas")
BIG = dict(tokens=8192, vocab=151_936, hidden=2048)
SMOKE_BIG = dict(tokens=64, vocab=300, hidden=48)
SWEEP = [PallasBlocks(64, 128, 64, 4, 2), PallasBlocks(64, 128, 64, 8, 3),
         PallasBlocks(128, 128, 64, 8, 3), PallasBlocks(64, 256, 64, 8, 3),
         PallasBlocks(128, 64, 128, 8, 2)]


def _inputs(n, d, v, dtype, seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((n, d)), jnp.float32).astype(dtype)
    w = jnp.asarray(rng.standard_normal((d, v)) / np.sqrt(d), jnp.float32).astype(dtype)
    y = jnp.asarray(rng.integers(0, v, (n,)), jnp.int32)
    return h, w, y


def _kw(backend, interpret, blocks=None):
    if backend != "pallas":
        return dict(backend=backend)
    return dict(backend="pallas", interpret=interpret, pallas_blocks=blocks)


def _fns(backend, interpret, blocks=None):
    kw = _kw(backend, interpret, blocks)

    def fwd(h, w, y):
        return token_logprobs(h, w, y, return_entropy=True, **kw)

    def loss(h, w, y):
        logp, ent = fwd(h, w, y)
        return jnp.mean(logp) + 0.01 * jnp.mean(ent)

    return jax.jit(fwd), jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _max_rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def correctness(interpret: bool, smoke: bool) -> dict:
    """Backends against the reference; raises AssertionError on a mismatch."""
    n, d, v = (40, 24, 77) if smoke else (1000, 512, 32_003)  # ragged tokens and vocabulary
    blocks = PallasBlocks(16, 16, 16) if smoke else None
    report = {"shape": dict(tokens=n, hidden=d, vocab=v), "checks": []}
    for dtype, tol, gtol in ((jnp.float32, 2e-5, 1e-4), (jnp.bfloat16, 2e-3, 3e-2)):
        h, w, y = _inputs(n, d, v, dtype, seed=1)
        ref_fwd, ref_grad = _fns("reference", interpret)
        ref_out, (_, ref_g) = ref_fwd(h, w, y), ref_grad(h, w, y)
        for backend in ("chunked", "pallas"):
            fwd, grad = _fns(backend, interpret, blocks)
            out, (_, g) = fwd(h, w, y), grad(h, w, y)
            errs = {"logp": _max_rel_err(out[0], ref_out[0]),
                    "entropy": _max_rel_err(out[1], ref_out[1]),
                    "d_hidden": _max_rel_err(g[0].astype(jnp.float32), ref_g[0].astype(jnp.float32)),
                    "d_lm_head": _max_rel_err(g[1].astype(jnp.float32), ref_g[1].astype(jnp.float32))}
            ok = (errs["logp"] <= tol and errs["entropy"] <= tol and errs["d_hidden"] <= gtol
                  and errs["d_lm_head"] <= gtol)
            report["checks"].append(dict(backend=backend, dtype=jnp.dtype(dtype).name,
                                         max_rel_err=errs, ok=ok))
            print(f"  {backend:8} {jnp.dtype(dtype).name:8} {errs} {'ok' if ok else 'FAIL'}",
                  flush=True)
    # Fused GRPO terms vs r1jax.algos on the reference log-probs (float32).
    from r1jax.algos.kl import kl_estimate
    from r1jax.algos.losses import clipped_surrogate_loss
    h, w, y = _inputs(n, d, v, jnp.float32, seed=2)
    logp = token_logprobs(h, w, y, backend="reference")
    rng = np.random.default_rng(3)
    old = logp + jnp.asarray(rng.uniform(-0.5, 0.5, (n,)), jnp.float32)
    refp = logp + jnp.asarray(rng.uniform(-0.5, 0.5, (n,)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
    terms = jax.jit(lambda h, w: grpo_token_terms(
        h, w, y, old, refp, adv, eps_low=0.2, eps_high=0.28, **_kw("pallas", interpret, blocks)))(h, w)
    pl_ = clipped_surrogate_loss(logp[None], old[None], adv[None], eps_low=0.2, eps_high=0.28)
    errs = {"policy_loss": _max_rel_err(terms.policy_loss, pl_.loss[0]),
            "ratio": _max_rel_err(terms.ratio, pl_.ratio[0]),
            "k3": _max_rel_err(terms.k3, kl_estimate(logp, refp, kind="k3"))}
    ok = all(e <= 2e-5 for e in errs.values())
    report["checks"].append(dict(backend="pallas-fused-grpo", dtype="float32", max_rel_err=errs,
                                 ok=ok))
    print(f"  fused GRPO terms {errs} {'ok' if ok else 'FAIL'}", flush=True)
    report["all_ok"] = all(c["ok"] for c in report["checks"])
    return report


def measure_one(backend: str, mode: str, shape: dict, interpret: bool, repeats: int,
                blocks: PallasBlocks | None = None) -> dict:
    """Compile, run and time one (backend, pass) in this process; peak device memory included."""
    n, d, v = shape["tokens"], shape["hidden"], shape["vocab"]
    h, w, y = _inputs(n, d, v, jnp.bfloat16)
    fwd, grad = _fns(backend, interpret, blocks)
    f = fwd if mode == "forward" else grad
    t0 = time.perf_counter()
    compiled = f.lower(h, w, y).compile()
    compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    jax.block_until_ready(compiled(h, w, y))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(h, w, y))
        times.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    return {"backend": backend, "mode": mode, "compile_s": round(compile_s, 3),
            "median_s": statistics.median(times), "times_s": [round(t, 5) for t in times],
            "temp_bytes": int(analysis.temp_size_in_bytes),
            "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
            "blocks": None if blocks is None else blocks.__dict__}


def measure_in_subprocess(backend, mode, shape, interpret, repeats, blocks=None, timeout=None) -> dict:
    """:func:`measure_one` in a fresh Python process (its own device memory peak); errors and a
    ``timeout`` (seconds) are returned as ``{"backend", "mode", "error"}``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_one", backend, mode,
           json.dumps(shape), str(repeats), json.dumps(None if blocks is None else blocks.__dict__)]
    if interpret:
        cmd.append("--cpu-smoke")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "mode": mode, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"backend": backend, "mode": mode, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def performance(shape: dict, interpret: bool, repeats: int, sweep: bool) -> dict:
    out = {"shape": dict(shape, dtype="bfloat16"), "runs": []}
    for mode in ("forward", "forward+backward"):
        for backend in BACKENDS:
            r = measure_in_subprocess(backend, mode, shape, interpret, repeats)
            out["runs"].append(r)
            print(f"  {mode:17} {backend:9} " + (
                f"{r['median_s'] * 1e3:9.2f} ms  temp {r['temp_bytes'] / 2**30:7.3f} GiB  "
                f"peak {(r['peak_bytes_in_use'] or 0) / 2**30:7.3f} GiB" if "error" not in r
                else "ERROR " + r["error"].splitlines()[-1]), flush=True)
        ref = next((r for r in out["runs"] if r["mode"] == mode and r["backend"] == "reference"
                    and "error" not in r), None)
        if ref is not None:
            for r in out["runs"]:
                if r["mode"] == mode and "error" not in r:
                    r["time_over_reference"] = r["median_s"] / ref["median_s"]
                    r["temp_over_reference"] = r["temp_bytes"] / max(ref["temp_bytes"], 1)
                    if r["peak_bytes_in_use"] and ref["peak_bytes_in_use"]:
                        r["peak_over_reference"] = r["peak_bytes_in_use"] / ref["peak_bytes_in_use"]
    if sweep:
        out["pallas_sweep"] = []
        for blocks in SWEEP:
            r = measure_in_subprocess("pallas", "forward+backward", shape, interpret, repeats,
                                      blocks)
            out["pallas_sweep"].append(r)
            print(f"  sweep {blocks}: " + (f"{r['median_s'] * 1e3:.2f} ms" if "error" not in r
                                           else "ERROR"), flush=True)
    return out


def gpu_slug() -> str:
    kind = getattr(jax.devices()[0], "device_kind", "gpu")
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "gpu"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON path (default: "
                   "benchmarks/results/kernels_gpu_<gpu>.json; none with --cpu-smoke)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--sweep", action="store_true", help="also time a few Pallas tile configs")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="toy sizes on CPU with Pallas in interpret mode (checks this script)")
    p.add_argument("--_one", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._one:  # child process of measure_in_subprocess
        backend, mode, shape, repeats, blocks = args._one
        blocks = json.loads(blocks)
        r = measure_one(backend, mode, json.loads(shape), args.cpu_smoke, int(repeats),
                        None if blocks is None else PallasBlocks(**blocks))
        print(json.dumps(r))
        return 0

    ok, why = pallas_available()
    if not ok and not args.cpu_smoke:
        print(f"kernels_gpu: needs a CUDA GPU with compute capability >= 8.0 (Hopper: H100/H200); "
              f"{why}. Nothing was measured. (--cpu-smoke runs the script at toy sizes on CPU.)",
              file=sys.stderr)
        return 2
    interpret = bool(args.cpu_smoke)
    result = {"benchmark": "kernels_gpu", "machine": describe_machine(),
              "gpu": None if interpret else jax.devices()[0].device_kind,
              "cpu_smoke": interpret}
    print("correctness:", flush=True)
    result["correctness"] = correctness(interpret, smoke=interpret)
    if not result["correctness"]["all_ok"]:
        print("correctness FAILED: not timing.", file=sys.stderr)
    else:
        print("performance:", flush=True)
        result["performance"] = performance(SMOKE_BIG if interpret else BIG, interpret,
                                            2 if interpret else args.repeats, args.sweep)
    out = args.out
    if out is None and not interpret:
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           f"kernels_gpu_{gpu_slug()}.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {out}")
    return 0 if result["correctness"]["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
