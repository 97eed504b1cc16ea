"""The ``Score`` RPC: reward models behind the rollout server (``r1jax serve --reward-model NAME=DIR``),
over real loopback gRPC with a real tiny reward model (the tiny base's trunk and a random head)."""

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

from procutil import start_jax_server

from r1jax.rollout import rollout_pb2 as pb
from r1jax.rollout import rollout_pb2_grpc as pb_grpc
from r1jax.rollout.client import RolloutClient
from r1jax.rollout.server import make_server
from r1jax.rollout.types import InvalidRequestError, RequestLimits

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "r1jax" / "assets" / "tiny_base"
PROMPTS = ["What is 2+3?", "Say hi", "x" * 300, "q", "Tell me a story about a cat"] * 7   # 35 pairs: 2 batches
RESPONSES = ["5", "hello there", "y", "z" * 50, ""] * 7


@pytest.fixture(scope="module")
def served_rms(rm_dir):
    from r1jax.rollout.reward_models import load_served_reward_models

    return load_served_reward_models({"helpful": str(rm_dir)})


def test_scores_over_rpc_equal_the_trainers_score_texts(engine, rm_dir, served_rms):
    """Two servers (the pairs split across them, so their batches differ from the local ones) give the
    trainer-side scores of reward_model_fn (the same score_texts, the same jitted function): the
    tolerance is 0 (bitwise), measured so on CPU."""
    from r1jax.train.components import reward_model_fn

    servers = [make_server(engine, reward_models=served_rms) for _ in range(2)]
    try:
        with RolloutClient([f"127.0.0.1:{p}" for _, p in servers]) as c:
            assert c.info().reward_models == ("helpful",)
            remote = c.score("helpful", PROMPTS, RESPONSES)
            assert c.score("helpful", [], []).shape == (0,)
        local = reward_model_fn(str(rm_dir))(PROMPTS, RESPONSES)
        assert remote.dtype == np.float32 and remote.shape == (len(PROMPTS),)
        np.testing.assert_array_equal(remote, local)
        assert np.ptp(remote[:5]) > 0  # the pairs score differently: the comparison is not vacuous
    finally:
        for s, _ in servers:
            s.stop(None)


def _code(stub, **request):
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(pb.ScoreRequest(**request), timeout=30)
    return e.value.code(), e.value.details()


def test_bad_score_requests_are_refused_naming_the_field_and_the_server_still_answers(engine, rm_dir, served_rms):
    from r1jax.rollout.reward_models import ServedRewardModel

    held, entered = threading.Event(), threading.Event()
    real = served_rms["helpful"]

    def blocking(prompts, responses):  # the real model, held until the test lets it go
        entered.set()
        held.wait(60)
        return real.scores(prompts, responses)

    models = {**served_rms, "held": ServedRewardModel("held", real.directory, blocking, real.tokens)}
    limits = RequestLimits(max_request_rows=4, max_request_tokens=200, max_queued_rows=4)
    server, port = make_server(engine, limits=limits, reward_models=models)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.RolloutStub(ch)
            ok = dict(model="helpful", prompts=PROMPTS[:2], responses=RESPONSES[:2])
            INVALID = grpc.StatusCode.INVALID_ARGUMENT
            code, msg = _code(stub, **{**ok, "model": "nope"})
            assert code == INVALID and msg.startswith("model: no reward model named 'nope'") and "'helpful'" in msg
            code, msg = _code(stub, **{**ok, "responses": RESPONSES[:1]})
            assert code == INVALID and msg == "responses: 1 responses for 2 prompts; send one response per prompt"
            code, msg = _code(stub, model="helpful")
            assert code == INVALID and msg.startswith("prompts: empty request")
            code, msg = _code(stub, model="helpful", prompts=PROMPTS[:5], responses=RESPONSES[:5])
            assert code == INVALID and msg == "prompts: 5 (prompt, response) pairs exceeds the limit max_request_rows = 4"
            code, msg = _code(stub, model="helpful", prompts=["x" * 300], responses=["y"])
            assert code == INVALID and msg.startswith("prompts + responses: ") and "max_request_tokens = 200" in msg
            # a full queue: 4 pairs admitted and held, one more is RESOURCE_EXHAUSTED
            four = dict(prompts=["a", "b", "c", "d"], responses=["1", "2", "3", "4"])
            first = stub.Score.future(pb.ScoreRequest(model="held", **four), timeout=60)
            assert entered.wait(20), first.exception(timeout=0) if first.done() else "not scored"
            code, msg = _code(stub, **{**ok, "prompts": PROMPTS[:1], "responses": RESPONSES[:1]})
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_rows = 4" in msg
            held.set()
            np.testing.assert_array_equal(np.asarray(first.result().scores, np.float32),
                                          real.score(four["prompts"], four["responses"]))
            # still serving, and the released rows are admitted again
            resp = stub.Score(pb.ScoreRequest(**ok), timeout=60)
            np.testing.assert_array_equal(np.asarray(resp.scores, np.float32), real.score(PROMPTS[:2], RESPONSES[:2]))
            assert stub.Health(pb.HealthRequest(), timeout=10).serving
        with RolloutClient(f"127.0.0.1:{port}", limits=limits) as c:  # the client checks before sending
            with pytest.raises(InvalidRequestError, match=r"responses: 1 responses for 2 prompts"):
                c.score("helpful", PROMPTS[:2], RESPONSES[:1])
            with pytest.raises(InvalidRequestError, match=r"prompts: 5 \(prompt, response\) pairs exceeds"):
                c.score("helpful", PROMPTS[:5], RESPONSES[:5])
            with pytest.raises(InvalidRequestError, match=r"model: no reward model named 'nope'"):
                c.score("nope", PROMPTS[:2], RESPONSES[:2])
    finally:
        held.set()
        server.stop(None)


def _parse(*argv):
    from r1jax.rollout.cli import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


@pytest.mark.parametrize("flag, message", [
    ("helpful", "--reward-model 'helpful': expected NAME=DIR (a name clients ask for, a directory made by `r1jax rm`)"),
    ("helpful=/nonexistent/rm", "--reward-model helpful=/nonexistent/rm: directory not found"),
    (f"helpful={TINY_BASE}", f"--reward-model helpful={TINY_BASE}: RM checkpoint {TINY_BASE} has no value head file"),
])
def test_a_bad_reward_model_flag_fails_in_one_line_before_serving(capsys, flag, message):
    from r1jax.rollout.cli import run_serve

    # the policy directory does not exist either: the reward model's error must come first
    assert run_serve(_parse("--model", "/nonexistent", "--port", "0", "--reward-model", flag)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"r1jax serve: {message}") and "\n" not in err


def test_reward_model_flags_repeat_and_names_are_unique():
    from r1jax.rollout.reward_models import parse_reward_model_flags

    args = _parse("--model", "m", "--reward-model", "a=/x", "--reward-model", "b=/y")
    assert parse_reward_model_flags(args.reward_model) == {"a": "/x", "b": "/y"}
    assert parse_reward_model_flags(_parse("--model", "m").reward_model) == {}
    with pytest.raises(ValueError, match=r"--reward-model 'a=/z': the name 'a' is given twice"):
        parse_reward_model_flags(["a=/x", "a=/z"])


def test_serve_process_with_a_reward_model_scores_like_the_trainer(cfg, weights, rm_dir, tmp_path):
    """`r1jax serve --reward-model helpful=DIR` in its own process: Info lists it, Score gives the
    trainer-side scores (bitwise)."""
    from r1jax.models import save_pretrained
    from r1jax.train.components import reward_model_fn

    save_pretrained(weights[0], cfg, tmp_path / "model")
    port_file = tmp_path / "port"
    proc, addr = start_jax_server(tmp_path / "model", port_file, "--reward-model", f"helpful={rm_dir}")
    try:
        with RolloutClient(addr) as c:
            assert c.info().reward_models == ("helpful",)
            remote = c.score("helpful", PROMPTS[:6], RESPONSES[:6])
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    np.testing.assert_array_equal(remote, reward_model_fn(str(rm_dir))(PROMPTS[:6], RESPONSES[:6]))
    assert proc.returncode == 0, out
    assert f"reward models helpful={rm_dir}" in out


def test_without_jax_the_server_imports_and_refuses_reward_models_in_one_line():
    """The vLLM engine's environment may lack JAX: the server, client and CLI import without it, and
    `--reward-model` is then refused before any engine loads (here JAX is made unimportable)."""
    script = (
        "import sys; sys.modules['jax'] = None\n"
        "import r1jax.rollout.server, r1jax.rollout.client, r1jax.rollout.reward_models\n"
        "from r1jax.rollout import cli\n"
        "sys.exit(cli.main(['--engine', 'vllm', '--model', '/nonexistent', '--reward-model', 'helpful=/rm']))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("r1jax serve: --reward-model: scoring reward models is JAX code, and JAX cannot be "
                          "imported in this environment") and "\n" not in err, err
