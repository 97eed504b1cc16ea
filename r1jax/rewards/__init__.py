"""Rewards of the DeepSeek-R1 recipe: rule-based rewards, their composition, reward models.

Every rule reward is a plain function ``fn(prompt: str, completion: str, reference) -> float``
registered by name (:func:`list_rewards` shows them with their descriptions):

==========================  ====================================================================
``math_accuracy``           final answer (``<answer>`` / last ``\\boxed{}``) == reference, math-verify
``format_strict``           exactly ``<think> .. </think> <answer> .. </answer>``
``format_lenient``          a ``<think>`` block followed by an ``<answer>`` block somewhere
``language_consistency``    share of CoT words in the prompt's (or reference's) language, eq. 7
``language_consistency_en`` ... with English as the target
``language_consistency_zh`` ... with Chinese as the target
``countdown``               expression reaching the target with each number once (TinyZero)
``multiple_choice``         chosen option letter == reference letter
``code_tests``              share of test cases the program passes in the sandbox
``exact_match``             final answer == reference string (case and edge punctuation ignored)
``domain_verifier``         a mixture example's own verifier (``reference["verifier"]``) on it
``helpfulness``, ``safety`` external: reward-model scores passed in by the caller
==========================  ====================================================================

Composition and execution: :class:`RewardConfig` / :class:`RewardComponent` (weights, step
schedules, timeouts), :class:`RewardScorer` (worker processes with per-sample timeouts; failures
score 0, are counted and logged). Reward models and their losses (JAX) are in
:mod:`r1jax.rewards.reward_model`, imported lazily so reward workers never import JAX.
"""

from __future__ import annotations

from r1jax.rewards.code_exec import code_tests
from r1jax.rewards.countdown import countdown
from r1jax.rewards.domain import domain_verifier
from r1jax.rewards.exact_match import exact_match
from r1jax.rewards.format_reward import format_lenient, format_strict
from r1jax.rewards.language import (
    detect_language,
    language_consistency,
    language_consistency_en,
    language_consistency_zh,
)
from r1jax.rewards.math_accuracy import math_accuracy
from r1jax.rewards.multiple_choice import multiple_choice
from r1jax.rewards.pool import RewardPool, RewardTask, RewardTimeout, TaskResult
from r1jax.rewards.registry import (
    RewardSpec,
    get_reward,
    list_rewards,
    register_external_reward,
    register_reward,
)
from r1jax.rewards.sandbox import SandboxError, SandboxLimits, SandboxResult, available_isolation, run_python
from r1jax.rewards.scorer import RewardComponent, RewardConfig, RewardOutput, RewardScorer

__all__ = [
    "math_accuracy",
    "format_strict",
    "format_lenient",
    "language_consistency",
    "language_consistency_en",
    "language_consistency_zh",
    "detect_language",
    "countdown",
    "multiple_choice",
    "code_tests",
    "exact_match",
    "domain_verifier",
    "RewardSpec",
    "register_reward",
    "register_external_reward",
    "get_reward",
    "list_rewards",
    "RewardComponent",
    "RewardConfig",
    "RewardOutput",
    "RewardScorer",
    "RewardPool",
    "RewardTask",
    "TaskResult",
    "RewardTimeout",
    "SandboxLimits",
    "SandboxResult",
    "SandboxError",
    "run_python",
    "available_isolation",
    # lazily imported (JAX):
    "ScalarRewardModel",
    "ValueHeadRewardModel",
    "reward_model_scores",
    "bradley_terry_loss",
    "pointwise_bce_loss",
    "pairwise_accuracy",
]

_BUILTINS = (  # (name, function, description, default per-sample timeout or None)
    ("math_accuracy", math_accuracy,
     "1 if the final answer (<answer> or last \\boxed{}) equals the reference (math-verify), else 0", None),
    ("format_strict", format_strict,
     "1 if the response is exactly <think> .. </think> <answer> .. </answer>, else 0", None),
    ("format_lenient", format_lenient,
     "1 if a <think> block is followed by a non-blank <answer> block, else 0", None),
    ("language_consistency", language_consistency,
     "share in [0, 1] of CoT words in the target language (reference or prompt), eq. 7", None),
    ("language_consistency_en", language_consistency_en, "share in [0, 1] of CoT words in English", None),
    ("language_consistency_zh", language_consistency_zh,
     "share in [0, 1] of CoT words in Chinese (one per ideograph)", None),
    ("countdown", countdown,
     "1 if the answer expression reaches the target using each number exactly once, else 0", None),
    ("multiple_choice", multiple_choice, "1 if the chosen option letter equals the reference letter, else 0", None),
    ("code_tests", code_tests, "share in [0, 1] of test cases the program passes in the sandbox", 120.0),
    ("exact_match", exact_match,
     "1 if the final answer equals the reference string (case, blanks, edge punctuation ignored), else 0", None),
    ("domain_verifier", domain_verifier,
     "a data.mixture example's own verifier reward on its reference (0 for verifier none)", 120.0),
)

# rewards that score correctness (1 = correct)
_ACCURACY = ("math_accuracy", "countdown", "multiple_choice", "code_tests", "exact_match", "domain_verifier")
for _name, _fn, _desc, _timeout in _BUILTINS:
    register_reward(_name, _fn, description=_desc, default_timeout_s=_timeout, accuracy=_name in _ACCURACY,
                    overwrite=True)
for _name, _desc in (
    ("helpfulness", "external: helpfulness reward-model score (pairwise-trained), passed as precomputed"),
    ("safety", "external: safety reward-model score (pointwise-trained), passed as precomputed"),
):
    register_external_reward(_name, description=_desc, overwrite=True)

_LAZY = {
    "ScalarRewardModel", "ValueHeadRewardModel", "reward_model_scores", "bradley_terry_loss",
    "pointwise_bce_loss", "pairwise_accuracy", "last_token_scores",
}


def __getattr__(name: str):
    if name in _LAZY:
        from r1jax.rewards import reward_model

        return getattr(reward_model, name)
    raise AttributeError(f"module 'r1jax.rewards' has no attribute {name!r}")
