"""Rollout server robustness over REAL loopback gRPC: refusal of non-finite weights and of
out-of-range weight versions."""

import re

import grpc
import numpy as np
import pytest

from r1jax.rollout import rollout_pb2 as pb
from r1jax.rollout import rollout_pb2_grpc as pb_grpc
from r1jax.rollout.client import RolloutClient
from r1jax.rollout.types import GenerateRequest, InvalidRequestError
from r1jax.rollout.weights import flatten_params
from r1jax.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _expect(code, pattern, fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    assert re.search(pattern, info.value.details()), info.value.details()


# -- item 11: weights ---------------------------------------------------------------------------------


def test_non_finite_weights_are_refused_at_commit_over_grpc(served, weights, prompts, reference, tokens):
    engine, addr = served
    with RolloutClient(addr) as c:
        for name, index, value in (("final_norm", 3, np.nan), ("embed", 70, np.inf), ("embed", 5, -np.inf)):
            bad = {k: np.array(v) for k, v in flatten_params(weights[1]).items()}
            bad[name].reshape(-1)[index] = value
            with pytest.raises(InvalidRequestError, match=rf"commit of weight version 1 refused: tensor '{name}' "
                                                          rf"holds 1 NaN / inf value\(s\) \(the first at flat "
                                                          rf"index {index}\); the previous weights stay live"):
                c.update_weights(bad, version=1)
            assert engine.weight_version == 0
            res = c.generate(GenerateRequest(prompts, GREEDY))
            assert {r.weight_version for r in res} == {0}
            assert tokens(res) == reference(0, prompts, GREEDY)
            assert all(np.isfinite(s.logprobs).all() for r in res for s in r.samples)
        c.update_weights(weights[1], version=1)  # the refused pushes left nothing behind
        res = c.generate(GenerateRequest(prompts, GREEDY))
    assert {r.weight_version for r in res} == {1} and tokens(res) == reference(1, prompts, GREEDY)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300 -> float32, on purpose
def test_non_finite_weights_are_refused_in_process_and_from_a_directory(served, cfg, weights, prompts, reference,
                                                                        tokens, tmp_path):
    from r1jax.models import save_pretrained

    engine, addr = served
    flat = {k: np.array(v) for k, v in flatten_params(weights[1]).items()}
    flat["final_norm"][0] = np.nan
    with pytest.raises(InvalidRequestError, match=r"update_weights of version 1: 1 tensor\(s\) hold NaN / inf "
                                                  r"values: \['final_norm'\]"):
        engine.update_weights(flat, version=1)
    # Finite in float64, inf once cast to the model's float32.
    huge = {k: np.asarray(v, np.float64) for k, v in flatten_params(weights[1]).items()}
    huge["embed"][0, 0] = 1e300
    with pytest.raises(InvalidRequestError, match=r"hold NaN / inf values: \['embed'\]"):
        engine.update_weights(huge, version=1)
    save_pretrained({**weights[1], "final_norm": flat["final_norm"]}, cfg, tmp_path / "nan")
    with RolloutClient(addr) as c:
        with pytest.raises(InvalidRequestError, match=r"safetensors directory '.*nan': 1 tensor\(s\) hold NaN / inf "
                                                      r"values: \['final_norm'\]"):
            c.update_weights_from_dir(str(tmp_path / "nan"), version=1)
        assert engine.weight_version == 0
        res = c.generate(GenerateRequest(prompts, GREEDY))
    assert {r.weight_version for r in res} == {0} and tokens(res) == reference(0, prompts, GREEDY)


def test_weight_versions_are_bounded(served, weights, prompts, reference, tokens):
    engine, addr = served
    stub = pb_grpc.RolloutStub(grpc.insecure_channel(addr))

    def begin(v):
        return stub.BeginWeightUpdate(pb.BeginWeightUpdateRequest(version=v, transport=pb.GRPC_CHUNKS))

    for v in (2**64 - 1, 2**63):
        _expect(INVALID, rf"weight version {v} exceeds the largest allowed version 9223372036854775807 "
                         r"\(2\*\*63 - 1\)", lambda: begin(v))
    _expect(INVALID, r"weight version 4294967297 is 4294967297 ahead of the live version 0; at most 4294967296",
            lambda: begin(2**32 + 1))
    assert begin(2**32).live_version == 0  # the largest step is allowed
    stub.AbortWeightUpdate(pb.AbortWeightUpdateRequest(version=2**32))
    with RolloutClient(addr) as c:
        with pytest.raises(InvalidRequestError, match="exceeds the largest allowed version"):
            c.update_weights(weights[1], version=2**64 - 1)
        assert c.update_weights(weights[1], version=1) == 1  # updates still begin
        res = c.generate(GenerateRequest(prompts, GREEDY))
    assert {r.weight_version for r in res} == {1} and tokens(res) == reference(1, prompts, GREEDY)
