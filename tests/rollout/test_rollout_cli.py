"""`r1jax serve` (r1jax.rollout.cli): flags, the remote-bind refusal, and a real server process."""

import argparse
import dataclasses
import signal

import pytest
from procutil import start_jax_server

from r1jax.rollout.cli import add_serve_parser, run_serve
from r1jax.rollout.client import RolloutClient
from r1jax.rollout.types import GenerateRequest, InvalidRequestError, RequestLimits
from r1jax.sampling import SamplingParams


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_flags_and_defaults():
    args = _parse("--model", "DIR")
    assert (args.engine, args.host, args.port, args.allow_remote, args.token) == ("jax", "127.0.0.1", 50051, False, None)
    args = _parse("--engine", "vllm", "--model", "m", "--host", "0.0.0.0", "--allow-remote", "--token", "t",
                  "--port", "0", "--tensor-parallel-size", "2")
    assert args.engine == "vllm" and args.allow_remote and args.token == "t" and args.tensor_parallel_size == 2
    with pytest.raises(SystemExit):
        _parse("--engine", "tpu", "--model", "m")
    d = RequestLimits()
    assert (args.max_n, args.max_request_rows, args.max_request_tokens, args.max_queued_rows) == \
        (d.max_n, d.max_request_rows, d.max_request_tokens, d.max_queued_rows)
    args = _parse("--model", "m", "--max-n", "8", "--max-request-rows", "64", "--max-request-tokens", "4096",
                  "--max-queued-rows", "128")
    assert (args.max_n, args.max_request_rows, args.max_request_tokens, args.max_queued_rows) == (8, 64, 4096, 128)


@pytest.mark.parametrize("argv, message", [
    (("--max-n", "0"), "--max-n: must be an int >= 1, got 0"),
    (("--max-request-rows", "64", "--max-queued-rows", "8"),
     "--max-queued-rows (8) must be >= --max-request-rows (64): a request that may be sent must fit the queue"),
    (("--weight-version", "-1"), "--weight-version must be in [0, 2**63 - 1], got -1"),
    (("--weight-version", str(2**63)), f"--weight-version must be in [0, 2**63 - 1], got {2**63}"),
    (("--decode-window", "0"), "--decode-window must be >= 1, got 0"),
    (("--drop-finished-every", "-2"), "--drop-finished-every must be >= 1, got -2"),
    (("--max-batch-rows", "0"), "--max-batch-rows must be >= 1, got 0"),
    (("--engine", "vllm", "--compute-dtype", "bfloat16"),
     "--compute-dtype is a jax engine flag (vLLM has its own scheduling)"),
])
def test_bad_limits_and_versions_are_refused_before_loading_anything(capsys, argv, message):
    assert run_serve(_parse("--model", "/nonexistent", *argv)) == 2
    assert capsys.readouterr().err.strip() == f"r1jax serve: {message}"


def test_jax_sampler_flags_reach_the_served_engine(cfg, weights, prompts, tmp_path):
    from r1jax.models import save_pretrained
    from r1jax.rollout.cli import _engine_kwargs
    from r1jax.rollout.engine import make_engine
    from r1jax.sampling import Sampler

    save_pretrained(weights[0], cfg, tmp_path / "model")
    args = _parse("--model", str(tmp_path / "model"), "--max-batch-rows", "8", "--compute-dtype", "bfloat16",
                  "--cache-dtype", "bfloat16", "--drop-finished-every", "4", "--decode-window", "8")
    engine = make_engine("jax", args.model, **_engine_kwargs(args))
    try:
        assert engine.config.compute_dtype == "bfloat16"
        assert (engine.sampler.drop_finished_every, engine.sampler.decode_window) == (4, 8)
        assert engine.sampler.cache_dtype == "bfloat16"
        greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
        served = [[s.token_ids.tolist() for s in r.samples] for r in engine.generate(GenerateRequest(prompts, greedy))]
    finally:
        engine.close()
    # the cache started at prompt + 8 slots and grew: more than one cache size was compiled
    assert len({s.cache_len for s in engine.sampler.compiled_shapes}) > 1
    bf16 = Sampler(dataclasses.replace(cfg, compute_dtype="bfloat16"), max_batch_rows=8, cache_dtype="bfloat16")
    assert served == [[s.token_ids.tolist() for s in g] for g in bf16.generate(weights[0], prompts, greedy)]


def test_remote_bind_is_refused_before_loading_anything(monkeypatch, capsys):
    monkeypatch.delenv("R1JAX_ROLLOUT_TOKEN", raising=False)
    # The model directory does not exist: the refusal must come first.
    assert run_serve(_parse("--model", "/nonexistent", "--host", "0.0.0.0")) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert run_serve(_parse("--model", "/nonexistent", "--host", "0.0.0.0", "--allow-remote")) == 2
    assert "token" in capsys.readouterr().err


def test_serve_process_answers_and_stops_cleanly(cfg, weights, reference, tokens, prompts, tmp_path):
    from r1jax.models import save_pretrained

    save_pretrained(weights[0], cfg, tmp_path / "model")
    port_file = tmp_path / "port"
    proc, addr = start_jax_server(tmp_path / "model", port_file, "--max-batch-rows", "8", "--weight-version", "5",
                                  "--max-n", "4", "--decode-window", "8")
    try:
        with RolloutClient(addr) as c:
            info = c.info()
            assert (info.engine, info.vocab_size, info.max_length, info.weight_version) == ("jax", 64, 64, 5)
            greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
            res = c.generate(GenerateRequest(prompts, greedy))
        with RolloutClient(addr, limits=None) as c:  # the server process applies its --max-n
            with pytest.raises(InvalidRequestError, match=r"sampling\.n: 5 exceeds the limit max_n = 4"):
                c.generate(GenerateRequest(prompts, SamplingParams(n=5, max_new_tokens=8)))
        assert tokens(res) == reference(0, prompts, greedy) and {r.weight_version for r in res} == {5}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "jax engine" in out and f"127.0.0.1:{port_file.read_text()}" in out
    assert "limits: max n 4, 16384 rows and 33554432 tokens per request, 65536 rows queued; --decode-window 8" in out


def test_a_serve_process_stops_on_sigterm_sent_the_moment_it_is_announced(cfg, weights, tmp_path):
    """Once the port file exists the server's SIGTERM handling is in place: a signal sent at once stops
    it cleanly (exit 0), never kills it with the default action or leaves it hanging."""
    from r1jax.models import save_pretrained

    save_pretrained(weights[0], cfg, tmp_path / "model")
    proc, _ = start_jax_server(tmp_path / "model", tmp_path / "port")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


@pytest.mark.parametrize("sender", ["main", "thread"])
def test_stop_signals_wake_the_waiting_main_thread_from_any_thread(sender):
    """`_StopSignals.wait` returns the signal's number whether it arrived before the wait began or
    landed on another thread (its C handler writes to a socket; no lock is taken in a handler)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import signal, threading
        from r1jax.rollout.cli import _StopSignals
        stop = _StopSignals()
        def send():  # to the thread it runs on
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        if {sender!r} == "thread":
            t = threading.Thread(target=send)
            t.start()
            t.join()
        else:
            send()
        print(stop.wait() == signal.SIGTERM)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
