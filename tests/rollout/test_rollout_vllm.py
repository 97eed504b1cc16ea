"""The vllm engine without vLLM: what is tested is our side of it (no JAX in its process, request and
result conversion, the grpc -> safetensors staging path). vLLM itself is never run here: it needs a
CUDA GPU and its own environment."""

import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from r1jax.rollout import vllm_engine as ve
from r1jax.rollout.types import InvalidRequestError, NcclInit, RolloutError, TensorSpec
from r1jax.rollout.weights import WeightStager, iter_chunks, tensor_specs
from r1jax.sampling import SamplingParams

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_vllm_side_modules_do_not_import_jax():
    code = ("import sys\n"
            "import r1jax.rollout.vllm_engine, r1jax.rollout.server, r1jax.rollout.cli, r1jax.rollout.client\n"
            "import r1jax.rollout\n"
            "from r1jax.rollout import VLLMEngine, RolloutClient, make_server, GenerateRequest\n"
            "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib', 'flax', 'optax')))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stdout + out.stderr


def test_sampling_kwargs():
    s = SamplingParams(temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=100, stop_token_ids=(2, 7), n=8)
    kw = ve.vllm_sampling_kwargs(s, n=8, seed=None)
    assert kw == dict(n=8, temperature=0.6, top_p=0.95, top_k=-1, max_tokens=100, stop_token_ids=[2, 7],
                      ignore_eos=True, logprobs=0, detokenize=False)
    kw = ve.vllm_sampling_kwargs(SamplingParams(top_k=5, temperature=0.0), n=1, seed=123)
    assert kw["top_k"] == 5 and kw["seed"] == 123 and kw["temperature"] == 0.0 and kw["n"] == 1


def test_derived_seeds_are_fixed_and_distinct():
    seeds = {(p, j): ve.derive_seed(42, p, j) for p in range(50) for j in range(8)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert ve.derive_seed(42, 3, 1) == seeds[(3, 1)] and ve.derive_seed(43, 3, 1) != seeds[(3, 1)]
    # A fixed function of its inputs, not Python's per-process salted hash: same in a fresh interpreter.
    code = "from r1jax.rollout.vllm_engine import derive_seed; print(derive_seed(42, 3, 1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT, "PYTHONHASHSEED": "123"})
    assert int(out.stdout) == seeds[(3, 1)]


def _completion(tokens, logprobs, reason, index=0, extra=True):
    # Shaped like vllm.outputs.CompletionOutput with logprobs=0: one {token: Logprob} per position
    # (plus, as vLLM may, another candidate at some positions).
    lps = []
    for t, lp in zip(tokens, logprobs):
        d = {t: SimpleNamespace(logprob=lp, rank=1, decoded_token=None)}
        if extra:
            d[t + 1] = SimpleNamespace(logprob=lp - 3.0, rank=2, decoded_token=None)
        lps.append(d)
    return SimpleNamespace(index=index, token_ids=tuple(tokens), logprobs=lps, finish_reason=reason,
                           cumulative_logprob=float(sum(logprobs)))


def test_sample_from_completion():
    s = ve.sample_from_completion(_completion([5, 9, 2], [-0.5, -1.25, -0.125], "stop"))
    assert s.token_ids.tolist() == [5, 9, 2] and s.finish_reason == "stop"
    np.testing.assert_allclose(s.logprobs, [-0.5, -1.25, -0.125])
    with pytest.raises(RolloutError, match="finish_reason='abort'"):
        ve.sample_from_completion(_completion([5], [-0.5], "abort"))
    broken = _completion([5, 6], [-0.5, -0.5], "length")
    broken.logprobs = broken.logprobs[:1]
    with pytest.raises(RolloutError, match="1 log-prob positions for 2 tokens"):
        ve.sample_from_completion(broken)
    missing = _completion([5], [-0.5], "length", extra=False)
    missing.logprobs = [{7: SimpleNamespace(logprob=-1.0)}]
    with pytest.raises(RolloutError, match="lack the sampled token 5"):
        ve.sample_from_completion(missing)


def test_nccl_infos():
    init = ve.nccl_init_info(NcclInit("10.0.0.1", 29500, world_size=3))
    assert init == {"master_address": "10.0.0.1", "master_port": 29500, "rank_offset": 1, "world_size": 3}
    with pytest.raises(InvalidRequestError, match="world_size >= 2"):
        ve.nccl_init_info(NcclInit("10.0.0.1", 29500, world_size=1))
    upd = ve.nccl_update_info([TensorSpec("model.embed_tokens.weight", (64, 32), "bfloat16")], packed=True)
    assert upd == {"names": ["model.embed_tokens.weight"], "dtype_names": ["bfloat16"], "shapes": [[64, 32]],
                   "packed": True}
    with pytest.raises(InvalidRequestError, match="needs the list of tensors"):
        ve.nccl_update_info([])


def test_grpc_chunks_become_a_loadable_safetensors_directory(tmp_path):
    import ml_dtypes
    import torch
    from safetensors.torch import load_file

    arrays = {"model.embed_tokens.weight": np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32),
              "model.norm.weight": np.linspace(-1, 1, 4).astype(ml_dtypes.bfloat16)}
    stager = WeightStager(2, None)
    for n, a in arrays.items():
        for c in iter_chunks(n, a, 2, chunk_bytes=7):
            stager.add(c)
    src = tmp_path / "orig"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    out = ve.write_safetensors_dir(stager.raw(), str(tmp_path / "staged"), copy_from=str(src))
    loaded = load_file(os.path.join(out, "model.safetensors"))
    assert loaded["model.norm.weight"].dtype == torch.bfloat16
    np.testing.assert_array_equal(loaded["model.embed_tokens.weight"].numpy(), arrays["model.embed_tokens.weight"])
    np.testing.assert_array_equal(loaded["model.norm.weight"].float().numpy(),
                                  arrays["model.norm.weight"].astype(np.float32))
    assert json.loads((tmp_path / "staged" / "config.json").read_text()) == {"model_type": "qwen2"}
    assert tensor_specs(arrays)["model.norm.weight"].dtype == "bfloat16"


def test_generation_lease_drains_before_a_weight_swap():
    lease, order, version = ve._Lease(), [], [0]
    assert lease.acquire_read(lambda: version[0]) == 0  # a request running on version 0

    def swap():
        lease.acquire_write()
        order.append("swap")
        version[0] = 1
        lease.release_write()

    t = threading.Thread(target=swap)
    t.start()
    time.sleep(0.2)
    order.append("request done")  # the swap waited for the running request
    lease.release_read()
    t.join(timeout=10)
    assert order == ["request done", "swap"]
    assert lease.acquire_read(lambda: version[0]) == 1
    lease.release_read()


def test_building_without_vllm_says_what_is_missing():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs vLLM installed"):
            ve.VLLMEngine.from_model("/nonexistent")
    else:  # pragma: no cover - only where vLLM (and a GPU) exist
        pytest.skip("vLLM is installed here; this test checks the error without it")
