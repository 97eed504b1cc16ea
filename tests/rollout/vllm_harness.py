"""Helpers of the tests against a real vLLM (``make vllm-env``): one ``r1jax serve --engine vllm``
subprocess at a time, and the JAX references (the trainer's log-probs, the JAX engine's tokens).

The server runs in ``.venv-vllm`` (vLLM pins its own torch / transformers); the tests talk to it
with :class:`~r1jax.rollout.client.RolloutClient` from the main environment. It is started from
the repository root with the root on ``PYTHONPATH`` (what once broke vLLM's import: a root
folder named ``kernels``).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VLLM_PYTHON = os.environ.get("R1JAX_VLLM_PYTHON", os.path.join(ROOT, ".venv-vllm", "bin", "python"))
TINY_BASE = os.path.join(ROOT, "r1jax", "assets", "tiny_base")
START_TIMEOUT_S = 900.0
# |vLLM float32 log-prob - trainer log-prob| allowed (the trial measured 8e-6).
LOGPROB_ATOL = 1e-4


def require_vllm_env() -> None:
    """Skips (naming the missing environment) unless ``make vllm-env`` has been run."""
    if not os.access(VLLM_PYTHON, os.X_OK):
        pytest.skip(f"no vLLM environment: {VLLM_PYTHON} is missing (run `make vllm-env`)")


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children first)."""
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


class VllmServer:
    """``r1jax serve --engine vllm`` in a subprocess on an ephemeral loopback port.

    Args:
        model: the checkpoint directory.
        log_path: where the server's stdout / stderr go (read back when it fails to start).
        *extra: more ``serve`` flags.
    """

    def __init__(self, model: str, log_path: str, *extra: str):
        self.log_path = log_path
        port_file = f"{log_path}.port"
        env = {**os.environ, "PYTHONPATH": ROOT, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
        cmd = [VLLM_PYTHON, "-m", "r1jax.cli", "serve", "--engine", "vllm", "--model", model, "--port", "0",
               "--port-file", port_file, "--kv-cache-gib", "1", "--enforce-eager", *extra]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm server exited with {self.proc.returncode} before serving:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vllm server not serving after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)
        with open(port_file) as f:
            self.address = f"127.0.0.1:{int(f.read())}"

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the server and its vLLM processes if it does not exit."""
        if self.proc.poll() is None:
            kids = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for pid in [self.proc.pid, *kids]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(timeout=30)
        self._log.close()


@functools.lru_cache(maxsize=8)
def _load(model_dir: str):
    from r1jax.models import load_pretrained

    return load_pretrained(model_dir)


def trainer_logprobs(model_dir: str, prompt, completion, temperature: float) -> np.ndarray:
    """The trainer's log-probs of ``completion`` after ``prompt``: ``log_softmax(logits / T)``
    (T = 1 for greedy), computed as ``r1jax.train.steps.policy_logprobs`` does."""
    import jax.numpy as jnp

    from r1jax.models import forward, lm_head_weight
    from r1jax_kernels import token_logprobs

    params, cfg = _load(model_dir)
    tokens = jnp.asarray([list(prompt) + list(completion)], jnp.int32)
    hidden = forward(params, cfg, tokens)
    lp = token_logprobs(hidden[:, :-1], lm_head_weight(params, cfg), tokens[:, 1:],
                        temperature=temperature if temperature > 0 else 1.0)
    return np.asarray(lp[0, len(prompt) - 1:])


def max_logprob_gap(results, prompts, model_dir: str, temperature: float) -> float:
    """The largest |served log-prob - trainer log-prob| over every sampled token of ``results``."""
    gap = 0.0
    for r in results:
        for s in r.samples:
            want = trainer_logprobs(model_dir, prompts[r.prompt_index], s.token_ids.tolist(), temperature)
            gap = max(gap, float(np.max(np.abs(s.logprobs - want))))
    return gap


def trainer_log_softmax(model_dir: str, prompt, completion, temperature: float) -> np.ndarray:
    """``log_softmax(logits / T)`` over the whole vocabulary at each completion position, ``[len, V]``."""
    import jax
    import jax.numpy as jnp

    from r1jax.models import logits

    params, cfg = _load(model_dir)
    tokens = jnp.asarray([list(prompt) + list(completion)], jnp.int32)
    z = logits(params, cfg, tokens)[0, len(prompt) - 1:-1].astype(jnp.float32)
    return np.asarray(jax.nn.log_softmax(z / temperature, axis=-1))


def jax_engine_tokens(model_dir: str, request) -> list[list[list[int]]]:
    """Per prompt, the token lists the JAX engine produces for ``request``."""
    from r1jax.rollout.jax_engine import JaxEngine

    engine = JaxEngine.from_pretrained(model_dir, max_batch_rows=8, min_batch_bucket=8, decode_chunk=4)
    try:
        return [[s.token_ids.tolist() for s in r.samples] for r in engine.generate(request)]
    finally:
        engine.close()


def write_checkpoint(tensors: dict, like: str, directory: str) -> str:
    """Writes ``tensors`` as ``model.safetensors`` with the ``*.json`` files of checkpoint ``like``."""
    import shutil

    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(directory, "model.safetensors"))
    for f in os.listdir(like):
        if f.endswith(".json"):
            shutil.copy(os.path.join(like, f), os.path.join(directory, f))
    return directory


def perturbed(tensors: dict, seed: int, scale: float = 0.3) -> dict:
    """Each tensor times ``1 + scale * N(0, 1)`` (elementwise): new weights whose outputs differ."""
    rng = np.random.default_rng(seed)
    return {k: (v * (1 + scale * rng.standard_normal(v.shape))).astype(v.dtype) for k, v in tensors.items()}
