"""One lent NVIDIA H100 / H200, at most 8 minutes: MFU of a GRPO update, and the log-prob kernels.

One command, from the repository root::

    python benchmarks/gpu.py        # writes benchmarks/results/gpu_<device-kind>.json

1. **MFU of a GRPO update step** of a random Qwen2.5-0.5B-shaped model in bfloat16 (hidden 896,
   24 layers, 14 query / 2 KV heads, head_dim 64, intermediate 4864, vocab 151,936, tied
   embeddings, q/k/v biases, rope_theta 1e6): the library's own update,
   :func:`r1jax.train.steps.make_rl_update` with GRPO defaults and β = 0.001 (so the reference
   forward runs), AdamW from :func:`r1jax.train.state.make_optimizer`, on a synthetic
   :class:`~r1jax.train.steps.Rollout` of 16 prompts × 8 samples × 1024 tokens (256 prompt +
   768 completion, no padding). The 128 rows are one mini-batch of 8 micro-batches (16 rows
   each, gradients accumulated exactly); no rematerialisation unless XLA's memory analysis says
   the step would not fit (then ``remat: full``, recorded). Log-probs: the ``chunked`` backend
   (``--logprob-backend`` to change). The median of several steps after two warm-up steps is
   timed (``block_until_ready``). FLOPs per update, three ways:

   * ``analytical``: 2 × matmul parameters × tokens per forward (the layers over all B × T
     positions, the tied LM head over the B × (T-1) targets) plus attention 4 × B × H × T² × Dh
     per layer (the full T × T scores: the model computes them, then masks), times 4 forward
     equivalents (reference forward + policy forward + backward = 2 forwards).
   * ``xla_hlo_dots``: the matmul FLOPs of the optimised HLO XLA runs (:func:`hlo_dot_flops`:
     every ``dot``, and cuBLAS gemm custom-calls, with each while-loop body counted
     ``known_trip_count`` times); it includes rematerialised and recomputed matmuls.
   * ``xla_cost_analysis``: ``compiled.cost_analysis()["flops"]`` as XLA returns it. On the CPU of
     the development machine (jaxlib 0.10.2) it counts each while-loop body ONCE (a scan over 10
     layers reports the FLOPs of one), and the update is scans over layers, micro-batches and
     vocabulary chunks, so it is recorded but not used for MFU.

   MFU = FLOPs / median step time / the device's dense bfloat16 peak (:data:`PEAK_BF16_DENSE`,
   keyed by ``jax.devices()[0].device_kind``); on an unknown device MFU is null with the reason.
   The analytical count is the MFU (model FLOPs); ``xla_hlo_dots`` gives the hardware-FLOPs
   utilisation next to it.

0. **The measured bf16 matmul rate**: ``--peak-n``³ products of random bfloat16 matrices (scaled so
   a chain of them stays finite), :data:`PEAK_CHAIN` of them chained in one compiled call so
   dispatch is amortised, the median of several calls over two rotating input sets. Part 1's MFU
   is also given against this (``mfu_vs_measured_matmul``): the data-sheet peak is a lead, the
   measured one the ceiling this card reached in the same run.

2. **Chunked vs Pallas log-prob kernels** at seq 8192 × vocab 151,936 × hidden 896 (the hidden
   size of part 1's model) in bfloat16, forward and forward + backward: median time, XLA's
   temporary bytes and the device's ``peak_bytes_in_use``, each (backend, pass) in a fresh
   subprocess, measured by ``benchmarks/kernels_gpu.py``'s :func:`measure_one` (reused, not
   copied); ``kernels_gpu.py`` itself also checks correctness and compares the reference.

Every measurement runs in its own subprocess, so each starts with the whole GPU and its peak
memory is its own; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set (unless already set) so the
driver process holds no memory pool meanwhile. Time budget (``--budget-s``, default 480 s): part
1 stops timing steps at 60 % of it; a kernel case starts only with at least ``KERNEL_CASE_S``
left; whatever is skipped is recorded under ``budget.skipped``.

Run on an H200 (session 17; ``results/gpu_h200*.json``, README "GPU"): with the default
``--attention-impls xla,cudnn`` part 1 runs twice, once per ``model.attention_impl``; ``--trace``
adds the device time by kernel, ``--dump-dir`` keeps the HLO and raw trace. Without a GPU the
script says so and exits with status 2; ``--cpu-smoke`` runs the same code paths at toy sizes on
CPU (Pallas in interpret mode) and writes no results file unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/gpu.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from benchmarks import kernels_gpu
from benchmarks._machine import describe_machine

BUDGET_S = 480.0
PART1_SHARE = 0.6          # part 1 stops timing steps at this fraction of the budget
PEAK_N, PEAK_CHAIN, PEAK_CALLS = 8192, 20, 10
KERNEL_CASE_S = 40.0       # least time left to start one kernel case (GPU); the smoke needs far less
QWEN25_05B = dict(architecture="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                  num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, max_position_embeddings=32768)
SMOKE_MODEL = dict(architecture="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6,
                   tie_word_embeddings=True, max_position_embeddings=128)
ROLLOUT = dict(prompts=16, samples=8, seq=1024, prompt_len=256, microbatches=8)
SMOKE_ROLLOUT = dict(prompts=2, samples=4, seq=64, prompt_len=16, microbatches=2)
KERNEL_SHAPE = dict(tokens=8192, vocab=151_936, hidden=896)
KERNEL_BACKENDS = ("chunked", "pallas")
KERNEL_MODES = ("forward", "forward+backward")

PEAK_BF16_DENSE = {"H100 SXM": 989.4e12, "H200": 989.4e12, "H100 PCIe": 756e12}
"""Dense (no sparsity) bfloat16 tensor-core peak FLOP/s from NVIDIA's data sheets."""


def peak_flops(device_kind: str) -> tuple[float | None, str]:
    """The dense bf16 peak of ``device_kind`` and the table entry used, or ``(None, reason)``.

    ``"NVIDIA H100 80GB HBM3"`` is the SXM part; NVL and GH200 parts are not in the table.
    """
    kind = device_kind.upper()
    entry = None
    if "NVL" not in kind and "GH200" not in kind:
        if "H100" in kind:
            entry = "H100 PCIe" if "PCIE" in kind else "H100 SXM"
        elif "H200" in kind:
            entry = "H200"
    if entry is None:
        return None, (f"no dense bf16 peak known for device kind {device_kind!r} "
                      f"(table: {', '.join(PEAK_BF16_DENSE)})")
    return PEAK_BF16_DENSE[entry], entry


# ------------------------------------------------------------------------------------------------
# FLOPs.


def analytical_flops(model, batch: int, seq: int) -> dict:
    """Model FLOPs of one GRPO update over ``batch`` rows of ``seq`` tokens (no recomputation).

    Args:
      model: the :class:`r1jax.models.ModelConfig`.
      batch, seq: rows and tokens per row of the rollout.

    Returns:
      ``forward`` (one forward: ``dense`` matmuls + ``attention``) and ``update`` (4 forwards:
      reference forward + policy forward + backward).
    """
    d, f, v = model.hidden_size, model.intermediate_size, model.vocab_size
    h, k, dh, layers = model.num_heads, model.num_kv_heads, model.resolved_head_dim, model.num_layers
    layer_matmul = d * dh * (h + 2 * k) + h * dh * d + 3 * d * f
    dense = 2 * batch * seq * layers * layer_matmul + 2 * batch * (seq - 1) * d * v
    attention = 4 * batch * layers * h * seq * seq * dh
    forward = dense + attention
    return {"forward": {"dense": dense, "attention": attention, "total": forward},
            "forward_equivalents": 4, "update": 4 * forward,
            "matmul_params": layers * layer_matmul + d * v}


_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"[a-z]\w*\[([\d,]*)\]")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_CALL_LISTS = re.compile(r"\b(?:calls|called_computations|branch_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _dims(shape: str) -> list[int] | None:
    m = _ARRAY.search(shape)
    return None if m is None else [int(x) for x in m.group(1).split(",") if x]


def hlo_dot_flops(hlo_text: str) -> dict:
    """Matmul FLOPs of an optimised HLO module (``compiled.as_text()``), loops counted in full.

    Each ``dot`` contributes 2 × (result elements) × (contracted elements); so does a cuBLAS
    gemm custom-call (its ``dot_dimension_numbers`` read from the backend config). A computation
    costs its own matmuls plus those of the computations it calls (fusions, calls, conditional
    branches — each branch counted once, an upper bound —, async ops at their start); a while body
    costs ``known_trip_count`` times its FLOPs, or once when XLA gives no trip count (counted in
    ``unknown_trip_count_loops``).

    Returns:
      ``flops``, ``dots`` (matmul instructions found), ``while_loops`` (trip counts found) and
      ``unknown_trip_count_loops``.
    """
    comps: dict[str, list[tuple[str, str, str, str]]] = {}
    shapes: dict[str, str] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith((" ", "\t")) and "=" not in line.split("(")[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            name, shape, opcode, rest = m.groups()
            shapes[name] = shape
            comps[current].append((name, shape, opcode, rest))
    if entry is None:
        raise ValueError("hlo_dot_flops: no ENTRY computation in the HLO text")
    stats = {"dots": 0, "while_loops": [], "unknown_trip_count_loops": 0}
    memo: dict[str, float] = {}

    def own(shape, opcode, rest) -> float:
        if opcode == "dot":
            operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            lhs = _dims(shapes.get(operands[0], "")) if operands else None
            cdims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        elif opcode == "custom-call" and re.search(r'custom_call_target="[^"]*(gemm|matmul)', rest):
            operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            lhs = _dims(shapes.get(operands[0], "")) if operands else None
            cdims = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', rest)
        else:
            return 0.0
        out = _dims(shape)
        if lhs is None or out is None or cdims is None:
            return 0.0
        stats["dots"] += 1
        contracted = [int(x.strip().strip('"')) for x in cdims.group(1).split(",") if x.strip()]
        return 2.0 * math.prod(out) * math.prod(lhs[c] for c in contracted)

    def cost(comp: str) -> float:
        if comp not in memo:
            memo[comp] = 0.0  # no recursion in HLO; guards a malformed text
            total = 0.0
            for _, shape, opcode, rest in comps.get(comp, []):
                total += own(shape, opcode, rest)
                if opcode.endswith(("-done", "-update")):  # the async-start already counted its computation
                    continue
                callees = [c for _, c in _CALLS.findall(rest)]
                for group in _CALL_LISTS.findall(rest):
                    callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
                trips = 1
                if opcode == "while":
                    trip = _TRIP.search(rest)
                    if trip:
                        trips = int(trip.group(1))
                        stats["while_loops"].append(trips)
                    else:
                        stats["unknown_trip_count_loops"] += 1
                for callee in callees:
                    body = opcode == "while" and re.search(rf"\bbody=%?{re.escape(callee)}\b", rest)
                    total += (trips if body else 1) * cost(callee)
            memo[comp] = total
        return memo[comp]

    return {"flops": cost(entry), **stats}


# ------------------------------------------------------------------------------------------------
# Part 0: the measured matmul ceiling.


def matmul_peak(n: int, chain: int, calls: int) -> dict:
    """bf16 FLOP/s of ``chain`` chained n × n × n products per compiled call; median of ``calls`` calls.

    The inputs are random (zeros run faster on some GPUs) and the right factor is scaled by
    1/sqrt(n), so the chain's values keep unit scale; two input sets alternate between calls.
    """
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 4)
    xs = [jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys[:2]]
    ws = [(jax.random.normal(k, (n, n), jnp.float32) / math.sqrt(n)).astype(jnp.bfloat16) for k in keys[2:]]
    run = jax.jit(lambda x, w: jax.lax.fori_loop(0, chain, lambda _, y: y @ w, x))
    for i in range(3):
        jax.block_until_ready(run(xs[i % 2], ws[i % 2]))
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        y = jax.block_until_ready(run(xs[i % 2], ws[i % 2]))
        times.append(time.perf_counter() - t0)
    finite = bool(jnp.isfinite(y.astype(jnp.float32)).all())
    median = statistics.median(times)
    flops = 2.0 * n ** 3 * chain
    return {"n": n, "dtype": "bfloat16", "chain": chain, "call_times_s": [round(t, 6) for t in times],
            "median_call_s": median, "flops_per_call": flops, "flops_per_s": flops / median,
            "output_finite": finite}


# ------------------------------------------------------------------------------------------------
# Part 1: the GRPO update.


def synthetic_rollout(prompts: int, samples: int, seq: int, prompt_len: int, vocab: int, seed: int = 0):
    """A :class:`~r1jax.train.steps.Rollout` of full rows: ``prompt_len`` prompt + completion to ``seq``."""
    import jax.numpy as jnp

    from r1jax.train.steps import Rollout

    rng = np.random.default_rng(seed)
    rows = prompts * samples
    targets = np.arange(1, seq)
    loss_mask = np.broadcast_to(targets >= prompt_len, (rows, seq - 1))
    return Rollout(
        tokens=jnp.asarray(rng.integers(0, vocab, (rows, seq)), jnp.int32),
        attention_mask=jnp.ones((rows, seq), bool),
        loss_mask=jnp.asarray(loss_mask),
        sampler_logp=jnp.asarray(np.where(loss_mask, -rng.exponential(1.0, (rows, seq - 1)), 0.0), jnp.float32),
        rewards=jnp.asarray(rng.integers(0, 2, (prompts, samples)), jnp.float32),
        lengths=jnp.full((prompts, samples), seq - prompt_len, jnp.float32))


def _memory_limit() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def grpo_update_mfu(model_kw: dict, roll: dict, *, logprob_backend: str, remat: str, interpret: bool,
                    warmup: int, steps: int, deadline: float, trace: bool = False, attention_impl: str = "xla",
                    dump_dir: str | None = None) -> dict:
    """Compiles and times ``make_rl_update``'s GRPO update; FLOPs three ways, MFU against the peak.

    Timing stops early (recorded) once another step would end after ``deadline`` (``time.monotonic``).
    With ``trace``, one more step runs under the JAX profiler and its device time by kernel is
    recorded under ``trace`` (:func:`trace_summary`). ``attention_impl`` is the model's
    (``xla`` or ``cudnn``); with ``dump_dir`` the optimised HLO (and the raw trace) are written there.
    """
    from r1jax.models import ModelConfig, init_params
    from r1jax.train.config import AlgoConfig, KernelConfig, OptimConfig, microbatch_token_budget
    from r1jax.train.state import Hyper, init_state, make_optimizer
    from r1jax.train.steps import make_rl_update

    algo = AlgoConfig(kl_coef=0.001, num_microbatches=roll["microbatches"])  # GRPO defaults otherwise
    kernels = KernelConfig(logprob_backend=logprob_backend, interpret=interpret and logprob_backend == "pallas")
    tx = make_optimizer(OptimConfig())
    rollout = synthetic_rollout(roll["prompts"], roll["samples"], roll["seq"], roll["prompt_len"],
                                model_kw["vocab_size"])
    rows = roll["prompts"] * roll["samples"]
    # Layers scanned: one compiled layer for 24 (XLA:CPU's unrolled default is for small models).
    model = ModelConfig(param_dtype="bfloat16", remat=remat, scan_layers=True, attention_impl=attention_impl,
                        **model_kw)
    state = init_state(init_params(model, jax.random.key(0)), tx, jax.random.key(1), reference=True)
    hp = Hyper.from_config(algo)
    limit = _memory_limit()
    out: dict = {"model": dict(model_kw, param_dtype="bfloat16", num_params=model.num_params()),
                 "rollout": dict(roll, rows=rows, tokens=rows * roll["seq"],
                                 completion_tokens=rows * (roll["seq"] - roll["prompt_len"])),
                 "algo": {"name": algo.name, "advantage": algo.advantage, "policy_loss": algo.policy_loss,
                          "kl_coef": algo.kl_coef, "uses_reference": algo.uses_reference,
                          "num_minibatches": algo.num_minibatches, "num_microbatches": algo.num_microbatches,
                          "loss_agg": algo.loss_agg,
                          "microbatch_token_budget": microbatch_token_budget(algo.microbatch_tokens,
                                                                             jax.default_backend())},
                 "optimizer": "adamw (OptimConfig defaults: lr 1e-5, grad clip 1.0)",
                 "logprob_backend": logprob_backend, "attention_impl": attention_impl, "scan_layers": True, "remat_requested": remat, "device_bytes_limit": limit}
    for attempt in (remat, "full"):
        model = ModelConfig(param_dtype="bfloat16", remat=attempt, scan_layers=True, attention_impl=attention_impl,
                            **model_kw)
        update = make_rl_update(model, algo, kernels, tx, max_new_tokens=roll["seq"] - roll["prompt_len"])
        t0 = time.perf_counter()
        compiled = update.lower(state, rollout, hp).compile()
        out["compile_s"] = round(time.perf_counter() - t0, 3)
        mem = compiled.memory_analysis()
        need = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes)
        out["remat"], out["compiled_bytes"] = attempt, {
            "temp": int(mem.temp_size_in_bytes), "argument": int(mem.argument_size_in_bytes),
            "output": int(mem.output_size_in_bytes), "alias": int(mem.alias_size_in_bytes)}
        if limit is None or need <= 0.9 * limit or attempt == "full":
            break
        out["remat_fallback"] = (f"remat {attempt!r}: XLA needs {need / 2**30:.1f} GiB > 90% of the device's "
                                 f"{limit / 2**30:.1f} GiB; recompiled with remat 'full'")
    metrics = None
    t0 = time.perf_counter()
    for _ in range(warmup):
        state, metrics = compiled(state, rollout, hp)
        jax.block_until_ready((state, metrics))
    out["warmup_s"] = round(time.perf_counter() - t0, 3)
    times: list[float] = []
    for _ in range(steps):
        if times and time.monotonic() + 1.2 * max(times) > deadline:
            out["steps_cut_by_budget"] = f"{len(times)} of {steps} steps timed: the time budget would be exceeded"
            break
        t0 = time.perf_counter()
        state, metrics = compiled(state, rollout, hp)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    out.update(step_times_s=[round(t, 5) for t in times], median_step_s=median,
               tokens_per_s=rows * roll["seq"] / median,
               last_metrics={k: float(metrics[k]) for k in ("loss", "kl_ref", "grad_norm", "skipped")})
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        with open(os.path.join(dump_dir, f"update_{attention_impl}.hlo.txt"), "w") as fh:
            fh.write(compiled.as_text())
    if trace:
        out["trace"] = _traced_step(compiled, state, rollout, hp,
                                    keep=None if not dump_dir else os.path.join(dump_dir, f"trace_{attention_impl}.json.gz"))
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = {"analytical": analytical_flops(model, rows, roll["seq"]),
             "xla_hlo_dots": hlo_dot_flops(compiled.as_text()),
             "xla_cost_analysis": None if not cost or "flops" not in cost else float(cost["flops"]),
             "xla_cost_analysis_note": "XLA's compiled.cost_analysis()['flops'] as returned; it may count each "
                                       "while-loop body once (measured so on CPU, jaxlib 0.10.2); not used for MFU"}
    per_step = {"analytical": float(flops["analytical"]["update"]), "xla_hlo_dots": flops["xla_hlo_dots"]["flops"]}
    flops["xla_hlo_dots_over_analytical"] = per_step["xla_hlo_dots"] / per_step["analytical"]
    out["flops"] = flops
    out["achieved_flops_per_s"] = {k: v / median for k, v in per_step.items()}
    kind = jax.devices()[0].device_kind
    peak, entry = peak_flops(kind) if jax.default_backend() == "gpu" else (
        None, f"not a GPU: the {jax.default_backend()} backend ({kind!r}) has no bf16 tensor-core peak here")
    out["peak_flops_per_s"], out["peak_entry" if peak else "mfu_null_reason"] = peak, entry
    out["mfu"] = None if peak is None else per_step["analytical"] / median / peak
    out["hfu_xla_hlo_dots"] = None if peak is None else per_step["xla_hlo_dots"] / median / peak
    return out


_MATMUL_KERNEL = re.compile(r"gemm|cublas|cutlass|xmma|wgmma|matmul|dot", re.IGNORECASE)


def trace_summary(trace_json_gz: str, top: int = 25) -> dict:
    """Device time by kernel from a ``jax.profiler`` Chrome-format trace (``*.trace.json.gz``).

    Sums the complete events ("X") of every process named ``/device:...`` (one per GPU), by
    kernel name; a kernel counts as a matmul when its name matches :data:`_MATMUL_KERNEL`.

    Returns:
      ``device_busy_s`` (the sum of kernel durations: overlapping streams count twice),
      ``matmul_s``, ``kernels`` (distinct names), ``launches`` and ``top`` (name, seconds,
      launches), or ``{"error": ...}`` when the trace has no device events (on a CPU backend).
    """
    import gzip

    with gzip.open(trace_json_gz, "rt") as fh:
        trace = json.load(fh)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and str(e.get("args", {}).get("name", "")).startswith("/device:")}
    by_name: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in devices:
            by_name.setdefault(e["name"], []).append(float(e.get("dur", 0.0)) * 1e-6)
    if not by_name:
        return {"error": "no device events in the trace (a CPU backend traces host threads only)"}
    totals = sorted(((n, sum(d), len(d)) for n, d in by_name.items()), key=lambda t: -t[1])
    return {"device_busy_s": sum(t for _, t, _ in totals),
            "matmul_s": sum(t for n, t, _ in totals if _MATMUL_KERNEL.search(n)),
            "kernels": len(totals), "launches": sum(c for _, _, c in totals),
            "top": [{"name": n[:160], "s": round(t, 6), "launches": c} for n, t, c in totals[:top]]}


def _traced_step(compiled, state, rollout, hp, keep: str | None = None) -> dict:
    """One more update step under ``jax.profiler.trace``, summarised by :func:`trace_summary`
    (the raw trace copied to ``keep`` if given)."""
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            jax.block_until_ready(compiled(state, rollout, hp))
        wall = time.perf_counter() - t0
        found = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        if found and keep:
            shutil.copyfile(found[0], keep)
        out = trace_summary(found[0]) if found else {"error": f"no *.trace.json.gz under the trace dir: "
                                                              f"{glob.glob(os.path.join(tmp, '**'), recursive=True)}"}
    return {"traced_step_wall_s": wall, **out}


# ------------------------------------------------------------------------------------------------
# Part 2: the log-prob kernels (kernels_gpu's measurement, one subprocess per case).


def logprob_kernels(shape: dict, *, interpret: bool, repeats: int, deadline: float, case_s: float,
                    skipped: list) -> dict:
    """Chunked vs Pallas, forward and forward + backward, through ``kernels_gpu.measure_in_subprocess``."""
    out: dict = {"shape": dict(shape, dtype="bfloat16"),
                 "hidden_note": f"hidden {shape['hidden']}: that of part 1's model", "runs": []}
    for mode in KERNEL_MODES:
        for backend in KERNEL_BACKENDS:
            left = deadline - time.monotonic()
            if left < case_s:
                skipped.append(f"kernels {backend} {mode}: {left:.0f} s left < {case_s:.0f} s per case")
                continue
            r = kernels_gpu.measure_in_subprocess(backend, mode, shape, interpret, repeats, timeout=left - 5)
            out["runs"].append(r)
            print(f"  {mode:17} {backend:8} " + (
                f"{r['median_s'] * 1e3:9.2f} ms  temp {r['temp_bytes'] / 2**30:7.3f} GiB  "
                f"peak {(r['peak_bytes_in_use'] or 0) / 2**30:7.3f} GiB" if "error" not in r
                else "ERROR " + _error_line(r["error"])), flush=True)
        got = {r["backend"]: r for r in out["runs"] if r["mode"] == mode and "error" not in r}
        if {"chunked", "pallas"} <= set(got):
            c, p = got["chunked"], got["pallas"]
            out.setdefault("pallas_over_chunked", {})[mode] = {
                "time": p["median_s"] / c["median_s"],
                "temp_bytes": p["temp_bytes"] / max(c["temp_bytes"], 1),
                "peak_bytes_in_use": (p["peak_bytes_in_use"] / c["peak_bytes_in_use"]
                                      if p["peak_bytes_in_use"] and c["peak_bytes_in_use"] else None)}
    return out


# ------------------------------------------------------------------------------------------------
# Driver.


_CHILDREN = {"peak": matmul_peak, "update": grpo_update_mfu}


def _in_subprocess(part: str, spec: dict, smoke: bool, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps({"part": part, "spec": spec})] + (
        ["--cpu-smoke"] if smoke else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (the time budget)"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/gpu_<device-kind>.json; "
                                               "none with --cpu-smoke)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-clock budget of the whole script")
    p.add_argument("--steps", type=int, default=5, help="timed update steps (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per kernel case")
    p.add_argument("--logprob-backend", default="chunked", choices=("chunked", "pallas", "reference", "auto"),
                   help="the update's log-prob backend")
    p.add_argument("--remat", default="none", choices=("none", "dots", "full"),
                   help="the model's remat policy (falls back to full if XLA says the step does not fit)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="toy sizes on CPU, Pallas in interpret mode (checks this script)")
    p.add_argument("--trace", action="store_true",
                   help="profile one extra update step: device time by kernel in the JSON (grpo_update.trace)")
    p.add_argument("--attention-impls", default=None,
                   help="comma-separated model.attention_impl values: part 1 runs once per value, the first "
                        "as grpo_update, the others under grpo_update_variants; default xla,cudnn (xla with "
                        "--cpu-smoke: no cuDNN on CPU)")
    p.add_argument("--dump-dir", default=None, help="write each part-1 variant's optimised HLO (and, with "
                                                    "--trace, its raw trace) here")
    p.add_argument("--skip-kernels", action="store_true", help="skip part 2 (recorded under budget.skipped)")
    p.add_argument("--peak-n", type=int, default=PEAK_N, help="matrix size of part 0's bf16 matmul rate")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = bool(args.cpu_smoke)
    # Read when JAX creates its GPU client (the first jax.devices()); the children inherit it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    if args._child:  # child process of _in_subprocess
        child = json.loads(args._child)
        print(json.dumps(_CHILDREN[child["part"]](**child["spec"])))
        return 0

    start = time.monotonic()
    deadline = start + args.budget_s
    if not smoke and jax.default_backend() != "gpu":
        print(f"gpu: needs an NVIDIA GPU (H100 / H200); the JAX backend here is {jax.default_backend()!r} "
              f"({jax.devices()[0].device_kind}). Nothing was measured. (--cpu-smoke runs the script at toy "
              "sizes on CPU.)", file=sys.stderr)
        return 2
    kind = jax.devices()[0].device_kind
    skipped: list[str] = []
    machine = describe_machine()
    result = {"benchmark": "gpu", "device_kind": kind, "jax": machine["jax"], "jaxlib": machine["jaxlib"],
              "machine": machine, "cpu_smoke": smoke,
              "command": " ".join([os.path.basename(sys.executable), "benchmarks/gpu.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "env": {"XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}}

    print("0. measured bf16 matmul rate:", flush=True)
    n = 256 if smoke else args.peak_n
    peak = _in_subprocess("peak", dict(n=n, chain=2 if smoke else PEAK_CHAIN, calls=3 if smoke else PEAK_CALLS),
                          smoke, timeout=min(120.0, deadline - time.monotonic() - 10))
    result["matmul_peak"] = peak
    print("  ERROR " + _error_line(peak["error"]) if "error" in peak else
          f"  {n}^3 x {peak['chain']}: {peak['flops_per_s'] / 1e12:.1f} TFLOP/s (median of "
          f"{len(peak['call_times_s'])} calls)", flush=True)

    # time.monotonic is system-wide on Linux; without part 2, part 1 has the whole budget
    part1_end = start + (1.0 if args.skip_kernels else PART1_SHARE) * args.budget_s
    impls = (args.attention_impls or ("xla" if smoke else "xla,cudnn")).split(",")
    for i, impl in enumerate(impls):
        print(f"1. GRPO update (make_rl_update), bf16, attention {impl}:", flush=True)
        spec = dict(model_kw=SMOKE_MODEL if smoke else QWEN25_05B, roll=SMOKE_ROLLOUT if smoke else ROLLOUT,
                    logprob_backend=args.logprob_backend, remat=args.remat, interpret=smoke,
                    warmup=1 if smoke else 2, steps=2 if smoke else args.steps, trace=args.trace,
                    attention_impl=impl, dump_dir=args.dump_dir,
                    deadline=time.monotonic() + (part1_end - time.monotonic()) / (len(impls) - i))
        part1 = _in_subprocess("update", spec, smoke, timeout=deadline - time.monotonic() - 10)
        if "error" not in part1 and "error" not in peak:
            part1["mfu_vs_measured_matmul"] = part1["achieved_flops_per_s"]["analytical"] / peak["flops_per_s"]
        if i == 0:
            result["grpo_update"] = part1
        else:
            part1 = dict(part1, attention_impl=impl)
            result.setdefault("grpo_update_variants", []).append(part1)
        _print_update(part1)
    part1_s = round(time.monotonic() - start, 1)

    if args.skip_kernels:
        skipped.append("kernels: --skip-kernels")
        result["logprob_kernels"] = None
    else:
        print("2. log-prob kernels, chunked vs Pallas, bf16:", flush=True)
        result["logprob_kernels"] = logprob_kernels(
            kernels_gpu.SMOKE_BIG if smoke else KERNEL_SHAPE, interpret=smoke, repeats=2 if smoke else args.repeats,
            deadline=deadline, case_s=5.0 if smoke else KERNEL_CASE_S, skipped=skipped)
    result["budget"] = {"budget_s": args.budget_s, "elapsed_s": round(time.monotonic() - start, 1),
                        "part1_share": PART1_SHARE, "part1_elapsed_s": part1_s, "skipped": skipped}
    out = args.out
    if out is None and not smoke:
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           f"gpu_{kernels_gpu.gpu_slug()}.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {out}")
    print(f"done in {result['budget']['elapsed_s']} s" + (f"; skipped: {skipped}" if skipped else ""))
    return 0


def _error_line(text: str) -> str:
    """The last line of a child's stderr that names an error (JAX appends a note after it)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()] or ["?"]
    return next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1])


def _print_update(part1: dict) -> None:
    if "error" in part1:
        print("  ERROR " + _error_line(part1["error"]), flush=True)
    else:
        f = part1["flops"]
        print(f"  median {part1['median_step_s']:.3f} s/step over {len(part1['step_times_s'])} steps "
              f"(compile {part1['compile_s']:.1f} s, remat {part1['remat']}); FLOPs/update: analytical "
              f"{f['analytical']['update']:.3e}, XLA HLO dots {f['xla_hlo_dots']['flops']:.3e} "
              f"({f['xla_hlo_dots_over_analytical']:.2f}x), XLA cost_analysis {f['xla_cost_analysis']}; "
              f"MFU {part1['mfu'] if part1['mfu'] is None else round(part1['mfu'], 4)}"
              + (f" ({part1['mfu_null_reason']})" if part1["mfu"] is None else "")
              + (f"; {part1['mfu_vs_measured_matmul']:.3f} of the measured matmul rate"
                 if "mfu_vs_measured_matmul" in part1 else ""), flush=True)
        tr = part1.get("trace")
        if tr and "error" not in tr:
            print(f"  traced step: {tr['traced_step_wall_s']:.3f} s wall, device busy {tr['device_busy_s']:.3f} s, "
                  f"matmul kernels {tr['matmul_s']:.3f} s, {tr['launches']} launches of {tr['kernels']} kernels",
                  flush=True)
            for k in tr["top"][:15]:
                print(f"    {k['s'] * 1e3:9.2f} ms {k['launches']:6d}x  {k['name'][:100]}", flush=True)
        elif tr:
            print(f"  trace: {tr['error']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
