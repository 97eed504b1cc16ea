"""Per-domain routing of reward components (RewardComponent.domains): a component scores only the
samples of its domains, is not run on the others (they get 0) and counts no failures there."""

from __future__ import annotations

import numpy as np
import pytest

from r1jax.config import ConfigError, from_dict
from r1jax.rewards import RewardComponent, RewardConfig, RewardScorer
from r1jax.rewards.registry import RewardSpec

CALLS: list[str] = []


def only_math(prompt, completion, reference):
    """A rule reward that must never see a general prompt."""
    CALLS.append(prompt)
    if prompt.startswith("general"):
        raise AssertionError("a math-domain reward was run on a general prompt")
    return float(completion.strip() == str(reference))


SPECS = {"only_math": RewardSpec("only_math", only_math, "test", "rule", accuracy=True),
         "rm": RewardSpec("rm", None, "test", "external")}


def test_components_score_only_their_domains():
    CALLS.clear()
    config = RewardConfig(components=(RewardComponent("only_math", 1.0, domains=("arithmetic",)),
                                      RewardComponent("rm", 0.5, domains=("general",))), num_workers=0)
    scorer = RewardScorer(config, registry=SPECS)
    domains = ["arithmetic", "general", "arithmetic", "general"]
    out = scorer.score(prompts=["math 1+1", "general hi", "math 2+2", "general bye"],
                       completions=["2", "hello", "5", "bye"], references=[2, None, 4, None],
                       precomputed={"rm": [9.0, 0.25, np.nan, 0.75]}, domains=domains)
    assert CALLS == ["math 1+1", "math 2+2"]  # never run outside its domain
    np.testing.assert_array_equal(out.components["only_math"], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out.components["rm"], [0.0, 0.25, 0.0, 0.75])  # 9 and NaN are not its samples
    assert out.num_errors == {"only_math": 0, "rm": 0}
    np.testing.assert_allclose(out.total, [1.0, 0.125, 0.0, 0.375])


def test_a_failure_inside_the_domain_still_counts():
    config = RewardConfig(components=(RewardComponent("rm", 1.0, domains=("general",)),), num_workers=0)
    out = RewardScorer(config, registry=SPECS).score(
        prompts=["a", "b"], completions=["x", "y"], references=[None, None], precomputed={"rm": [np.nan, 1.0]},
        domains=["general", "arithmetic"])
    assert out.num_errors == {"rm": 1} and out.failed["rm"].tolist() == [True, False]


def test_domain_limited_components_need_the_samples_domains():
    config = RewardConfig(components=(RewardComponent("only_math", 1.0, domains=("arithmetic",)),), num_workers=0)
    with pytest.raises(ValueError, match="scores domains.*pass the samples' domains"):
        RewardScorer(config, registry=SPECS).score(prompts=["p"], completions=["1"], references=[1])


def test_a_missing_reward_model_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"components\[0\]: model: reward-model directory not found: .*nope"):
        from_dict(RewardConfig, {"components": [{"name": "helpfulness", "model": str(tmp_path / "nope")}]})


def test_a_reward_model_scores_its_components_samples_with_the_raw_prompts():
    seen = []

    def model(prompts, completions):
        seen.append((list(prompts), list(completions)))
        return [len(c) for c in completions]

    config = RewardConfig(components=(RewardComponent("rm", 1.0, domains=("general",), last_n_steps=2),), num_workers=0)
    scorer = RewardScorer(config, registry=SPECS, models={"rm": model})
    kwargs = dict(prompts=["<t>hi", "<t>1+1", "<t>bye"], completions=["abc", "2", "x"], references=[None, 2, None],
                  domains=["general", "arithmetic", "general"], model_prompts=["hi", "1+1", "bye"], total_steps=10)
    early = scorer.score(step=7, **kwargs)
    assert seen == [] and early.weights == {"rm": 0.0}  # inactive before the last 2 steps: not run
    late = scorer.score(step=8, **kwargs)
    assert seen == [(["hi", "bye"], ["abc", "x"])]
    np.testing.assert_array_equal(late.components["rm"], [3.0, 0.0, 1.0])


def test_a_reward_model_that_raises_scores_zero_and_is_counted(caplog):
    def broken(prompts, completions):
        raise RuntimeError("out of memory")

    config = RewardConfig(components=(RewardComponent("rm", 1.0),), num_workers=0)
    out = RewardScorer(config, registry=SPECS, models={"rm": broken}).score(
        prompts=["a", "b"], completions=["x", "y"], references=[None, None])
    np.testing.assert_array_equal(out.total, [0.0, 0.0])
    assert out.num_errors == {"rm": 2}
    assert any("reward model 'rm' failed on 2 samples" in m for m in caplog.messages)
