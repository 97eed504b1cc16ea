"""``r1jax serve``: start a rollout server (wired into ``r1jax/cli.py`` by the lead).

No JAX at import: ``--engine vllm`` runs in vLLM's own environment.

Examples::

    r1jax serve --engine jax --model runs/tiny/hf --port 50051                 # loopback only
    r1jax serve --engine jax --model DIR --reward-model helpful=runs/rm/reward_model   # + the Score RPC
    R1JAX_ROLLOUT_TOKEN=s3cret r1jax serve --engine jax --model DIR --host 0.0.0.0 --allow-remote
    r1jax serve --engine vllm --model DIR --host 0.0.0.0 --allow-remote --token s3cret \
        --tensor-parallel-size 1 --weight-transfer nccl                         # on a GPU node
    .venv-vllm/bin/python -m r1jax.cli serve --engine vllm --model DIR --kv-cache-gib 1 --enforce-eager  # CPU
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

__all__ = ["add_serve_parser", "run_serve"]

# the embedded sampler's switches the JAX engine takes as flags (argparse dests; None = not given)
_JAX_SAMPLER_FLAGS = ("compute_dtype", "cache_dtype", "drop_finished_every", "decode_window")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``serve`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    from r1jax.rollout.server import TOKEN_ENV
    from r1jax.rollout.types import RequestLimits

    p = subparsers.add_parser("serve", help="start a rollout server: r1jax serve --engine jax --model DIR",
                              description="Serve a policy over gRPC (rollout.proto) for the trainer.")
    p.add_argument("--engine", choices=("jax", "vllm"), default="jax", help="generation engine (default jax)")
    p.add_argument("--model", required=True, help="Hugging Face model directory (or hub id for vllm)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default 50051)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding a non-loopback address (requires --token)")
    p.add_argument("--token", default=None, help=f"shared secret clients must send (default ${TOKEN_ENV})")
    p.add_argument("--port-file", default=None, help="write the bound port to this file once serving")
    p.add_argument("--max-workers", type=int, default=32, help="concurrent gRPC calls")
    p.add_argument("--weight-version", type=int, default=0, help="version of the initial weights")
    p.add_argument("--max-length", type=int, default=None, help="longest prompt + generation (default: model's)")
    p.add_argument("--reward-model", action="append", default=[], metavar="NAME=DIR",
                   help="serve the reward model in DIR (made by `r1jax rm`) to the Score RPC under NAME; repeatable. "
                        "Loaded before serving; scoring is JAX code (the vllm engine's env needs JAX for it)")
    d = RequestLimits()
    g = p.add_argument_group("request limits (checked before any work: INVALID_ARGUMENT / RESOURCE_EXHAUSTED)")
    g.add_argument("--max-n", type=int, default=d.max_n, help=f"samples per prompt (default {d.max_n})")
    g.add_argument("--max-request-rows", type=int, default=d.max_request_rows,
                   help=f"rows (prompts x n) per request (default {d.max_request_rows})")
    g.add_argument("--max-request-tokens", type=int, default=d.max_request_tokens,
                   help=f"prompt tokens + max_new_tokens summed over a request's rows (default {d.max_request_tokens})")
    g.add_argument("--max-queued-rows", type=int, default=d.max_queued_rows,
                   help=f"rows of admitted, unfinished requests; beyond it RESOURCE_EXHAUSTED "
                        f"(default {d.max_queued_rows})")
    g = p.add_argument_group("jax engine")
    g.add_argument("--max-batch-rows", type=int, default=64, help="rows (prompts x n) per batch")
    g.add_argument("--decode-chunk", type=int, default=32, help="decode steps between streaming checks")
    g.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default=None,
                   help="input dtype of the weight matmuls (float32 accumulation and log-probs; default: the "
                        "checkpoint's), as the trainer's model.compute_dtype")
    g.add_argument("--cache-dtype", choices=("float32", "bfloat16"), default=None,
                   help="KV-cache dtype (rollout.cache_dtype; default: the checkpoint's): bfloat16 halves the "
                        "decode attention's reads; log-probs then carry its rounding")
    g.add_argument("--drop-finished-every", type=int, default=None, metavar="N",
                   help="every N decode steps go on with only the unfinished rows when they fit half the batch "
                        "(rollout.drop_finished_every; default off)")
    g.add_argument("--decode-window", type=int, default=None, metavar="W",
                   help="start the KV cache at prompt + W slots and double the room after the prompt when full "
                        "(long generations; rollout.decode_window; default off)")
    g = p.add_argument_group("vllm engine (r1jax/rollout/VLLM.md)")
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory (on CPU: of RAM) for vLLM when --kv-cache-gib is not given")
    g.add_argument("--kv-cache-gib", type=float, default=None,
                   help="KV-cache size in GiB (default: vLLM's on GPU, 2 on CPU)")
    g.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs (faster start)")
    g.add_argument("--dtype", default="checkpoint",
                   help="'checkpoint' (config.json's dtype, default) or a vLLM dtype (auto, bfloat16, ...)")
    g.add_argument("--weight-transfer", choices=("auto", "nccl", "none"), default="auto",
                   help="vLLM weight-transfer backend for the NCCL transport (auto: nccl with CUDA, none on CPU)")
    g.add_argument("--truncated-logprobs", action="store_true",
                   help="accept top-p/top-k requests; their log-probs are then vLLM's, of the truncated "
                        "renormalised distribution, not the trainer's")
    return p


def _engine_kwargs(args) -> dict:
    if args.engine == "jax":
        kw = {"max_batch_rows": args.max_batch_rows, "decode_chunk": args.decode_chunk,
              "weight_version": args.weight_version}
        kw.update({k: getattr(args, k) for k in _JAX_SAMPLER_FLAGS if getattr(args, k) is not None})
    else:
        kw = {"tensor_parallel_size": args.tensor_parallel_size, "dtype": args.dtype,
              "gpu_memory_utilization": args.gpu_memory_utilization, "kv_cache_gib": args.kv_cache_gib,
              "enforce_eager": args.enforce_eager, "truncated_logprobs": args.truncated_logprobs,
              "weight_transfer": None if args.weight_transfer == "none" else args.weight_transfer,
              "weight_version": args.weight_version}
    if args.max_length is not None:
        kw["max_length"] = args.max_length
    return kw


def _limits(args):
    from r1jax.rollout.types import RequestLimits

    return RequestLimits(max_n=args.max_n, max_request_rows=args.max_request_rows,
                         max_request_tokens=args.max_request_tokens, max_queued_rows=args.max_queued_rows)


class _StopSignals:
    """Waits in the main thread for SIGINT or SIGTERM without a lock in the signal handler.

    The signal's C handler writes its number to a socket (``signal.set_wakeup_fd``) and ``wait``
    reads it. (Setting a ``threading.Event`` from a Python handler can deadlock: the handler runs
    in the main thread, which may hold that Event's lock on its way into ``wait``.)
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, lambda *_: None)  # a Python handler, so the C handler writes the wake-up byte

    def wait(self) -> int:
        """Blocks until one of ``SIGNALS`` arrives (or has arrived) and returns its number."""
        while True:
            sig = self._read.recv(1)[0]
            if sig in self.SIGNALS:
                return sig


def run_serve(args) -> int:
    """Starts the server described by ``args`` and blocks until SIGINT / SIGTERM."""
    from r1jax.rollout.engine import make_engine
    from r1jax.rollout.server import TOKEN_ENV, is_loopback, make_server
    from r1jax.rollout.types import MAX_WEIGHT_VERSION

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    # Refuse a bad bind before loading any model.
    if not is_loopback(args.host) and not (args.allow_remote and token):
        print(f"r1jax serve: binding {args.host!r} is not loopback: it needs --allow-remote and a token "
              f"(--token or ${TOKEN_ENV})", file=sys.stderr)
        return 2
    # Refuse bad limits and versions before loading any model too.
    try:
        limits = _limits(args)
    except ValueError as e:
        flags = str(e).replace("limits.", "--").replace("_", "-")  # limits.max_n -> --max-n
        print(f"r1jax serve: {flags}", file=sys.stderr)
        return 2
    for flag in ("max_batch_rows", "decode_chunk", "drop_finished_every", "decode_window"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"r1jax serve: --{flag.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2
    jax_only = [f for f in _JAX_SAMPLER_FLAGS if getattr(args, f) is not None]
    if args.engine != "jax" and jax_only:
        print(f"r1jax serve: --{jax_only[0].replace('_', '-')} is a jax engine flag (vLLM has its own scheduling)",
              file=sys.stderr)
        return 2
    if not 0 <= args.weight_version <= MAX_WEIGHT_VERSION:
        print(f"r1jax serve: --weight-version must be in [0, 2**63 - 1], got {args.weight_version}", file=sys.stderr)
        return 2
    # Reward models next: a bad --reward-model fails in one line before the engine loads.
    from r1jax.rollout.reward_models import load_served_reward_models, parse_reward_model_flags

    try:
        reward_models = load_served_reward_models(parse_reward_model_flags(args.reward_model))
    except ValueError as e:
        print(f"r1jax serve: {e}", file=sys.stderr)
        return 2
    stop = _StopSignals()  # before the server is announced: once the port file exists, SIGTERM stops it
    engine = make_engine(args.engine, args.model, **_engine_kwargs(args))
    server, port = make_server(engine, args.host, args.port, token=token, allow_remote=args.allow_remote,
                               max_workers=args.max_workers, limits=limits, reward_models=reward_models)
    info = engine.info()
    print(f"r1jax serve: {info.engine} engine, model {info.model_name!r} (vocab {info.vocab_size}, max length "
          f"{info.max_length}) on {args.host}:{port}{' with token' if token else ''}; limits: max n "
          f"{limits.max_n}, {limits.max_request_rows} rows and {limits.max_request_tokens} tokens per request, "
          f"{limits.max_queued_rows} rows queued"
          + (f"; reward models {', '.join(f'{k}={m.directory}' for k, m in reward_models.items())}"
             if reward_models else "")
          + "".join(f"; --{k.replace('_', '-')} {getattr(args, k)}" for k in _JAX_SAMPLER_FLAGS
                    if getattr(args, k, None) is not None),
          flush=True)
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    stop.wait()
    server.stop(grace=5).wait()
    engine.close()
    return 0


def main(argv=None) -> int:
    """``python -m r1jax.rollout.cli ...``: the serve command alone (no trainer imports; for vLLM's env)."""
    parser = argparse.ArgumentParser(prog="r1jax-serve")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "serve":
        argv = ["serve", *argv]
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
