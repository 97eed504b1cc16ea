"""The rollout service over a REAL gRPC server on loopback (ephemeral ports)."""

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
from r1jax.rollout.types import (GenerateRequest, InvalidRequestError, PreconditionError, RolloutError,
                                 UnavailableError)
from r1jax.rollout.weights import flatten_params
from r1jax.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, n=2, seed=3)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wait_until(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_concurrent_clients_get_complete_results_equal_to_in_process(served, prompts, reference, tokens):
    engine, addr = served
    want_greedy = reference(0, prompts, GREEDY)
    want_sampled = reference(0, prompts, SAMPLED)
    results, errors = {}, []

    def worker(i):
        try:
            with RolloutClient(addr) as c:
                sampling = GREEDY if i % 2 == 0 else SAMPLED
                results[i] = (sampling, c.generate(GenerateRequest(prompts, sampling, request_id=f"t{i}")))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 6
    for sampling, res in results.values():
        assert [r.prompt_index for r in res] == list(range(len(prompts)))
        assert all(len(r.samples) == sampling.n and r.weight_version == 0 for r in res)
        assert tokens(res) == (want_greedy if sampling is GREEDY else want_sampled)
        for r in res:
            for s in r.samples:
                assert s.finish_reason == "length" and len(s.logprobs) == 8 and np.all(s.logprobs <= 0)


def test_stream_returns_every_group_once(served, prompts, reference, tokens):
    _, addr = served
    with RolloutClient(addr) as c:
        got = list(c.generate_stream(GenerateRequest(prompts, SAMPLED, first_prompt_index=10)))
    assert sorted(r.prompt_index for r in got) == [10, 11, 12, 13]
    got.sort(key=lambda r: r.prompt_index)
    assert tokens(got) == reference(0, prompts, SAMPLED, first_prompt_index=10)


def test_weight_updates_during_generation_never_mix_versions(served, weights, prompts, reference, tokens):
    engine, addr = served
    want = [reference(v, prompts, GREEDY) for v in range(3)]
    assert want[0] != want[1] and want[1] != want[2] and want[0] != want[2]
    seen, errors, stop = [], [], threading.Event()

    def generate_forever():
        try:
            with RolloutClient(addr) as c:
                while not stop.is_set():
                    seen.extend(c.generate_stream(GenerateRequest(prompts, GREEDY)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=generate_forever) for _ in range(3)]
    for t in threads:
        t.start()
    _wait_until(lambda: len(seen) >= 8, what="generation under version 0")
    # Small chunks: many PushWeights messages interleave with the running batches.
    with RolloutClient(addr, chunk_bytes=512) as c:
        c.update_weights(weights[1], version=1)
        _wait_until(lambda: any(r.weight_version == 1 for r in seen), what="results of version 1")
        c.update_weights(flatten_params(weights[2]), version=2)
        _wait_until(lambda: any(r.weight_version == 2 for r in seen), what="results of version 2")
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert {r.weight_version for r in seen} == {0, 1, 2}
    for r in seen:  # every group is exactly what its own version's model generates
        assert tokens([r])[0] == want[r.weight_version][r.prompt_index]
    assert engine.weight_version == 2


def _expect(code, pattern, fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    assert re.search(pattern, info.value.details()), info.value.details()


def _chunk(name, shape, dtype="float32", version=1, offset=0, data=None):
    n = int(np.prod(shape)) * (2 if dtype == "bfloat16" else 4)
    return pb.WeightChunk(version=version, name=name, shape=list(shape), dtype=dtype, offset=offset,
                          data=b"\0" * n if data is None else data)


def test_malformed_requests_are_rejected_and_the_server_keeps_serving(served, prompts, reference, tokens):
    engine, addr = served
    stub = pb_grpc.RolloutStub(grpc.insecure_channel(addr))
    INVALID, PRECOND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    ok = pb.SamplingParams(temperature=0, top_p=1, max_new_tokens=8, n=1)

    def gen(prompts, sampling=ok):
        return lambda: stub.Generate(pb.GenerateRequest(prompts=[pb.Prompt(token_ids=p) for p in prompts],
                                                        sampling=sampling))

    def with_(**kw):
        s = pb.SamplingParams()
        s.CopyFrom(ok)
        for k, v in kw.items():
            if k == "stop_token_ids":
                s.stop_token_ids.extend(v)
            else:
                setattr(s, k, v)
        return s

    _expect(INVALID, r"prompts: empty list", gen([]))
    _expect(INVALID, r"prompts\[1\]: empty prompt", gen([[1, 2], []]))
    _expect(INVALID, r"prompts\[0\]\[2\]: token id 64 is outside the vocabulary", gen([[1, 2, 64]]))
    _expect(INVALID, r"prompts\[0\]\[0\]: token id -1", gen([[-1]]))
    _expect(INVALID, r"sampling\.n: must be >= 1, got 0", gen([[1]], with_(n=0)))
    _expect(INVALID, r"prompts\[0\]: 2 prompt tokens \+ max_new_tokens 63 = 65 exceeds the model's max length 64",
            gen([[1, 2]], with_(max_new_tokens=63)))
    _expect(INVALID, r"stop_token_ids\[0\]: token id 99", gen([[1]], with_(stop_token_ids=[99])))
    _expect(INVALID, r"sampling\.top_p", gen([[1]], with_(top_p=0.0)))
    _expect(INVALID, r"sampling: missing", lambda: stub.Generate(pb.GenerateRequest(prompts=[pb.Prompt(token_ids=[1])])))
    _expect(INVALID, r"n: must be >= 1", lambda: list(stub.GenerateStream(
        pb.GenerateRequest(prompts=[pb.Prompt(token_ids=[1])], sampling=with_(n=0)))))

    # Weight updates.
    begin = lambda v, t=pb.GRPC_CHUNKS: stub.BeginWeightUpdate(pb.BeginWeightUpdateRequest(version=v, transport=t))  # noqa: E731
    push = lambda *chunks: stub.PushWeights(iter(chunks))  # noqa: E731
    commit = lambda v, path="": stub.CommitWeightUpdate(pb.CommitWeightUpdateRequest(version=v, path=path))  # noqa: E731
    _expect(PRECOND, r"no weight update in progress", lambda: push(_chunk("embed", (64, 32))))
    _expect(PRECOND, r"no weight update in progress", lambda: commit(1))
    _expect(PRECOND, r"version 0 is not newer than the live version 0", lambda: begin(0))
    _expect(INVALID, r"transport: unspecified", lambda: begin(1, pb.TRANSPORT_UNSPECIFIED))
    _expect(INVALID, r"transport 'nccl' is not supported", lambda: begin(1, pb.NCCL))
    expected = begin(1).expected
    assert {s.name for s in expected} == set(flatten_params(engine.params))
    _expect(INVALID, r"unknown tensor 'nope'", lambda: push(_chunk("nope", (2,))))
    _expect(INVALID, r"tensor 'embed': shape \[32, 64\] does not match the model's \[64, 32\]",
            lambda: push(_chunk("embed", (32, 64))))
    _expect(INVALID, r"tensor 'embed': dtype bfloat16 does not match the model's float32",
            lambda: push(_chunk("embed", (64, 32), "bfloat16")))
    _expect(INVALID, r"tensor 'final_norm': chunk bytes \[120, 136\) outside the tensor's 128 bytes",
            lambda: push(_chunk("final_norm", (32,), offset=120, data=b"\0" * 16)))
    _expect(PRECOND, r"version 2, but the update in progress is version 1",
            lambda: push(_chunk("final_norm", (32,), version=2)))
    push(_chunk("final_norm", (32,)))  # one complete tensor, many missing
    _expect(PRECOND, r"refused: \d+ tensor\(s\) missing or incomplete: 'embed'", lambda: commit(1))
    stub.AbortWeightUpdate(pb.AbortWeightUpdateRequest(version=1))
    begin(1, pb.SAFETENSORS_DIR)
    _expect(INVALID, r"safetensors directory '/nonexistent/dir': cannot load", lambda: commit(1, "/nonexistent/dir"))
    stub.AbortWeightUpdate(pb.AbortWeightUpdateRequest(version=1))

    # Still serving, still on the old weights.
    h = stub.Health(pb.HealthRequest())
    assert h.serving and h.weight_version == 0 and engine.weight_version == 0
    with RolloutClient(addr) as c:
        assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(0, prompts, GREEDY)
        with pytest.raises(InvalidRequestError, match=rf"{addr}: prompts\[0\]: empty prompt"):
            c.generate(GenerateRequest([[]], GREEDY))
        with pytest.raises(PreconditionError, match="not newer"):
            c.update_weights(engine.params, version=0)


def test_killed_client_does_not_wedge_the_server(served, prompts, reference, tokens):
    engine, addr = served
    script = (
        "import sys, time, grpc\n"
        "from r1jax.rollout import rollout_pb2 as pb, rollout_pb2_grpc as g\n"
        "stub = g.RolloutStub(grpc.insecure_channel(sys.argv[1]))\n"
        "req = pb.GenerateRequest(prompts=[pb.Prompt(token_ids=[1 + i % 60, 2]) for i in range(64)],\n"
        "    sampling=pb.SamplingParams(temperature=1, top_p=1, max_new_tokens=8, n=2, seed=1))\n"
        "for r in stub.GenerateStream(req):\n"
        "    print('got', r.prompt_index, flush=True)\n"
        "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, addr], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    try:
        line = proc.stdout.readline()
        assert line.startswith("got"), line
        assert "jax" not in line
    finally:
        proc.kill()
        proc.wait()
    with RolloutClient(addr) as c:
        _wait_until(lambda: c.health()[addr]["active_requests"] == 0 and c.health()[addr]["queued_rows"] == 0,
                    what="the killed client's request to be dropped")
        assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(0, prompts, GREEDY)


def test_token_is_required_when_set(engine, prompts):
    server, port = make_server(engine, "127.0.0.1", 0, token="s3cret")
    addr = f"127.0.0.1:{port}"
    try:
        with RolloutClient(addr, token="") as c:
            with pytest.raises(PermissionError, match="token"):
                c.info()
        with RolloutClient(addr, token="wrong") as c:
            with pytest.raises(PermissionError, match="token"):
                list(c.generate_stream(GenerateRequest(prompts[:1], GREEDY)))
        with RolloutClient(addr, token="s3cret") as c:
            assert c.info().vocab_size == 64
            assert len(c.generate(GenerateRequest(prompts[:1], GREEDY))) == 1
    finally:
        server.stop(0)


def test_non_loopback_needs_allow_remote_and_token(engine):
    with pytest.raises(ValueError, match="--allow-remote"):
        make_server(engine, "0.0.0.0", 0)
    with pytest.raises(ValueError, match="token"):
        make_server(engine, "0.0.0.0", 0, allow_remote=True)


@pytest.mark.parametrize("balance", ["round_robin", "least_loaded"])
def test_several_servers_split_requests_without_changing_samples(weights, make_engine, prompts, reference, tokens,
                                                                 balance):
    engines = [make_engine() for _ in range(2)]
    servers = [make_server(e, "127.0.0.1", 0) for e in engines]
    addrs = [f"127.0.0.1:{p}" for _, p in servers]
    try:
        with RolloutClient(addrs, balance=balance) as c:
            res = c.generate(GenerateRequest(prompts, SAMPLED))
            assert tokens(res) == reference(0, prompts, SAMPLED)  # the split is invisible
            assert all(e.sampler.compiled_shapes for e in engines)  # both servers did work
            c.update_weights(weights[1], version=1)  # pushed to every server
            assert [e.weight_version for e in engines] == [1, 1]
            assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(1, prompts, GREEDY)
        # A dead server among live ones: its slices are retried elsewhere.
        with RolloutClient(["127.0.0.1:1", addrs[0]], balance=balance, backoff=0.01) as c:
            assert tokens(c.generate(GenerateRequest(prompts, GREEDY))) == reference(1, prompts, GREEDY)
    finally:
        for (s, _), e in zip(servers, engines):
            s.stop(0)
            e.close()


def test_no_server_answering_names_every_address():
    with RolloutClient(["127.0.0.1:1", "127.0.0.1:2"], retries=2, backoff=0.01, control_timeout=2) as c:
        with pytest.raises(UnavailableError, match=r"127\.0\.0\.1:1 \(UNAVAILABLE.*127\.0\.0\.1:2 \(UNAVAILABLE"):
            c.generate(GenerateRequest([[1]], GREEDY))
        with pytest.raises(RolloutError, match=r"failed on 2 of 2 server\(s\): 127\.0\.0\.1:1"):
            c.update_weights({"w": np.zeros(2, np.float32)}, version=1)


def test_safetensors_directory_transport(served, cfg, weights, prompts, reference, tokens, tmp_path):
    import dataclasses

    from r1jax.models import save_pretrained

    CFG = cfg
    engine, addr = served
    save_pretrained(weights[1], CFG, tmp_path / "v1")
    # A valid checkpoint of another architecture: the first layer only.
    one_layer = {**weights[1], "layers": {k: v[:1] for k, v in weights[1]["layers"].items()}}
    save_pretrained(one_layer, dataclasses.replace(CFG, num_layers=1), tmp_path / "bad")
    with RolloutClient(addr) as c:
        with pytest.raises(InvalidRequestError, match=r"num_layers = 1, the served model has 2"):
            c.update_weights_from_dir(str(tmp_path / "bad"), version=1)
        assert engine.weight_version == 0
        c.update_weights_from_dir(str(tmp_path / "v1"), version=1)
        res = c.generate(GenerateRequest(prompts, GREEDY))
    assert {r.weight_version for r in res} == {1}
    assert tokens(res) == reference(1, prompts, GREEDY)


def test_embedded_mode_uses_the_same_engine_and_dataclasses(engine, weights, prompts, reference, tokens):
    res = engine.generate(GenerateRequest(prompts, SAMPLED))
    assert tokens(res) == reference(0, prompts, SAMPLED) and {r.weight_version for r in res} == {0}
    with pytest.raises(InvalidRequestError, match=r"prompts\[0\]\[0\]: token id 70"):
        engine.generate(GenerateRequest([[70]], GREEDY))
    bad = {**flatten_params(weights[1]), "embed": np.zeros((3, 3), np.float32)}
    with pytest.raises(InvalidRequestError, match=r"tensor 'embed' has shape \[3, 3\]"):
        engine.update_weights(bad, version=1)
    with pytest.raises(PreconditionError, match=r"tensor\(s\) missing: \['embed'\]"):
        engine.update_weights({k: v for k, v in flatten_params(weights[1]).items() if k != "embed"}, version=1)
    assert engine.weight_version == 0
    assert engine.update_weights(weights[1], version=1) == 1
    res = engine.generate(GenerateRequest(prompts, GREEDY))
    assert tokens(res) == reference(1, prompts, GREEDY) and {r.weight_version for r in res} == {1}
