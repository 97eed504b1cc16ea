"""``benchmarks/kv_cache_dtype.py`` end to end at toy shapes: both caches timed on the same prompts, and
each one's sampler log-probs measured against the trainer's full forward."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "benchmarks/kv_cache_dtype.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_toy_shapes_time_both_caches_and_measure_the_log_prob_gap(tmp_path):
    out = tmp_path / "kv.json"
    proc = _run("--shapes", "2x2x8,2x2x16", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["benchmark"] == "kv_cache_dtype" and r["cores"] == 1
    assert [(x["prompts"], x["group"], x["new_tokens"]) for x in r["runs"]] == [(2, 2, 8), (2, 2, 16)]
    for run in r["runs"]:
        for dtype in ("float32", "bfloat16"):
            assert len(run["seconds"][dtype]) == 1 and run["median_s"][dtype] > 0
        gap = run["logprob_gap_to_trainer"]
        # A float32 cache holds what the trainer attends over: only summation order differs (5e-7 here).
        # A bfloat16 cache rounds keys and values, which moves the log-probs further (README: mean 9e-4,
        # max 5e-3); were the cache dtype ignored, the two gaps would be the same.
        assert gap["float32"]["max"] < 1e-4, gap
        assert 10 * gap["float32"]["mean"] < gap["bfloat16"]["mean"] and gap["bfloat16"]["max"] < 5e-2, gap
    assert len(r["time_growth_per_doubling_of_T"]["bfloat16"]) == 1  # the T doubling at 2 x 2 rows


def test_a_malformed_shape_is_refused_naming_the_flag():
    proc = _run("--shapes", "2x2", "--out", os.devnull, timeout=60)
    assert proc.returncode != 0 and "--shapes: '2x2'" in proc.stderr
