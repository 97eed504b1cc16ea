"""Weight-sync latency of a vLLM rollout server, per transport (grpc chunks, safetensors directory).

Usage (from the repository root; ``make vllm-env`` first; the server in its own terminal)::

    python benchmarks/vllm_weight_sync.py --make-qwen05b /tmp/qwen05b     # optional: a 0.5B-shaped checkpoint
    .venv-vllm/bin/python -m r1jax.cli serve --engine vllm --model r1jax/assets/tiny_base \
        --port 50051 --kv-cache-gib 1 --enforce-eager
    python benchmarks/vllm_weight_sync.py --address 127.0.0.1:50051 --model r1jax/assets/tiny_base --name tiny

Each round pushes new weights (the checkpoint's tensors times ``1 + 0.01 N(0, 1)``) to the server
that serves ``--model``: over grpc chunks (``RolloutClient.update_weights``: Begin, PushWeights,
Commit, which stages, checks, writes a safetensors directory and reloads), then as a safetensors
directory written beforehand (``update_weights_from_dir``: checks the headers, reloads). The time
is the client's, from Begin to the committed answer; the directory's writing is not in it.
Rounds alternate the transports; median and min are reported with bytes and GB/s. Results and
the machine go to ``benchmarks/results/vllm_weight_sync_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-qwen05b", metavar="DIR", help="write the 0.5B-shaped checkpoint to DIR and exit")
    ap.add_argument("--address", help="host:port of a vllm rollout server serving --model")
    ap.add_argument("--model", help="the checkpoint directory the server serves")
    ap.add_argument("--name", default="tiny", help="result file suffix")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.make_qwen05b:
        make_qwen05b(args.make_qwen05b)
        return 0
    if not (args.address and args.model):
        ap.error("--address and --model are needed (or --make-qwen05b)")
    from safetensors.flax import load_file  # numpy's loader has no bfloat16
    from safetensors.numpy import save_file

    from benchmarks._machine import describe_machine
    from r1jax.rollout import RolloutClient

    base = {n: np.asarray(a) for n, a in load_file(str(pathlib.Path(args.model) / "model.safetensors")).items()}
    nbytes = sum(a.nbytes for a in base.values())
    rng = np.random.default_rng(1)
    client = RolloutClient(args.address, timeout=1800)
    version = client.info().weight_version
    times: dict[str, list[float]] = {"grpc": [], "safetensors": []}
    scratch = tempfile.mkdtemp(prefix="r1jax-sync-")
    try:
        for _ in range(args.repeats):
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
    result = {"machine": describe_machine(), "model": args.model, "bytes": nbytes, "tensors": len(base),
              "repeats": args.repeats, "transports": {}}
    for k, ts in times.items():
        med = statistics.median(ts)
        result["transports"][k] = {"median_s": med, "min_s": min(ts), "gb_per_s": nbytes / med / 1e9, "all_s": ts}
        print(f"{k:12s} {nbytes / 1e6:9.1f} MB  median {med:7.3f} s  min {min(ts):7.3f} s  "
              f"{nbytes / med / 1e9:6.3f} GB/s")
    out = ROOT / "benchmarks" / "results" / f"vllm_weight_sync_{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
