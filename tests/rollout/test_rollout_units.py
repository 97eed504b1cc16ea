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
from r1jax.rollout.weights import (WeightStager, count_nonfinite, flatten_params, iter_chunks, tensor_specs,
                                   unflatten_params)
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


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn"])
def test_count_nonfinite_reads_every_float_dtype_from_its_bits(dtype):
    import ml_dtypes

    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    finfo = ml_dtypes.finfo(dt)
    values = np.array([0.0, -0.0, 1.5, -2.0, float(finfo.max), -float(finfo.max), float(finfo.smallest_subnormal),
                       np.nan, np.inf, -np.inf, -np.nan], np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        a = values.astype(dt)
    # The oracle: numpy's isfinite on the values widened to float64.
    bad = np.flatnonzero(~np.isfinite(a.astype(np.float64)))
    assert bad.size >= 3  # NaN, -NaN and (where the dtype has them) the infinities
    assert count_nonfinite(a.tobytes(), dtype) == (bad.size, int(bad[0]))
    assert count_nonfinite(a[:7].tobytes(), dtype) == (0, -1)


def test_count_nonfinite_scans_large_tensors_in_blocks_and_ignores_integers():
    a = np.zeros((1 << 22) + 9, np.float16)
    a[(1 << 22) + 2] = np.inf
    assert count_nonfinite(a.tobytes(), "float16") == (1, (1 << 22) + 2)
    a[7] = np.nan
    assert count_nonfinite(memoryview(a.tobytes()), "float16") == (2, 7)
    assert count_nonfinite(np.full(4, -1, np.int32).tobytes(), "int32") == (0, -1)


def test_stager_refuses_to_hand_out_non_finite_weights():
    import ml_dtypes

    good = np.ones(6, ml_dtypes.bfloat16)
    bad = good.copy()
    bad[4] = np.inf
    for getter in ("arrays", "raw"):
        st = WeightStager(2, tensor_specs({"a": good, "b": bad}))
        for n, arr in (("a", good), ("b", bad)):
            for c in iter_chunks(n, arr, 2, chunk_bytes=4):
                st.add(c)
        with pytest.raises(InvalidRequestError, match=r"version 2 refused: tensor 'b' holds 1 NaN / inf value\(s\) "
                                                      r"\(the first at flat index 4\); the previous weights stay live"):
            getattr(st, getter)()
    free = WeightStager(3, None)  # the vLLM engine's stager checks the same
    free.add(WeightChunk(3, "model.w", (2,), "float32", 0, np.array([1.0, np.nan], np.float32).tobytes()))
    with pytest.raises(InvalidRequestError, match="tensor 'model.w' holds 1 NaN"):
        free.raw()


def test_version_gate_bounds_versions():
    gate = VersionGate(5)
    with pytest.raises(InvalidRequestError, match=r"weight version 4294967302 is 4294967297 ahead of the live "
                                                  r"version 5; at most 4294967296 \(2\*\*32\)"):
        gate.begin(5 + 2**32 + 1, "grpc", ("grpc",))
    for v in (2**63, 2**64 - 1):
        with pytest.raises(InvalidRequestError, match=rf"weight version {v} exceeds the largest allowed version "
                                                      r"9223372036854775807"):
            gate.begin(v, "grpc", ("grpc",))
    with pytest.raises(InvalidRequestError, match="must be an int, got float 6.5"):
        gate.begin(6.5, "grpc", ("grpc",))
    with pytest.raises(InvalidRequestError, match="must be an int, got bool True"):
        gate.begin(True, "grpc", ("grpc",))
    assert gate.pending_version is None  # nothing refused was begun
    gate.begin(5 + 2**32, "grpc", ("grpc",))
    assert gate.pending_version == 5 + 2**32
    top = VersionGate(2**63 - 1)  # the largest live version: no newer one exists, and that is said
    with pytest.raises(PreconditionError, match="not newer"):
        top.begin(2**63 - 1, "grpc", ("grpc",))
    for bad in (-1, 2**63, 1.0):
        with pytest.raises(ValueError, match=r"weight_version: must be an int in \[0, 2\*\*63 - 1\]"):
            VersionGate(bad)


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
