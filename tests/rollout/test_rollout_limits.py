"""Rollout server robustness over REAL loopback gRPC: request limits, cancellation of abandoned
unary calls, refusal of non-finite weights and of out-of-range weight versions."""

import os
import re
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from r1jax.rollout import rollout_pb2 as pb
from r1jax.rollout import rollout_pb2_grpc as pb_grpc
from r1jax.rollout.client import RolloutClient
from r1jax.rollout.server import make_server
from r1jax.rollout.types import (DeadlineExceededError, GenerateRequest, InvalidRequestError, RequestLimits,
                                 UnavailableError)
from r1jax.rollout.weights import flatten_params
from r1jax.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class FirstBatchGate:
    """Holds the engine's first batch before its prefill until ``release`` is set or the batch is
    cancelled (the engine's ``cancelled()`` turns true), then lets it run and counts the decode
    chunks it runs after that (each chunk asks ``cancelled()`` once before the next)."""

    def __init__(self, engine, timeout: float = 30.0):
        self.started, self.release, self.done = threading.Event(), threading.Event(), threading.Event()
        self.saw_cancel: bool | None = None
        self.chunks = 0
        self.rows_delivered = 0
        orig, first = engine.sampler.run_rows, [True]

        def run_rows(params, rows, *, cancelled=None, **kw):
            if not first:
                yield from orig(params, rows, cancelled=cancelled, **kw)
                return
            first.clear()
            self.started.set()
            deadline = time.monotonic() + timeout
            while not self.release.wait(0.01) and not cancelled() and time.monotonic() < deadline:
                pass  # wait for release or cancellation, up to the deadline
            self.saw_cancel = bool(cancelled())

            def counted():
                self.chunks += 1
                return cancelled()

            try:
                for item in orig(params, rows, cancelled=counted, **kw):
                    self.rows_delivered += 1
                    yield item
            finally:
                self.done.set()

        engine.sampler.run_rows = run_rows


def _count_requests(engine) -> list:
    """Records every request that reaches ``engine.generate_stream``."""
    seen, orig = [], engine.generate_stream

    def spy(request):
        seen.append(request)
        return orig(request)

    engine.generate_stream = spy
    return seen


def _expect(code, pattern, fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    assert re.search(pattern, info.value.details()), info.value.details()


def _request(prompts, **sampling):
    s = dict(temperature=0, top_p=1, max_new_tokens=8, n=1)
    s.update(sampling)
    return pb.GenerateRequest(prompts=[pb.Prompt(token_ids=p) for p in prompts], sampling=pb.SamplingParams(**s))


# -- item 9: limits -----------------------------------------------------------------------------------


def test_requests_over_the_default_limits_are_refused_before_any_work(engine, prompts, reference, tokens):
    seen = _count_requests(engine)
    server, port = make_server(engine, "127.0.0.1", 0)
    addr = f"127.0.0.1:{port}"
    stub = pb_grpc.RolloutStub(grpc.insecure_channel(addr))
    try:
        # n = 1000 of a 1-token prompt: cheap enough that a server without limits would run it.
        _expect(INVALID, r"^sampling\.n: 1000 exceeds the limit max_n = 256$",
                lambda: stub.Generate(_request([[1]], n=1000, max_new_tokens=1)))
        assert seen == []
        _expect(INVALID, r"^sampling\.n: 2147483647 exceeds the limit max_n = 256$",
                lambda: stub.Generate(_request([[1]], n=2**31 - 1, max_new_tokens=1)))
        _expect(INVALID, r"^sampling\.n: 2147483647 exceeds", lambda: list(stub.GenerateStream(
            _request([[1]], n=2**31 - 1, max_new_tokens=1))))
        _expect(INVALID, r"^prompts x sampling\.n: 20000 x 64 = 1280000 rows exceeds the limit "
                         r"max_request_rows = 16384$",
                lambda: stub.Generate(_request([[1, 2]] * 20000, n=64)))
        _expect(INVALID, r"^request tokens: n 1 x \(3 prompt tokens \+ 1 prompts x max_new_tokens 33554432\) = "
                         r"33554435 exceeds the limit max_request_tokens = 33554432$",
                lambda: stub.Generate(_request([[1, 2, 3]], max_new_tokens=2**25)))
        assert seen == []  # no request reached the engine
        h = stub.Health(pb.HealthRequest())
        assert h.serving and h.active_requests == 0
        with RolloutClient(addr) as c:  # still serving
            assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(0, prompts, GREEDY)
    finally:
        server.stop(0)


def test_configured_limits_and_a_full_queue(engine, prompts, reference, tokens):
    limits = RequestLimits(max_n=4, max_request_rows=8, max_request_tokens=100, max_queued_rows=8)
    seen = _count_requests(engine)
    gate = FirstBatchGate(engine)
    server, port = make_server(engine, "127.0.0.1", 0, limits=limits)
    addr = f"127.0.0.1:{port}"
    stub = pb_grpc.RolloutStub(grpc.insecure_channel(addr))
    try:
        _expect(INVALID, r"sampling\.n: 5 exceeds the limit max_n = 4", lambda: stub.Generate(_request([[1]], n=5)))
        _expect(INVALID, r"3 x 3 = 9 rows exceeds the limit max_request_rows = 8",
                lambda: stub.Generate(_request([[1], [2], [3]], n=3)))
        _expect(INVALID, r"request tokens: n 2 x \(6 prompt tokens \+ 2 prompts x max_new_tokens 30\) = 132 "
                         r"exceeds the limit max_request_tokens = 100",
                lambda: stub.Generate(_request([[1, 2, 3], [4, 5, 6]], n=2, max_new_tokens=30)))
        assert seen == []
        # 4 prompts x n=2 = 8 rows fill the queue while the engine holds the batch.
        first = {}
        sampling = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=5)

        def generate_first():
            with RolloutClient(addr, limits=limits) as c:
                first["res"] = c.generate(GenerateRequest(prompts, sampling))

        t = threading.Thread(target=generate_first)
        t.start()
        assert gate.started.wait(60), "the first request never reached the engine"
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, r"server busy: 8 rows admitted and not finished \+ 1 requested "
                r"exceeds the limit max_queued_rows = 8", lambda: stub.Generate(_request([[1]])))
        with RolloutClient(addr, retries=0, limits=limits) as c:
            with pytest.raises(UnavailableError, match="RESOURCE_EXHAUSTED: server busy"):
                c.generate(GenerateRequest([[1]], GREEDY))
        assert len(seen) == 1
        gate.release.set()
        t.join(timeout=120)
        assert tokens(first["res"]) == reference(0, prompts, sampling)
        with RolloutClient(addr, limits=limits) as c:  # the queue is free again
            assert tokens(c.generate(GenerateRequest(prompts[:2], GREEDY))) == reference(0, prompts[:2], GREEDY)
    finally:
        gate.release.set()
        server.stop(0)


def test_client_checks_the_limits_before_sending():
    # Nothing listens on port 1: a request that were sent would end in UnavailableError.
    limits = RequestLimits(max_n=4, max_request_rows=6, max_request_tokens=50, max_queued_rows=6)
    with RolloutClient("127.0.0.1:1", retries=0, limits=limits) as c:
        with pytest.raises(InvalidRequestError, match=r"^sampling\.n: 8 exceeds the limit max_n = 4$"):
            c.generate(GenerateRequest([[1]], SamplingParams(n=8)))
        with pytest.raises(InvalidRequestError, match=r"2 x 4 = 8 rows exceeds the limit max_request_rows = 6"):
            list(c.generate_stream(GenerateRequest([[1], [2]], SamplingParams(n=4))))
        with pytest.raises(InvalidRequestError, match=r"= 52 exceeds the limit max_request_tokens = 50"):
            c.generate(GenerateRequest([[1]], SamplingParams(max_new_tokens=51)))
    # Two servers: each gets one slice of 3 prompts, which is within max_request_rows (and is sent).
    with RolloutClient(["127.0.0.1:1", "127.0.0.1:2"], retries=0, limits=limits) as c:
        with pytest.raises(UnavailableError):
            c.generate(GenerateRequest([[1]] * 6, SamplingParams(n=2, max_new_tokens=1)))


def test_request_limits_validate_their_fields():
    assert RequestLimits() == RequestLimits(256, 16384, 2**25, 65536)
    with pytest.raises(ValueError, match=r"limits\.max_n: must be an int >= 1, got 0"):
        RequestLimits(max_n=0)
    with pytest.raises(ValueError, match=r"limits\.max_request_tokens: must be an int >= 1, got 1\.5"):
        RequestLimits(max_request_tokens=1.5)
    with pytest.raises(ValueError, match=r"max_queued_rows \(8\) must be >= limits\.max_request_rows \(16\)"):
        RequestLimits(max_request_rows=16, max_queued_rows=8)


# -- item 10: an abandoned unary Generate stops --------------------------------------------------------


def test_unary_generate_past_its_deadline_is_cancelled_and_not_retried(engine, prompts, reference, tokens):
    seen = _count_requests(engine)
    gate = FirstBatchGate(engine)
    server, port = make_server(engine, "127.0.0.1", 0)
    addr = f"127.0.0.1:{port}"
    long = SamplingParams(temperature=0.0, max_new_tokens=32)  # 8 decode chunks of 4 steps
    try:
        # The engine holds the batch until it is cancelled, so the 5 s deadline always passes first.
        with RolloutClient(addr, timeout=5.0, retries=3, backoff=0.01) as c:
            with pytest.raises(DeadlineExceededError, match=rf"^{addr}: generation did not finish within "
                                                            r"timeout=5\.0 s; .* not retried"):
                c.generate(GenerateRequest(prompts, long))
        assert gate.done.wait(60), "the abandoned batch never ended"
        assert gate.saw_cancel is True  # the engine learnt the caller had gone
        assert gate.chunks == 1 and gate.rows_delivered == 0  # stopped after one chunk of 4 steps, not 32
        assert engine.cancelled_requests == 1
        assert len(seen) == 1  # no retried copy was queued
        with RolloutClient(addr) as c:
            assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(0, prompts, GREEDY)
    finally:
        gate.release.set()
        server.stop(0)


def test_killed_unary_client_cancels_its_request(engine, prompts, reference, tokens):
    gate = FirstBatchGate(engine)
    server, port = make_server(engine, "127.0.0.1", 0)
    addr = f"127.0.0.1:{port}"
    script = ("import sys, grpc\n"
              "from r1jax.rollout import rollout_pb2 as pb, rollout_pb2_grpc as g\n"
              "stub = g.RolloutStub(grpc.insecure_channel(sys.argv[1]))\n"
              "stub.Generate(pb.GenerateRequest(prompts=[pb.Prompt(token_ids=[1, 2])],\n"
              "    sampling=pb.SamplingParams(temperature=0, top_p=1, max_new_tokens=32, n=2)))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, addr], env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert gate.started.wait(60), "the client's request never reached the engine"
        proc.kill()
        proc.wait()
        assert gate.done.wait(60), "the abandoned batch never ended"
        assert gate.saw_cancel is True and gate.chunks == 1 and gate.rows_delivered == 0
        assert engine.cancelled_requests == 1
        with RolloutClient(addr) as c:
            assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(0, prompts, GREEDY)
            h = c.health()[addr]
            assert h["active_requests"] == 0 and h["queued_rows"] == 0
    finally:
        proc.kill()
        gate.release.set()
        server.stop(0)


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
