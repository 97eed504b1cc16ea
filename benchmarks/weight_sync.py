"""Weight-sync latency of a rollout server, per transport, for the ``jax`` and ``vllm`` engines.

Usage (from the repository root)::

    python benchmarks/weight_sync.py --make-qwen05b /tmp/qwen05b     # optional: a 0.5B-shaped checkpoint

    # JAX engine: the script starts `r1jax serve --engine jax` itself on a free loopback port
    python benchmarks/weight_sync.py --engine jax --model r1jax/assets/tiny_base --name tiny
    python benchmarks/weight_sync.py --engine jax --model /tmp/qwen05b --name qwen05b_shape --repeats 3

    # vLLM engine (``make vllm-env`` first; the server in its own terminal)
    .venv-vllm/bin/python -m r1jax.cli serve --engine vllm --model r1jax/assets/tiny_base \
        --port 50051 --kv-cache-gib 1 --enforce-eager
    python benchmarks/weight_sync.py --engine vllm --address 127.0.0.1:50051 --model r1jax/assets/tiny_base --name tiny

Each round pushes new weights (the checkpoint's tensors times ``1 + 0.01 N(0, 1)``) to the server
that serves ``--model``: over grpc chunks (``RolloutClient.update_weights``: Begin, PushWeights,
Commit, which stages and checks the bytes and swaps them in), then as a safetensors directory
written beforehand (``update_weights_from_dir``: the server reads and checks it and swaps it in).
The time is the client's, from Begin to the committed answer; making the new weights and writing
the directory are not in it. Rounds alternate the transports; median and min are reported with
bytes and GB/s, and the machine's 1-minute load average before and after the run.

What each engine takes:

- ``vllm`` (a server started by hand, ``--address``): the served checkpoint's Hugging Face tensors
  (names, layouts, dtype) over grpc; a directory holding ``model.safetensors`` alone. vLLM
  additionally has an NCCL transport (GPU only), not measured here. Results:
  ``benchmarks/results/vllm_weight_sync_<name>.json``.
- ``jax`` (started by the script unless ``--address`` is given): over grpc, r1jax's own parameter
  names, layouts and dtypes (``flatten_params`` of ``load_pretrained``'s tree: ``layers.attn.q.kernel``
  stacked over layers, not ``model.layers.0.self_attn.q_proj.weight``; the server lists them in
  ``Info``), as the trainer's ``RemoteSampler`` pushes them; a Hugging Face directory with
  ``config.json`` and safetensors (``save_pretrained``'s layout), loaded with ``load_pretrained``
  and checked against the live architecture. Those are its only transports (``Info.transports``):
  it has no NCCL transport. Results: ``benchmarks/results/weight_sync_jax_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the root, first
    sys.path.insert(0, str(ROOT))

# Qwen2.5-0.5B's shapes (tied embeddings, q/k/v biases), random bfloat16 weights.
QWEN05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
           "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
           "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 1024,
           "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16", "use_sliding_window": False, "bos_token_id": 1, "eos_token_id": 2}


def make_qwen05b(directory: str) -> None:
    """Writes a random checkpoint of Qwen2.5-0.5B's shapes (bfloat16) and the tiny base's tokenizer."""
    import ml_dtypes
    from safetensors.numpy import save_file

    c = QWEN05B
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                       p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                       p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (inter, h),
                       p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter)})
    rng = np.random.default_rng(0)
    tensors = {n: (np.ones(s, np.float32) if n.endswith("norm.weight") else
                   rng.normal(0, 0.02, s).astype(np.float32)).astype(ml_dtypes.bfloat16) for n, s in shapes.items()}
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(c, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "r1jax" / "assets" / "tiny_base" / f, out / f)
    print(f"{out}: {sum(t.nbytes for t in tensors.values()) / 1e9:.2f} GB in {len(tensors)} tensors")


# The jax engine's transports that this machine cannot measure, and why (reported in the JSON).
JAX_NOT_MEASURED = {
    "nccl": "not a transport of the jax engine (Info.transports is grpc and safetensors): NCCL weight "
            "transfer is vLLM's NCCLWeightTransferEngine, a torch.distributed group between trainer and "
            "vLLM workers on CUDA devices; the jax engine runs in one JAX process with no torch or NCCL, "
            "and a CPU machine has no NCCL at all",
}

# `r1jax serve` prints this line once its gRPC server is bound and serving (r1jax/rollout/cli.py).
_READY = re.compile(r"^r1jax serve: (?P<engine>\S+) engine, .* on (?P<host>[^\s:]+):(?P<port>\d+)")


class JaxServer:
    """``python -m r1jax.cli serve --engine jax --model DIR --port 0`` as a child process.

    The server binds a free loopback port itself (``--port 0``) and prints ``r1jax serve: jax engine,
    ... on 127.0.0.1:PORT`` once it is serving; :meth:`start` waits for that line (read line by
    line: the event, not a timer) and takes the address from it. :meth:`stop` sends SIGTERM, which
    makes the server stop its gRPC server, close the engine and exit 0.

    Args:
        model: the Hugging Face checkpoint directory to serve.
        log_path: the server's stderr (its logging) goes here.
        start_timeout: seconds allowed from spawning to the serving line.
    """

    def __init__(self, model: str, log_path: pathlib.Path, *, start_timeout: float = 600.0):
        self.model, self.log_path, self.start_timeout = model, log_path, start_timeout
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.stdout: list[str] = []

    def start(self) -> str:
        """Spawns the server and returns ``host:port`` once it serves; raises if it exits or times out."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r1jax.cli", "serve", "--engine", "jax", "--model", str(self.model),
             "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        lines: queue.Queue[str | None] = queue.Queue()

        def drain():  # keeps reading, so a chatty server never blocks on a full pipe
            for line in self.proc.stdout:
                self.stdout.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True, name="serve-stdout").start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TimeoutError(f"r1jax serve did not start serving within {self.start_timeout:.0f} s"
                                   f"{self._log_tail()}") from None
            if line is None:
                rc = self.proc.wait()
                raise RuntimeError(f"r1jax serve exited with code {rc} before serving{self._log_tail()}")
            m = _READY.match(line)
            if m:
                self.address = f"{m['host']}:{m['port']}"
                return self.address

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then waits for the exit (SIGKILL after ``timeout`` s); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def _log_tail(self, n: int = 20) -> str:
        self._log.flush()
        tail = self.log_path.read_text(errors="replace").splitlines()[-n:]
        return ("; its last log lines:\n" + "\n".join(tail)) if tail else ""


def _perturbed(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``a * (1 + 0.01 N(0, 1))`` in ``a``'s dtype, with float32 temporaries (not float64: 0.5B-sized
    embeddings stay within a few hundred MB of scratch)."""
    x = a.astype(np.float32)
    noise = rng.standard_normal(a.shape, dtype=np.float32)
    noise *= 0.01
    noise += 1.0
    x *= noise
    return x.astype(a.dtype)


def measure_jax(address: str, model: str, repeats: int) -> dict:
    """Rounds of grpc chunks and a safetensors directory pushed to the jax-engine server at ``address``."""
    import jax

    from r1jax.models import load_pretrained, save_pretrained
    from r1jax.rollout import RolloutClient
    from r1jax.rollout.weights import flatten_params, tensor_specs, unflatten_params

    params, config = load_pretrained(model)  # the served model's tree, dtypes as the server loads it
    tree = jax.device_get(params)
    del params
    base = flatten_params(tree)
    client = RolloutClient(address, timeout=1800)
    info = client.info()
    want = {t.name: t for t in info.tensors}
    if info.engine != "jax" or tensor_specs(base) != want:
        client.close()
        raise RuntimeError(f"{address}: a {info.engine} engine whose tensors are not those of {model}'s "
                           "r1jax parameter tree; serve --model with --engine jax")
    transports = [t for t in ("grpc", "safetensors") if t in info.transports]
    nbytes = {"grpc": sum(a.nbytes for a in base.values())}
    rng = np.random.default_rng(1)
    version = info.weight_version
    times: dict[str, list[float]] = {t: [] for t in transports}
    scratch = tempfile.mkdtemp(prefix="r1jax-sync-")
    try:
        for _ in range(repeats):
            new = {n: _perturbed(a, rng) for n, a in base.items()}
            if "grpc" in times:
                version += 1
                t = time.perf_counter()
                client.update_weights(new, version)
                times["grpc"].append(time.perf_counter() - t)
            d = pathlib.Path(scratch) / f"v{version + 1}"
            if "safetensors" in times:
                save_pretrained(unflatten_params(tree, new), config, d)  # what RemoteSampler.push writes
                nbytes["safetensors"] = _safetensors_bytes(d)
            new = None  # freed before the server reads the directory
            if "safetensors" in times:
                version += 1
                t = time.perf_counter()
                client.update_weights_from_dir(str(d), version)
                times["safetensors"].append(time.perf_counter() - t)
                shutil.rmtree(d)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        client.close()
    return {"bytes": nbytes["grpc"], "tensors": len(base), "times": times, "bytes_by_transport": nbytes,
            "transports_offered": list(info.transports),
            "names": "r1jax parameter names over grpc (e.g. " + ", ".join(sorted(base)[:2])
                     + "); Hugging Face names in the safetensors directory"}


def _safetensors_bytes(directory: pathlib.Path) -> int:
    """Tensor bytes of the ``*.safetensors`` files of ``directory``, from their headers."""
    total = 0
    for f in directory.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def measure_vllm(address: str, model: str, repeats: int) -> dict:
    """Rounds of grpc chunks (Hugging Face tensors) and a ``model.safetensors`` directory pushed to the
    vLLM server at ``address``."""
    from safetensors.flax import load_file  # numpy's loader has no bfloat16
    from safetensors.numpy import save_file

    from r1jax.rollout import RolloutClient

    base = {n: np.asarray(a) for n, a in load_file(str(pathlib.Path(model) / "model.safetensors")).items()}
    nbytes = sum(a.nbytes for a in base.values())
    rng = np.random.default_rng(1)
    client = RolloutClient(address, timeout=1800)
    version = client.info().weight_version
    times: dict[str, list[float]] = {"grpc": [], "safetensors": []}
    scratch = tempfile.mkdtemp(prefix="r1jax-sync-")
    try:
        for _ in range(repeats):
            new = {n: (a.astype(np.float32) * (1 + 0.01 * rng.standard_normal(a.shape))).astype(a.dtype)
                   for n, a in base.items()}
            version += 1
            t = time.perf_counter()
            client.update_weights(new, version)
            times["grpc"].append(time.perf_counter() - t)
            d = pathlib.Path(scratch) / f"v{version + 1}"
            d.mkdir()
            save_file(new, str(d / "model.safetensors"))
            version += 1
            t = time.perf_counter()
            client.update_weights_from_dir(str(d), version)
            times["safetensors"].append(time.perf_counter() - t)
            shutil.rmtree(d)
            del new
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        client.close()
    return {"bytes": nbytes, "tensors": len(base), "times": times}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-qwen05b", metavar="DIR", help="write the 0.5B-shaped checkpoint to DIR and exit")
    ap.add_argument("--engine", choices=("jax", "vllm"), help="the rollout server's engine (required)")
    ap.add_argument("--address", help="host:port of a rollout server serving --model (needed for vllm; "
                                      "for jax, default: start one)")
    ap.add_argument("--model", help="the checkpoint directory the server serves")
    ap.add_argument("--name", default="tiny", help="result file suffix")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="result JSON path (default benchmarks/results/weight_sync_jax_<name>.json, "
                                  "vllm_weight_sync_<name>.json for vllm)")
    ap.add_argument("--start-timeout", type=float, default=600.0, help="seconds for a started server to serve")
    args = ap.parse_args(argv)
    if args.make_qwen05b:
        make_qwen05b(args.make_qwen05b)
        return 0
    if not (args.engine and args.model) or (args.engine == "vllm" and not args.address):
        ap.error("--engine and --model are needed, and --address for --engine vllm (or --make-qwen05b)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    from benchmarks._machine import describe_machine

    server, server_rc = None, None
    log_dir = tempfile.mkdtemp(prefix="r1jax-sync-serve-")
    load = {"what": "1-minute load average of the whole machine (os.getloadavg()[0]), before the first and "
                    "after the last round; other jobs shared the machine"}
    try:
        address = args.address
        if args.engine == "jax" and not address:
            server = JaxServer(args.model, pathlib.Path(log_dir) / "serve.log", start_timeout=args.start_timeout)
            t = time.perf_counter()
            address = server.start()
            print(f"r1jax serve (jax engine) serving {args.model} on {address} after {time.perf_counter() - t:.1f} s")
        load["before"] = os.getloadavg()[0]
        measured = (measure_jax if args.engine == "jax" else measure_vllm)(address, args.model, args.repeats)
        load["after"] = os.getloadavg()[0]
    finally:
        if server is not None:
            server_rc = server.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    nbytes = measured["bytes"]
    result = {"machine": describe_machine(), "engine": args.engine, "model": args.model, "bytes": nbytes,
              "tensors": measured["tensors"], "repeats": args.repeats, "load_avg_1min": load, "transports": {}}
    if args.engine == "jax":
        result.update({"server": "started by this script" if server else f"given: {args.address}",
                       "server_exit_code": server_rc, "transports_offered": measured["transports_offered"],
                       "names": measured["names"], "not_measured": JAX_NOT_MEASURED,
                       "timing": "client's, Begin to committed answer; all_s lists every round: the first "
                                 "safetensors commit also compiles the server's eager finite checks "
                                 "(jnp.isfinite(a).all() per tensor shape), so it is the slow one"})
    for k, ts in measured["times"].items():
        b = measured.get("bytes_by_transport", {}).get(k, nbytes)
        med = statistics.median(ts)
        result["transports"][k] = {"bytes": b, "median_s": med, "min_s": min(ts), "gb_per_s": b / med / 1e9,
                                   "all_s": ts}
        print(f"{k:12s} {b / 1e6:9.1f} MB  median {med:7.3f} s  min {min(ts):7.3f} s  {b / med / 1e9:6.3f} GB/s")
    print(f"load average (1 min) {load['before']:.2f} before, {load['after']:.2f} after")
    if server is not None and server_rc != 0:
        print(f"warning: the server exited with code {server_rc}", file=sys.stderr)
    default = f"weight_sync_jax_{args.name}.json" if args.engine == "jax" else f"vllm_weight_sync_{args.name}.json"
    out = pathlib.Path(args.out) if args.out else ROOT / "benchmarks" / "results" / default
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
