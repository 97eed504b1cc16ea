"""Worker pool, timeouts, failure accounting and reward composition (one shared pool per module)."""

import concurrent.futures
import logging
import os
import pathlib
import sys

import numpy as np
import pytest

from r1jax.config import ConfigError, from_dict
from r1jax.rewards import (
    RewardComponent,
    RewardConfig,
    RewardPool,
    RewardScorer,
    RewardSpec,
    RewardTask,
    math_accuracy,
)

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # also under --import-mode=importlib
import rewards_test_helpers as H  # noqa: E402

GRACE_S = 1.0

# (completion, reference, expected) — expected values worked out by hand.
MATH_CASES = [
    (r"<think>r</think><answer>\frac{1}{2}</answer>", "0.5", 1.0),
    (r"so \boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{5\text{ cm}}", "5", 1.0),
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1.0),
    (r"\boxed{0.4}", "1/2", 0.0),
    (r"\boxed{x+2}", "x+1", 0.0),
    ("no answer", "3", 0.0),
]


@pytest.fixture(scope="module")
def pool():
    with pytest.MonkeyPatch.context() as mp:  # workers are fresh interpreters: they need the helpers' path
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        p = RewardPool(2, grace_s=GRACE_S, memory_limit_mb=2048)
    yield p
    p.close()


def _tasks(fn, items, timeout=60.0):  # generous: the machine may be loaded; only deliberate timeouts are short
    return [RewardTask(fn, "", c, r, timeout) for c, r in items]


def test_math_in_process_pool(pool):
    res = pool.map(_tasks(math_accuracy, [(c, r) for c, r, _ in MATH_CASES]))
    assert [r.status for r in res] == ["ok"] * len(MATH_CASES)
    assert [r.value for r in res] == [e for _, _, e in MATH_CASES]


def test_math_from_worker_threads():
    # math-verify's own signal.alarm timeouts raise outside the main thread; ours are disabled there.
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda case: math_accuracy("", case[0], case[1]), MATH_CASES * 2))
    assert got == [e for _, _, e in MATH_CASES] * 2


def test_soft_timeout_scores_zero_and_keeps_worker(pool):
    before = pool.restarts
    res = pool.map(_tasks(H.sleepy_reward, [("a", 60.0)], timeout=0.3) + _tasks(H.sleepy_reward, [("b", 0.0)]))
    assert res[0].status == "timeout" and res[0].value == 0.0 and "soft" in res[0].message
    assert res[1].status == "ok" and res[1].value == 1.0
    assert pool.restarts == before  # the worker survived the soft timeout


def test_soft_timeout_cannot_be_swallowed_by_except_exception(pool):
    res = pool.map(_tasks(H.swallowing_sleepy_reward, [("a", 60.0)], timeout=0.3))
    assert res[0].status == "timeout" and res[0].value == 0.0


def test_hard_timeout_kills_a_stuck_worker(pool):
    before = pool.restarts
    res = pool.map(_tasks(H.uninterruptible_reward, [("a", 60.0)], timeout=0.2) + _tasks(H.constant_one, [("b", None)]))
    assert res[0].status == "timeout" and res[0].value == 0.0 and "killed" in res[0].message
    assert res[1] .status == "ok" and res[1].value == 1.0
    assert pool.restarts == before + 1
    again = pool.map(_tasks(math_accuracy, [(r"\boxed{2}", "2")] * 3))  # the replacement works
    assert [r.value for r in again] == [1.0] * 3


def test_pathological_math_input_times_out(pool):
    # sympy evaluates 10^(10^10) exactly (10 billion digits): hangs for minutes without a timeout.
    res = pool.map(_tasks(math_accuracy, [(r"\boxed{10^{10^{10}}}", "1"), (r"\boxed{(x+1)^{100000}}", "1")], timeout=0.5))
    assert [r.status for r in res] == ["timeout", "timeout"]
    assert [r.value for r in res] == [0.0, 0.0]
    ok = pool.map(_tasks(math_accuracy, [(c, r) for c, r, _ in MATH_CASES]))  # workers still sound
    assert [r.value for r in ok] == [e for _, _, e in MATH_CASES]


def test_dead_worker_is_an_error_and_replaced(pool):
    before = pool.restarts
    res = pool.map(_tasks(H.dying_reward, [("a", None)]) + _tasks(H.constant_one, [("b", None)] * 3))
    assert res[0].status == "error" and "died" in res[0].message and res[0].value == 0.0
    assert [r.value for r in res[1:]] == [1.0] * 3
    assert pool.restarts == before + 1


def test_bad_return_values_are_errors(pool):
    res = pool.map(_tasks(H.nan_reward, [("a", None)]) + _tasks(H.string_reward, [("a", None)]))
    assert [r.status for r in res] == ["error", "error"]
    assert "non-finite" in res[0].message and "str" in res[1].message


def test_unpicklable_reference_is_an_error(pool):
    res = pool.map([RewardTask(H.constant_one, "", "x", lambda: 0, 60.0), RewardTask(H.constant_one, "", "y", None, 60.0)])
    assert res[0].status == "error" and "send" in res[0].message
    assert res[1].status == "ok"


# ------------------------------------------------------------------------------------ composition

SPECS = {
    "one": RewardSpec("one", H.constant_one, "always 1"),
    "length": RewardSpec("length", H.length_reward, "len(completion)"),
    "crashy": RewardSpec("crashy", H.crashing_reward, "raises on 'crash'"),
    "sleepy": RewardSpec("sleepy", H.sleepy_reward, "sleeps", default_timeout_s=2.0),
}


def _scorer(pool, *components, **cfg):
    return RewardScorer(RewardConfig(components=tuple(components), **cfg), registry=SPECS, pool=pool)


def test_weighted_sum_per_component_arrays(pool):
    scorer = _scorer(pool, RewardComponent("one", 0.5), RewardComponent("length", 2.0))
    out = scorer.score(["p"] * 3, ["a", "bb", "cccc"], [None] * 3)
    np.testing.assert_array_equal(out.components["one"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out.components["length"], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(out.total, [0.5 + 2.0, 0.5 + 4.0, 0.5 + 8.0])
    assert out.total.dtype == np.float32 and out.components["one"].dtype == np.float32
    assert out.num_errors == {"one": 0, "length": 0} and out.num_timeouts == {"one": 0, "length": 0}
    m = out.metrics()
    assert m["reward/total_mean"] == pytest.approx(np.mean([2.5, 4.5, 8.5]))
    assert m["reward/length/mean"] == pytest.approx(7 / 3) and m["reward/length/weight"] == 2.0


def test_schedules(pool):
    scorer = _scorer(
        pool,
        RewardComponent("one", 1.0),
        RewardComponent("length", 10.0, start_step=5, end_step=8),
        RewardComponent("crashy", 100.0, last_n_steps=2),
    )
    def total(step):
        return float(scorer.score(["p"], ["ab"], [None], step=step, total_steps=10).total[0])
    assert [total(s) for s in (0, 4, 5, 7, 8, 9)] == [1.0, 1.0, 21.0, 21.0, 101.0, 101.0]
    out = scorer.score(["p"], ["ab"], [None], step=0, total_steps=10)
    assert set(out.components) == {"one"}  # inactive components are not computed
    assert out.weights == {"one": 1.0, "length": 0.0, "crashy": 0.0}
    with pytest.raises(ValueError, match="total_steps"):
        scorer.score(["p"], ["ab"], [None], step=0)


def test_crashing_reward_scores_zero_counted_and_logged(pool, caplog):
    scorer = _scorer(pool, RewardComponent("crashy", 1.0), RewardComponent("one", 1.0))
    with caplog.at_level(logging.WARNING, logger="r1jax.rewards"):
        out = scorer.score(["p"] * 4, ["fine", "crash", "ok", "crash again"], [None] * 4, step=7)
    np.testing.assert_array_equal(out.components["crashy"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(out.failed["crashy"], [False, True, False, True])
    np.testing.assert_array_equal(out.total, [2.0, 1.0, 2.0, 1.0])
    assert out.num_errors["crashy"] == 2 and out.num_timeouts["crashy"] == 0
    assert out.metrics()["reward/crashy/errors"] == 2.0
    logged = [r.getMessage() for r in caplog.records if r.name == "r1jax.rewards"]
    assert any("'crashy' error on sample 1 (step 7)" in m and "deliberate failure" in m for m in logged)


def test_timeouts_counted_with_reward_default_timeout(pool):
    scorer = _scorer(pool, RewardComponent("sleepy", 1.0), RewardComponent("one", 1.0))
    assert scorer.timeout_for(scorer.config.components[0]) == 2.0  # the spec's default beats the config's
    out = scorer.score(["p"] * 2, ["a", "b"], [0.0, 60.0])
    np.testing.assert_array_equal(out.components["sleepy"], [1.0, 0.0])
    assert out.num_timeouts["sleepy"] == 1 and out.num_errors["sleepy"] == 0
    comp = RewardComponent("sleepy", 1.0, timeout_s=3.0)
    assert _scorer(pool, comp).timeout_for(comp) == 3.0


def test_external_rewards_from_precomputed_scores(pool):
    scorer = RewardScorer(
        RewardConfig(components=(RewardComponent("one", 1.0), RewardComponent("helpfulness", 0.5))),
        registry=SPECS, pool=pool,
    )
    out = scorer.score(["p"] * 3, ["a", "b", "c"], [None] * 3, precomputed={"helpfulness": [2.0, np.nan, -4.0]})
    np.testing.assert_array_equal(out.components["helpfulness"], [2.0, 0.0, -4.0])
    np.testing.assert_array_equal(out.total, [2.0, 1.0, -1.0])
    assert out.num_errors["helpfulness"] == 1
    with pytest.raises(ValueError, match="precomputed"):
        scorer.score(["p"], ["a"], [None])
    with pytest.raises(ValueError, match="2 scores for 3"):
        scorer.score(["p"] * 3, ["a"] * 3, [None] * 3, precomputed={"helpfulness": [1.0, 2.0]})
    with pytest.raises(ValueError, match="not an external"):
        scorer.score(["p"], ["a"], [None], precomputed={"helpfulness": [1.0], "one": [1.0]})


def test_builtin_rewards_through_scorer_with_code_sandbox(pool):
    cfg = RewardConfig(components=(
        RewardComponent("math_accuracy", 1.0),
        RewardComponent("format_strict", 0.5),
    ), timeout_s=60.0)
    scorer = RewardScorer(cfg, pool=pool)
    comps = ["<think>half</think> <answer>\\frac{1}{2}</answer>", "<think>x</think><answer>0.3</answer> extra"]
    out = scorer.score(["q", "q"], comps, ["0.5", "0.5"])
    np.testing.assert_array_equal(out.total, [1.5, 0.0])
    code = RewardScorer(RewardConfig(components=(RewardComponent("code_tests", 1.0),)), pool=pool)
    prog = "<answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>"
    out = code.score(["q"], [prog], [{"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]}])
    assert out.components["code_tests"][0] == 0.5 and out.num_errors["code_tests"] == 0


def test_inline_mode_counts_failures_too():
    scorer = RewardScorer(
        RewardConfig(components=(RewardComponent("crashy", 1.0), RewardComponent("sleepy", 1.0)), num_workers=0),
        registry=SPECS,
    )
    out = scorer.score(["p"] * 2, ["crash", "fine"], [60.0, 0.0])  # main thread: the soft timeout works
    np.testing.assert_array_equal(out.components["crashy"], [0.0, 1.0])
    np.testing.assert_array_equal(out.components["sleepy"], [0.0, 1.0])
    assert out.num_errors["crashy"] == 1 and out.num_timeouts["sleepy"] == 1


def test_mismatched_batch_and_unknown_reward():
    scorer = RewardScorer(RewardConfig(components=(RewardComponent("one", 1.0),), num_workers=0), registry=SPECS)
    with pytest.raises(ValueError, match="2 prompts, 1 completions"):
        scorer.score(["a", "b"], ["c"], [None])
    with pytest.raises(KeyError, match="unknown reward 'missing'"):
        RewardScorer(RewardConfig(components=(RewardComponent("missing", 1.0),)))


# ------------------------------------------------------------------------------------ config


def test_config_from_dict_and_validation():
    cfg = from_dict(RewardConfig, {
        "timeout_s": 3,
        "components": [
            {"name": "math_accuracy", "weight": 1.0},
            {"name": "language_consistency", "weight": 0.1, "start_step": 100, "end_step": 200},
            {"name": "helpfulness", "weight": 0.5, "last_n_steps": 50},
        ],
    })
    assert cfg.components[1] == RewardComponent("language_consistency", 0.1, start_step=100, end_step=200)
    assert cfg.timeout_s == 3.0 and hash(cfg)
    with pytest.raises(ConfigError, match="listed twice"):
        from_dict(RewardConfig, {"components": [{"name": "countdown"}, {"name": "countdown"}]})
    with pytest.raises(ConfigError, match=r"components\[0\].*end_step"):
        from_dict(RewardConfig, {"components": [{"name": "countdown", "start_step": 5, "end_step": 5}]})
    with pytest.raises(ConfigError, match="last_n_steps"):
        from_dict(RewardConfig, {"components": [{"name": "countdown", "start_step": 5, "last_n_steps": 5}]})
    with pytest.raises(ConfigError, match="timeout_s"):
        from_dict(RewardConfig, {"timeout_s": 0})
    with pytest.raises(ConfigError, match="at least one"):
        from_dict(RewardConfig, {"components": []})
