"""Tokens/s of the embedded JAX sampler vs `transformers`' `generate` vs vLLM-CPU: same model, shapes and cores.

One random Qwen2 is built with `transformers` (PyTorch), saved with `save_pretrained` and loaded into
r1jax with `r1jax.models.load_pretrained`; vLLM's offline ``vllm.LLM`` loads the same saved directory
(float32, asked for explicitly: vLLM's ``dtype="auto"`` would run it in bfloat16): all sides run the
same weights. Every row generates exactly ``new_tokens`` tokens (no stop token; vLLM:
``min_tokens = max_tokens``, ``ignore_eos``) with a KV cache; the batch is ``batch`` prompts of
``prompt_len`` tokens (equal lengths: no padding anywhere), each sampled ``samples`` times (JAX:
``SamplingParams(n=samples)``; torch and vLLM: each prompt repeated ``samples`` times, since vLLM
refuses ``n > 1`` with greedy decoding; vLLM's prefix caching is off so it does not skip the repeats'
prefill).

Measured sides (each a callable returning the ``(rows, new_tokens)`` token array):

* ``jax_greedy``, ``jax_top_p_0.9``, ``jax_t1``: r1jax's :class:`~r1jax.sampling.Sampler`;
  ``jax_bf16_greedy``, ``jax_bf16_t1``: the same with ``compute_dtype="bfloat16"`` (bfloat16 weight
  matmuls, float32 accumulation, float32 log-probs); ``jax_bf16kv_greedy``, ``jax_bf16kv_t1``: that
  with a bfloat16 KV cache too (``cache_dtype="bfloat16"``, as vLLM's bfloat16 mode keeps its cache);
* ``torch_greedy``: ``transformers`` ``generate(do_sample=False)``;
* ``vllm_<mode>_greedy``, ``vllm_<mode>_t1``: vLLM (temperature 0, and 1 with vLLM's engine seed),
  one engine per mode: ``eager`` (``enforce_eager=True``), ``compiled`` (vLLM's default on CPU:
  torch.compile with inductor, no CUDA graphs) and ``compiled_bf16`` (that, with ``dtype=bfloat16``:
  the comparison for the bfloat16 JAX sides).

vLLM runs in its own venv (``make vllm-env``; ``--vllm-python``), in a subprocess
(``benchmarks/_vllm_sampler_worker.py``) started outside the repository (cwd in a fresh temporary
directory) and pinned to the same cores; its OpenMP threads are bound to those cores
(``VLLM_CPU_OMP_THREADS_BIND``), its KV cache is 1 GiB, its compile caches are fresh (cold start).
Without that venv, or when vLLM cannot run the shape (its CPU attention has no kernel for
head_dim 16), the vLLM column is recorded as not run, with the reason. The vLLM timings include
sending one command line to the worker and reading its tokens back as one JSON line.

Timing: one clock (:func:`timed`) for everything. Engine start-up (vLLM: process start to ready,
imports included) and warm-up calls (compilation, allocator) are reported separately and excluded;
the measured calls then alternate over the sides, repeat after repeat, so that load from other
processes hits all alike, and the median is reported. Before each measured call the process sleeps
``--settle-s``: vLLM's worker busy-polls its message queue for about a second after each step, and
that must not eat into the next side's time on the shared cores. All sides run on the same
``--threads`` cores (default 1): the process is pinned to them with ``os.sched_setaffinity`` before
JAX starts (XLA's thread flags do not stop its matmul library from using every core; pinning does),
torch gets that many intra-op threads, the vLLM worker pins itself (and so the processes it starts)
to them too (itself, first thing: ``preexec_fn`` would run Python between fork and exec in a
multithreaded JAX process). Note that vLLM's scheduler process shares those cores (vLLM on CPU normally reserves a
core for it), and that the JAX sampler also returns every token's log-prob while the other two
return tokens only.

Also recorded: the useful GFLOP per call (``benchmarks/_flops.py``: one prefill per prompt, each new
token once) and each side's achieved GFLOP/s, next to the matmul peak measured in the same process
(XLA float32 and bfloat16, torch float32); the fraction of greedy tokens on which JAX agrees with
torch and with each vLLM mode (a sanity check: equal up to float rounding on near-ties), and vLLM's
engine settings.

Presets (explicit flags override them):

* ``default``: hidden 256, 4 layers, 4 / 2 heads, intermediate 1024, vocab 512; 16 prompts x 1
  sample, prompt 32, 128 new tokens; also a small 64x2 model (overhead-bound regime; vLLM cannot run
  its head_dim 16).
* ``grpo_step``: the rollout of ``benchmarks/grpo_step.py``: hidden 256, 4 layers, 4 / 2 heads,
  intermediate 512, vocab 512; 8 prompts x 8 samples = 64 rows, prompt 6, 64 new tokens.

Usage::

    python benchmarks/sampler.py [--preset grpo_step] [--repeats 5] [--threads 1] [--vllm-python PATH]

Writes ``benchmarks/results/sampler.json`` (``sampler_<preset>.json`` for another preset; ``--out``
to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._flops import generation_flops, matmul_peak  # noqa: E402
from benchmarks._machine import describe_machine  # noqa: E402

WORKER = os.path.join(ROOT, "benchmarks", "_vllm_sampler_worker.py")
DEFAULT_VLLM_PYTHON = os.path.join(ROOT, ".venv-vllm", "bin", "python")
VLLM_MODES = {"eager": (True, "float32"), "compiled": (False, "float32"),  # mode -> (enforce_eager, dtype)
              "compiled_bf16": (False, "bfloat16")}
VLLM_START_TIMEOUT_S = 1800.0
SEED = 0

PRESETS = {
    "default": dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=None, vocab=512, batch=16, samples=1,
                    prompt_len=32, new_tokens=128, small="64x2"),
    "grpo_step": dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512, vocab=512, batch=8, samples=8,
                      prompt_len=6, new_tokens=64, small=""),
}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, fn())``: the one clock of this benchmark (``time.perf_counter``)."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


class VllmFailed(RuntimeError):
    """The vLLM worker refused the shape, did not start, died or failed a call (the message says why).

    Attributes:
        unsupported: vLLM has no kernel for the model's shape (no engine was started: another mode
            would fail alike).
    """

    def __init__(self, message: str, unsupported: bool = False):
        super().__init__(message)
        self.unsupported = unsupported


class VllmWorker:
    """One ``vllm.LLM`` in a subprocess of vLLM's venv (``benchmarks/_vllm_sampler_worker.py``).

    Args:
        python: the vLLM venv's interpreter.
        model: the saved Hugging Face directory.
        prompts: ``(rows, prompt_len)`` token ids, one vLLM request each.
        new_tokens: tokens generated per row.
        head_dim: the model's head dimension (checked against vLLM's CPU attention kernels).
        enforce_eager: vLLM's ``enforce_eager``.
        dtype: vLLM's ``dtype`` (never ``auto``: that would run a float32 checkpoint in bfloat16).
        cores: CPUs the worker pins itself (and so every process it starts) to, and vLLM's OpenMP binding.

    Raises:
        VllmFailed: the worker refused the shape or vLLM did not start (its log's tail quoted).
    """

    def __init__(self, python: str, model: str, prompts: np.ndarray, new_tokens: int, head_dim: int,
                 enforce_eager: bool, cores: list[int], dtype: str = "float32"):
        self.dir = tempfile.mkdtemp(prefix="r1jax-sampler-vllm-")  # cwd, spec, log, caches: outside the repo
        self.log_path = os.path.join(self.dir, "vllm.log")
        spec = {"model": model, "prompts": prompts.tolist(), "new_tokens": new_tokens, "head_dim": head_dim,
                "enforce_eager": enforce_eager, "dtype": dtype, "max_model_len": prompts.shape[1] + new_tokens,
                "seed": SEED,
                "cores": cores}
        spec_path = os.path.join(self.dir, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the repository's on its path
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
                   VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, cores)),
                   VLLM_CACHE_ROOT=os.path.join(self.dir, "vllm-cache"),
                   TORCHINDUCTOR_CACHE_DIR=os.path.join(self.dir, "inductor-cache"))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([python, WORKER, spec_path], cwd=self.dir, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     start_new_session=True)  # it pins itself: no preexec_fn in a JAX process
        try:
            ready = self._read(VLLM_START_TIMEOUT_S)
        except VllmFailed as e:
            self.close(keep_log=not e.unsupported)
            raise
        self.version: str = ready["vllm"]
        self.engine: dict = ready["engine"]

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def _read(self, timeout_s: float | None = None) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else None
        if not line:
            if line is None:
                why = f"no answer within {timeout_s:.0f} s"
            else:
                try:
                    why = f"exited with status {self.proc.wait(timeout=30)}"
                except subprocess.TimeoutExpired:
                    why = "closed its output"
            raise VllmFailed(f"the vLLM worker {why}; the end of {self.log_path}:\n{self.log_tail()}")
        msg = json.loads(line)
        if msg.get("unsupported"):
            raise VllmFailed(msg["error"], unsupported=True)
        if "error" in msg:
            raise VllmFailed(f"{msg['error']} (log: {self.log_path})")
        return msg

    def generate(self, sampling: str) -> np.ndarray:
        """Tokens ``(rows, new_tokens)`` of one ``generate`` of every row; ``sampling``: greedy | t1."""
        self.proc.stdin.write(sampling + "\n")
        self.proc.stdin.flush()
        return np.asarray(self._read()["tokens"])

    def close(self, keep_log: bool = False) -> None:
        """Stops the worker (``quit``, then its process group); removes its directory unless ``keep_log``."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):  # vLLM's engine processes are in the worker's group
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()
        if not keep_log:
            shutil.rmtree(self.dir, ignore_errors=True)


def vllm_python_or_reason(arg: str | None) -> tuple[str | None, str | None]:
    """``(interpreter, None)`` for the vLLM side, or ``(None, why it is not run)``."""
    if arg == "":
        return None, "not asked for (--vllm-python '')"
    # absolute: the worker starts in a fresh temporary directory, where a relative path is missing
    path = os.path.abspath(arg if arg is not None else DEFAULT_VLLM_PYTHON)
    if not os.access(path, os.X_OK):
        what = "no vLLM environment" if arg is None else "--vllm-python is not an executable"
        return None, f"{what}: {path} is missing (run `make vllm-env`)"
    return path, None


def bench_one(*, hidden, layers, heads, kv_heads, intermediate, vocab, batch, samples, prompt_len, new_tokens,
              repeats, settle_s, cores, vllm_python, vllm_reason, vllm_modes) -> dict:
    """Measures one model shape; returns its JSON record."""
    import jax  # noqa: F401 - already initialised by main, after pinning the process
    import torch
    import transformers

    from r1jax.models import load_pretrained
    from r1jax.sampling import Sampler, SamplingParams

    torch.manual_seed(SEED)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=prompt_len + new_tokens + 64, tie_word_embeddings=False,
        initializer_range=0.1)
    model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    rng = np.random.default_rng(SEED)
    prompts = rng.integers(0, vocab, size=(batch, prompt_len)).astype(np.int64)
    rows_prompts = np.repeat(prompts, samples, axis=0)  # prompt-major, as the JAX sampler's n samples
    R, N = batch * samples, new_tokens

    def check(toks):
        assert toks.shape == (R, N), toks.shape
        return toks

    model_dir = tempfile.mkdtemp(prefix="r1jax-sampler-model-")
    workers: dict[str, VllmWorker] = {}
    try:
        model.save_pretrained(model_dir)
        params, config = load_pretrained(model_dir)
        samplers = {"float32": Sampler(config, max_batch_rows=R),
                    "bfloat16": Sampler(dataclasses.replace(config, compute_dtype="bfloat16"), max_batch_rows=R),
                    "bfloat16_kv": Sampler(dataclasses.replace(config, compute_dtype="bfloat16"), max_batch_rows=R,
                                           cache_dtype="bfloat16")}

        def jax_side(compute="float32", **kw):
            sampling, sampler = SamplingParams(max_new_tokens=N, n=samples, **kw), samplers[compute]
            return lambda: check(np.stack([s.token_ids for g in sampler.generate(params, list(prompts), sampling)
                                           for s in g]))

        ids = torch.from_numpy(rows_prompts)
        mask = torch.ones_like(ids)

        def run_torch():
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                     eos_token_id=None, pad_token_id=0, use_cache=True)
            return check(out[:, prompt_len:].numpy())

        sides = {"jax_greedy": jax_side(temperature=0.0), "torch_greedy": run_torch,
                 "jax_top_p_0.9": jax_side(temperature=1.0, top_p=0.9, seed=SEED),
                 "jax_t1": jax_side(temperature=1.0, seed=SEED),
                 # model.compute_dtype: bfloat16 (bfloat16 weight matmuls, float32 accumulation and log-probs)
                 "jax_bf16_greedy": jax_side("bfloat16", temperature=0.0),
                 "jax_bf16_t1": jax_side("bfloat16", temperature=1.0, seed=SEED),
                 # rollout.cache_dtype: bfloat16 as well
                 "jax_bf16kv_greedy": jax_side("bfloat16_kv", temperature=0.0),
                 "jax_bf16kv_t1": jax_side("bfloat16_kv", temperature=1.0, seed=SEED)}

        # vLLM: each mode's engine started alone (its start-up is reported, not measured with the rest).
        vllm_rec: dict[str, Any] = {"run": False, "reason": vllm_reason, "python": vllm_python, "modes": {}}
        unsupported = None  # vLLM has no kernel for this shape: no other mode is tried
        for mode in (vllm_modes if vllm_python else []):
            if unsupported:
                vllm_rec["modes"][mode] = {"run": False, "reason": unsupported}
                continue
            try:
                eager, dtype = VLLM_MODES[mode]
                startup_s, w = timed(lambda: VllmWorker(vllm_python, model_dir, rows_prompts, N, hidden // heads,
                                                        eager, cores, dtype))
            except VllmFailed as e:
                vllm_rec["modes"][mode] = {"run": False, "reason": str(e)}
                unsupported = str(e) if e.unsupported else None
                continue
            workers[mode] = w
            vllm_rec.update(run=True, reason=None, version=w.version)
            vllm_rec["modes"][mode] = {"run": True, "enforce_eager": eager, "dtype": dtype, "startup_s": startup_s,
                                       "engine": w.engine}
            for sampling in ("greedy", "t1"):
                sides[f"vllm_{mode}_{sampling}"] = (lambda w=w, s=sampling: check(w.generate(s)))
        if vllm_python and not workers:
            vllm_rec["reason"] = "; ".join(f"{m}: {r['reason']}" for m, r in vllm_rec["modes"].items())

        def drop_mode(mode: str, e: VllmFailed) -> None:  # a vLLM failure mid-run: recorded, the rest goes on
            vllm_rec["modes"][mode].update(run=False, reason=f"failed after start-up: {e}")
            for k in [k for k in sides if k.startswith(f"vllm_{mode}_")]:
                del sides[k]
            workers.pop(mode).close(keep_log=True)
            print(f"vLLM {mode} failed: {e}", file=sys.stderr)

        def measure(name):
            try:
                return timed(sides[name])
            except VllmFailed as e:
                drop_mode(name.split("_")[1], e)
                return None

        # Warm-up: compilation (JAX), first-call allocations (all).
        warmup_s, first = {}, {}
        for name in list(sides):
            if (m := measure(name)) is not None:
                warmup_s[name], first[name] = m
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(repeats):
            for name in list(sides):
                if name in sides:
                    time.sleep(settle_s)
                    if (m := measure(name)) is not None:
                        seconds[name].append(m[0])
        seconds = {k: v for k, v in seconds.items() if k in sides}
    finally:
        for w in workers.values():
            w.close()
        shutil.rmtree(model_dir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in seconds.items()}
    tokens_per_s = {k: R * N / v for k, v in med.items()}
    speedup = {"torch_greedy": med["torch_greedy"] / med["jax_greedy"]}
    speedup_bf16 = {"torch_greedy": med["torch_greedy"] / med["jax_bf16_greedy"]}
    speedup_bf16kv = {"torch_greedy": med["torch_greedy"] / med["jax_bf16kv_greedy"]}
    for mode in workers:
        vllm_rec["modes"][mode]["greedy_token_agreement_with_jax"] = float(
            (first["jax_greedy"] == first[f"vllm_{mode}_greedy"]).mean())
        for sampling in ("greedy", "t1"):
            speedup[f"vllm_{mode}_{sampling}"] = med[f"vllm_{mode}_{sampling}"] / med[f"jax_{sampling}"]
            speedup_bf16[f"vllm_{mode}_{sampling}"] = med[f"vllm_{mode}_{sampling}"] / med[f"jax_bf16_{sampling}"]
            speedup_bf16kv[f"vllm_{mode}_{sampling}"] = med[f"vllm_{mode}_{sampling}"] / med[f"jax_bf16kv_{sampling}"]
    dims = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate, vocab=vocab)
    useful = generation_flops(dims, prompts=batch, samples=samples, prompt_tokens=prompt_len, new_tokens=N)
    if not workers and vllm_rec["run"]:  # every mode started, then failed
        vllm_rec.update(run=False, reason="; ".join(f"{m}: {r['reason']}" for m, r in vllm_rec["modes"].items()))
    return {
        "model": {"architecture": "qwen2", "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads,
                  "head_dim": hidden // heads, "vocab": vocab, "intermediate": intermediate, "dtype": "float32",
                  "params": sum(p.numel() for p in model.parameters())},
        "shape": {"batch": batch, "samples_per_prompt": samples, "rows": R, "prompt_len": prompt_len,
                  "new_tokens": N, "repeats": repeats},
        "seconds": seconds,
        "warmup_seconds": warmup_s,
        "tokens_per_s": tokens_per_s,
        "useful_gflop_per_call": useful / 1e9,
        "achieved_gflops": {k: useful / v / 1e9 for k, v in med.items()},
        "ratio_jax_over_torch": speedup["torch_greedy"],
        "jax_speedup_over": speedup,
        "jax_bf16_speedup_over": speedup_bf16,
        "jax_bf16kv_speedup_over": speedup_bf16kv,
        "jax_bf16_greedy_agreement_with_float32": float((first["jax_greedy"] == first["jax_bf16_greedy"]).mean()),
        "jax_bf16kv_greedy_agreement_with_float32": float((first["jax_greedy"] == first["jax_bf16kv_greedy"]).mean()),
        "greedy_token_agreement": float((first["jax_greedy"] == first["torch_greedy"]).mean()),
        "vllm": vllm_rec,
        "compiled_shapes": sum(len(s.compiled_shapes) for s in samplers.values()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="shape defaults (see the module docstring); the flags below override them")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--intermediate", type=int, help="MLP width (default preset: 4 x hidden)")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--batch", type=int, help="prompts")
    ap.add_argument("--samples", type=int, help="samples per prompt (the GRPO group size)")
    ap.add_argument("--prompt-len", type=int)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", help="also measure a small HIDDENxLAYERS model (overhead-bound regime); empty to skip")
    ap.add_argument("--threads", type=int, default=1,
                    help="cores the process (and vLLM's worker) is pinned to, torch's intra-op threads and vLLM's "
                         "OpenMP threads (default 1: on a shared, loaded machine OpenMP spin-waits make "
                         "multi-threaded torch collapse, which would flatter JAX); 0 = all cores, unpinned")
    ap.add_argument("--settle-s", type=float, default=1.5,
                    help="pause before each measured call (vLLM's worker busy-polls for ~1 s after a step)")
    ap.add_argument("--vllm-python", default=None,
                    help=f"vLLM venv's interpreter (default {os.path.relpath(DEFAULT_VLLM_PYTHON, ROOT)} when "
                         f"present; '' to skip vLLM); without one the vLLM column is recorded as not run")
    ap.add_argument("--vllm-modes", default="compiled,compiled_bf16",
                    help=f"comma-separated vLLM engines to measure, of {sorted(VLLM_MODES)}")
    ap.add_argument("--out", help="default benchmarks/results/sampler.json (sampler_<preset>.json for another preset)")
    args = ap.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    modes = [m for m in args.vllm_modes.split(",") if m]
    if unknown := [m for m in modes if m not in VLLM_MODES]:
        ap.error(f"unknown --vllm-modes {unknown}; known: {sorted(VLLM_MODES)}")
    out = args.out or os.path.join(ROOT, "benchmarks", "results",
                                   "sampler.json" if args.preset == "default" else f"sampler_{args.preset}.json")
    if args.threads > 0:  # before JAX starts its thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    import jax  # noqa: F401
    import torch
    import transformers

    cores = sorted(os.sched_getaffinity(0))
    threads = args.threads if args.threads > 0 else len(cores)
    torch.set_num_threads(threads)
    vllm_python, vllm_reason = vllm_python_or_reason(args.vllm_python)
    common = dict(heads=args.heads, kv_heads=args.kv_heads, vocab=args.vocab, batch=args.batch, samples=args.samples,
                  prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                  settle_s=args.settle_s, cores=cores, vllm_python=vllm_python, vllm_reason=vllm_reason,
                  vllm_modes=modes)
    main_run = bench_one(hidden=args.hidden, layers=args.layers, intermediate=args.intermediate or 4 * args.hidden,
                         **common)
    runs = [main_run]
    if args.small:
        h, l = (int(v) for v in args.small.split("x"))
        runs.append(bench_one(hidden=h, layers=l, intermediate=4 * h, **common))
    vllm_version = next((r["vllm"]["version"] for r in runs if r["vllm"]["run"]), None)
    result = {
        "benchmark": "sampler",
        "what": "generation tokens/s, r1jax JAX sampler vs transformers generate vs vLLM-CPU, same weights, shapes "
                "and cores",
        "preset": args.preset,
        "machine": describe_machine(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "vllm": {"run": main_run["vllm"]["run"], "reason": main_run["vllm"]["reason"], "version": vllm_version,
                 "python": vllm_python, "modes": modes},
        "threads": {"torch_intra_op": torch.get_num_threads(), "process_cpus": len(cores), "cores": cores,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
        "settle_s": args.settle_s,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "matmul_peak_gflops": {"xla": matmul_peak("xla"), "torch": matmul_peak("torch")},
        "ratio_jax_over_torch": main_run["ratio_jax_over_torch"],
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({"matmul_peak_gflops": result["matmul_peak_gflops"]}))
    print(json.dumps([{k: r[k] for k in ("model", "tokens_per_s", "achieved_gflops", "jax_speedup_over",
                                         "greedy_token_agreement")}
                      | {"vllm": {m: {k: v for k, v in rec.items() if k != "engine"}
                                  for m, rec in r["vllm"]["modes"].items()}} for r in runs], indent=1))
    return result


if __name__ == "__main__":
    main()
