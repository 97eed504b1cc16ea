"""The vLLM side of ``benchmarks/sampler.py``: one offline ``vllm.LLM`` in vLLM's own venv (no JAX here).

``benchmarks/sampler.py`` starts it as ``<vLLM python> _vllm_sampler_worker.py SPEC_PATH`` (SPEC_PATH: a
JSON file: ``model``, ``prompts`` (token-id lists, one per row), ``new_tokens``, ``head_dim``,
``enforce_eager``, ``max_model_len``, ``seed``, ``cores``) with its working directory outside the
repository; it pins itself (and so every process vLLM starts) to ``cores``, the JAX side's. It
speaks JSON lines on the stdout it was started with; its own fd 1 is pointed at stderr, so vLLM's
logs (and its engine processes') never reach the protocol:

* first line out: ``{"ready": true, "vllm": version, "engine": {...}}``, or ``{"error": why}`` and exit
  (with ``"unsupported": true`` when the model's shape is one vLLM has no kernel for: no engine started);
* then for each line in (``greedy`` or ``t1``): one ``generate`` of every row, answered
  ``{"tokens": [[...], ...]}`` (rows in input order) or ``{"error": why}``; ``quit`` or EOF ends it.

Every row generates exactly ``new_tokens`` tokens (``min_tokens = max_tokens``, ``ignore_eos``);
``greedy`` is ``temperature=0``, ``t1`` is ``temperature=1`` with vLLM's engine seed (no per-request
seed, which would put vLLM on its slower per-request-generator path) and no top-p / top-k.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    os.sched_setaffinity(0, spec["cores"])  # before torch / vLLM start a thread or a process: all inherit it
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's logs go to stderr, and so do those of the processes it starts

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    try:
        import vllm
        from vllm import LLM, SamplingParams, TokensPrompt
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            sizes = CPUAttentionBackend.get_supported_head_sizes()
            if spec["head_dim"] not in sizes:
                send({"error": f"vLLM {vllm.__version__}'s CPU attention has no kernel for head_dim "
                               f"{spec['head_dim']} (supported: {sizes})", "unsupported": True})
                return
        llm = LLM(model=spec["model"], dtype=spec.get("dtype", "float32"), enforce_eager=spec["enforce_eager"],
                  max_model_len=spec["max_model_len"], seed=spec["seed"], skip_tokenizer_init=True,
                  enable_prefix_caching=False, max_num_seqs=len(spec["prompts"]))
    except Exception as e:  # noqa: BLE001 - any failure is reported, then the worker ends
        traceback.print_exc()
        send({"error": f"vLLM did not start: {type(e).__name__}: {e}"})
        return
    sched = llm.llm_engine.vllm_config.scheduler_config
    comp = llm.llm_engine.vllm_config.compilation_config
    send({"ready": True, "vllm": vllm.__version__,
          "engine": {"enforce_eager": spec["enforce_eager"], "dtype": spec.get("dtype", "float32"), "max_model_len": spec["max_model_len"],
                     "max_num_seqs": sched.max_num_seqs, "max_num_batched_tokens": sched.max_num_batched_tokens,
                     "enable_prefix_caching": False, "compilation_mode": getattr(comp.mode, "name", str(comp.mode)),
                     "compilation_backend": comp.backend, "seed": spec["seed"],
                     "affinity": sorted(os.sched_getaffinity(0)),
                     "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                     "ld_preload": os.environ.get("LD_PRELOAD", ""),  # as vLLM set it for its workers
                     "kv_cache_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}})
    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in spec["prompts"]]
    n = spec["new_tokens"]
    fixed = dict(max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False)
    sampling = {"greedy": SamplingParams(temperature=0.0, **fixed), "t1": SamplingParams(temperature=1.0, **fixed)}
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        try:
            outs = llm.generate(prompts, sampling[cmd], use_tqdm=False)
            send({"tokens": [list(o.outputs[0].token_ids) for o in outs]})
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            send({"error": f"generate {cmd!r} failed: {type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
