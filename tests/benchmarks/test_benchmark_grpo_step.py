"""``benchmarks/grpo_step.py``'s FLOP count against counts made independently here: the weights of
the benchmark's model (r1jax's parameter tree of the same shape) and the causal attention pairs."""

import pathlib
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.grpo_step import MODEL, step_flops  # noqa: E402
from r1jax.models import ModelConfig, init_params  # noqa: E402


@pytest.fixture(scope="module")
def matmul_weights():
    """Weights that multiply every token's activations: the layer projections and the output head
    (not the embedding, a lookup; not norms or biases)."""
    config = ModelConfig(architecture="qwen2", vocab_size=MODEL["vocab_size"], hidden_size=MODEL["hidden_size"],
                         intermediate_size=MODEL["intermediate_size"], num_layers=MODEL["num_hidden_layers"],
                         num_heads=MODEL["num_attention_heads"], num_kv_heads=MODEL["num_key_value_heads"])
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return sum(int(np.prod(shapes["layers"][n].shape)) for n in names) + int(np.prod(shapes["lm_head"].shape))


def _attention_pairs(n_cached: int, n_new: int) -> int:
    """(query, key) pairs of n_new tokens after n_cached ones, causal, counted one by one."""
    return sum(n_cached + i + 1 for i in range(n_new))


def test_step_flops_counts_weights_and_causal_attention(matmul_weights):
    D, L = MODEL["hidden_size"], MODEL["num_hidden_layers"]
    pair = 4 * D * L  # 2 FLOPs for a score and 2 for the value update, per head dim, per layer
    prompts, group, p, t = 3, 4, 5, 7
    f = step_flops(prompts, group, p, t)
    samples = prompts * group
    generation = (prompts * (p * 2 * matmul_weights + _attention_pairs(0, p) * pair)
                  + samples * (t * 2 * matmul_weights + _attention_pairs(p, t) * pair))
    one_pass = samples * ((p + t) * 2 * matmul_weights + _attention_pairs(0, p + t) * pair)
    assert f["generation"] == pytest.approx(generation)
    assert f["reference_forward"] == pytest.approx(one_pass)
    assert f["policy_forward_backward"] == pytest.approx(3 * one_pass)
    assert f["total"] == pytest.approx(generation + 4 * one_pass)


def test_base_shape_is_about_a_hundred_gflop():
    """The Speed issue's profile put the minimum of the base shape at ~116 GFLOP."""
    total = step_flops(8, 8, 6.0, 64)["total"]
    assert 100e9 < total < 130e9


def test_scaling_ratios_pair_steps_of_the_same_round():
    """``--scaling`` reports each doubling as the median of per-round ratios: a slow round slows both
    shapes and cancels, where the ratio of the two medians would not."""
    from benchmarks.grpo_step import paired_ratio

    before, after = [1.0, 2.0, 10.0], [10.0, 4.0, 20.0]  # per-round ratios 10, 2, 2
    r = paired_ratio(before, after)
    assert r["median"] == 2.0 and r["rounds"] == 3
    assert np.median(after) / np.median(before) == 5.0  # what an unpaired ratio would say
    lo, hi = r["ci95"]
    assert lo == 2.0 and hi == 10.0  # resampled rounds: the median of 3 is 2 unless 10 is drawn twice
    steady = paired_ratio([1.0, 1.3, 0.9, 1.1], [2.0, 2.6, 1.8, 2.2])
    assert steady["median"] == pytest.approx(2.0) and steady["ci95"] == pytest.approx([2.0, 2.0])
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_ratio([1.0, 2.0], [2.0])


def test_speedups_over_trl_pair_the_rounds_of_the_lock_step():
    """Each side's speed-up over TRL: the ratio of the medians, and the median of the per-round ratios
    with its interval (warm-up rounds left out), which a slow round cannot tip."""
    from benchmarks.grpo_step import speedups_over_trl

    run = {"trl": {"median_s": 4.0, "step_seconds_by_round": [9.0, 2.0, 4.0, 8.0]},
           "r1jax_bf16": {"median_s": 2.0, "step_seconds_by_round": [1.0, 1.0, 2.0, 2.0]}}
    speedups_over_trl(run, ["r1jax_bf16", "trl"], warmup=1)
    side = run["r1jax_bf16"]
    assert side["speedup_over_trl"] == 2.0
    paired = side["speedup_over_trl_paired"]
    assert paired["median"] == 2.0 and paired["rounds"] == 3  # rounds 2/1, 4/2, 8/2; round 0 (9/1) is warm-up
    assert paired["ci95"][0] == 2.0 and paired["ci95"][1] == 4.0
    assert "speedup_over_trl" not in run["trl"]
