"""Pieces of the rollout service without a server: generated stubs, proto conversion, weight staging."""

import filecmp
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from r1jax.rollout import convert
from r1jax.rollout.engine import ResultStream, VersionGate
from r1jax.rollout.types import (EngineInfo, GenerateRequest, InvalidRequestError, PreconditionError,
                                 PromptResult, TensorSpec, WeightChunk)
from r1jax.rollout.weights import WeightStager, flatten_params, iter_chunks, tensor_specs, unflatten_params
from r1jax.sampling import Sample, SamplingParams

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_checked_in_stubs_match_rollout_proto(tmp_path):
    shutil.copytree(os.path.join(ROOT, "r1jax", "rollout"), tmp_path / "r1jax" / "rollout",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    # The exact command of the rollout.proto header / r1jax.rollout docstring.
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.",
                    "r1jax/rollout/rollout.proto"], cwd=tmp_path, check=True)
    for name in ("rollout_pb2.py", "rollout_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "r1jax" / "rollout" / name, os.path.join(ROOT, "r1jax", "rollout", name),
                           shallow=False), f"{name} is stale: regenerate it from rollout.proto"


def test_request_and_result_round_trip_through_proto():
    req = GenerateRequest([[1, 2, 3], np.array([4])], SamplingParams(temperature=0.5, top_p=0.9, top_k=7,
                          max_new_tokens=12, stop_token_ids=(3, 9), n=4, seed=2**32 - 1),
                          first_prompt_index=7, request_id="abc")
    back = convert.request_from_pb(convert.request_to_pb(req))
    assert back.sampling == req.sampling and back.first_prompt_index == 7 and back.request_id == "abc"
    assert [list(p) for p in back.prompts] == [[1, 2, 3], [4]]
    unseeded = convert.request_from_pb(convert.request_to_pb(GenerateRequest([[1]], SamplingParams(temperature=0))))
    assert unseeded.sampling.seed is None and unseeded.sampling.temperature == 0.0
    res = PromptResult(3, (Sample([5, 6], [-0.25, -1.5], "stop"), Sample([7], [-0.125], "length")), 9)
    back = convert.result_from_pb(convert.result_to_pb(res))
    assert back.prompt_index == 3 and back.weight_version == 9 and back.samples == res.samples
    info = EngineInfo("m", "jax", 64, 128, 2, ("grpc", "safetensors"), (TensorSpec("a.b", (2, 3), "bfloat16"),), 8)
    assert convert.info_from_pb(convert.info_to_pb(info)) == info


def test_flatten_unflatten_round_trip():
    tree = {"layers": {"q": np.ones((2, 3)), "k": np.zeros(2)}, "embed": np.arange(4.0), "heads": [np.ones(1)]}
    flat = flatten_params(tree)
    assert sorted(flat) == ["embed", "heads.0", "layers.k", "layers.q"]
    back = unflatten_params(tree, {k: v + 1 for k, v in flat.items()})
    np.testing.assert_array_equal(back["layers"]["q"], 2 * np.ones((2, 3)))
    assert isinstance(back["heads"], list)
    assert tensor_specs(flat)["layers.q"] == TensorSpec("layers.q", (2, 3), "float64")


def test_stager_reassembles_out_of_order_overlapping_chunks_of_every_dtype():
    import ml_dtypes
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
              "b": (np.arange(5) / 3).astype(ml_dtypes.bfloat16),
              "c": np.zeros((0, 2), np.float32)}
    stager = WeightStager(4, tensor_specs(arrays))
    chunks = [c for n, a in arrays.items() for c in iter_chunks(n, a, 4, chunk_bytes=5)]
    completed = []
    for c in reversed(chunks):  # reversed order
        completed += stager.add(c)
    completed += stager.add(chunks[0])  # a duplicate is harmless and completes nothing new
    assert sorted(completed) == ["a", "b", "c"] and stager.missing() == []
    out = stager.arrays()
    for n, a in arrays.items():
        assert out[n].dtype == a.dtype
        np.testing.assert_array_equal(out[n], a)


def test_stager_refuses_bad_chunks_and_incomplete_commits():
    specs = {"w": TensorSpec("w", (2, 2), "float32"), "v": TensorSpec("v", (3,), "float32")}
    st = WeightStager(1, specs)
    with pytest.raises(InvalidRequestError, match="unknown tensor 'x'"):
        st.add(WeightChunk(1, "x", (2, 2), "float32", 0, b"\0" * 16))
    with pytest.raises(InvalidRequestError, match=r"'w': shape \[4\]"):
        st.add(WeightChunk(1, "w", (4,), "float32", 0, b"\0" * 16))
    with pytest.raises(InvalidRequestError, match="'w': dtype float16"):
        st.add(WeightChunk(1, "w", (2, 2), "float16", 0, b"\0" * 8))
    with pytest.raises(InvalidRequestError, match=r"bytes \[12, 20\) outside the tensor's 16 bytes"):
        st.add(WeightChunk(1, "w", (2, 2), "float32", 12, b"\0" * 8))
    with pytest.raises(PreconditionError, match="version 2"):
        st.add(WeightChunk(2, "w", (2, 2), "float32", 0, b"\0" * 16))
    st.add(WeightChunk(1, "w", (2, 2), "float32", 0, b"\0" * 8))  # half of w
    with pytest.raises(PreconditionError, match=r"2 tensor\(s\) missing or incomplete: 'v', 'w'"):
        st.arrays()
    st.add(WeightChunk(1, "w", (2, 2), "float32", 8, b"\0" * 8))
    assert st.missing() == ["v"]
    # Without an expected list (vLLM), the first chunk defines the tensor; later ones must agree.
    free = WeightStager(1, None)
    with pytest.raises(PreconditionError, match="no tensors"):
        free.check_complete()
    free.add(WeightChunk(1, "model.x", (2,), "bfloat16", 0, b"\0" * 2))
    with pytest.raises(InvalidRequestError, match="earlier chunks said"):
        free.add(WeightChunk(1, "model.x", (3,), "bfloat16", 2, b"\0" * 2))
    with pytest.raises(InvalidRequestError, match="unknown dtype 'float3'"):
        free.add(WeightChunk(1, "model.y", (2,), "float3", 0, b"\0" * 2))


def test_version_gate_orders_updates():
    gate = VersionGate(3)
    with pytest.raises(PreconditionError, match="4 is not newer than the live version 3|3 is not newer"):
        gate.begin(3, "grpc", ("grpc",))
    with pytest.raises(InvalidRequestError, match="'nccl' is not supported"):
        gate.begin(4, "nccl", ("grpc",))
    gate.begin(4, "grpc", ("grpc",))
    with pytest.raises(PreconditionError, match="update in progress is version 4"):
        gate.require(5, "commit")
    assert gate.require(4, "commit") == "grpc"


def test_result_stream_close_unblocks_a_waiting_consumer():
    closed = []
    stream = ResultStream(on_close=lambda: closed.append(True))
    got = []
    t = threading.Thread(target=lambda: got.extend(stream))
    t.start()
    stream.put(PromptResult(0, (), 0))
    stream.close()
    t.join(timeout=10)
    assert not t.is_alive() and closed == [True] and len(got) <= 1
    failing = ResultStream()
    failing.fail(InvalidRequestError("boom"))
    with pytest.raises(InvalidRequestError, match="boom"):
        next(failing)
    assert list(failing) == []
