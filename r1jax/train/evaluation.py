"""Held-out evaluation of a policy: sample, score with the run's rewards, then :func:`r1jax.eval.evaluate`.

One path for the trainer's eval hook, ``r1jax eval`` and the demo's before/after table. Which reward
decides correctness is a flag of the reward spec (``RewardSpec.accuracy``), not a guess from its name.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from r1jax.eval import evaluate
from r1jax.rewards.parsing import extract_final_answer
from r1jax.train.config import ExperimentConfig
from r1jax.train.rollout import sample_and_score, step_seed

__all__ = ["evaluate_policy"]


def _answer(text: str) -> str | None:
    answer = extract_final_answer("", text)
    return None if answer is None or not answer.strip() else " ".join(answer.split())


def evaluate_policy(cfg: ExperimentConfig, tokenizer, sampler, scorer, eval_set: Sequence[Any], params, *,
                    step: int) -> dict[str, float]:
    """Accuracy (with a 95% interval), pass@k, cons@k, rewards, lengths and reflection statistics of
    ``params`` on the first ``eval.num_prompts`` held-out problems; keys are prefixed ``eval/``.

    A sample's answer is its final answer (``<answer>`` or last ``\\boxed{}``); an answer is correct when
    the run's accuracy reward scored a sample that gave it as correct (so cons@k uses the task's own
    equivalence). Sampling uses a fixed seed: the same params give the same numbers.
    """
    ecfg = cfg.eval
    count = min(ecfg.num_prompts, len(eval_set))
    examples = [eval_set[i] for i in range(count)]
    n = ecfg.num_samples
    ep = sample_and_score(cfg, tokenizer, sampler, scorer, params, examples, n=n, temperature=ecfg.temperature,
                          seed=step_seed(cfg.run.seed, 0, salt=1), first_index=0, step=step)
    out = {"eval/reward": float(ep.rewards.mean()), "eval/response_length": float(ep.lengths.mean()),
           **{f"eval/{name}": float(v.mean()) for name, v in ep.components.items()}}
    if ep.correct is None:
        return out
    by_problem = [ep.texts[i * n:(i + 1) * n] for i in range(count)]
    verdicts: list[dict[str | None, bool]] = []
    for i, texts in enumerate(by_problem):
        seen: dict[str | None, bool] = {}
        for text, ok in zip(texts, ep.correct[i]):
            seen.setdefault(_answer(text), bool(ok))
        verdicts.append(seen)
    metrics = evaluate(by_problem, list(range(count)), _answer, lambda a, i: verdicts[i][a], ks=ecfg.ks,
                       cons_ks=ecfg.ks, lengths_by_problem=ep.lengths.astype(int).tolist(),
                       truncated_by_problem=ep.truncated.tolist())
    out.update({f"eval/{k}": float(v) for k, v in metrics.items()})
    out["eval/accuracy_by_reward"] = float(np.mean(ep.correct))
    return out
