"""Held-out evaluation of a policy: sample, score with the run's rewards, then :func:`r1jax.eval.evaluate`.

One path for the trainer's eval hook, ``r1jax eval`` and the demo's before/after table. Which reward
decides correctness is a flag of the reward spec (``RewardSpec.accuracy``), not a guess from its name.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from r1jax.eval import evaluate
from r1jax.eval.stats import t_interval
from r1jax.rewards.parsing import extract_final_answer
from r1jax.models import init_value_head
from r1jax.train.checkpoint import Checkpointer
from r1jax.train.components import build
from r1jax.train.config import ExperimentConfig, load_experiment
from r1jax.train.rollout import make_sampler, sample_and_score, step_seed
from r1jax.train.state import init_state, make_optimizer

__all__ = ["evaluate_policy", "eval_from_cli"]


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
           **{f"eval/{name}": float(v.mean()) for name, v in ep.components.items()},
           **{f"eval/{k}": v for k, v in ep.domain_metrics().items()}}
    if count >= 2:  # each component's 95% Student-t interval over the problems (their mean over samples)
        for name, v in ep.components.items():
            iv = t_interval(np.asarray(v, np.float64).reshape(count, n).mean(axis=1))
            out[f"eval/{name}/ci_low"], out[f"eval/{name}/ci_high"] = iv.low, iv.high
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


def eval_from_cli(config_path: str, overrides: Sequence[str]) -> int:
    """``r1jax eval CONFIG [key=value ...]``: evaluates ``model.path``, or the run's latest checkpoint when
    ``model.path`` is unset and the run has one. Builds no optimizer and writes nothing."""
    cfg = load_experiment(config_path, overrides)
    c = build(cfg, train=False)
    params = c.params
    ckpt_dir = pathlib.Path(cfg.run.out_dir) / cfg.run.name / "checkpoints"
    if cfg.model.path is None and ckpt_dir.is_dir():  # the run's newest intact checkpoint
        algo, tx = cfg.algo, make_optimizer(cfg.optim, total_steps=max(cfg.run.steps * cfg.algo.passes, 1))
        critic = (jax.eval_shape(lambda: {**params, **init_value_head(c.model_cfg, jax.random.PRNGKey(0))})
                  if algo.needs_critic else None)
        like = jax.eval_shape(lambda: init_state(params, tx, jax.random.PRNGKey(0), reference=algo.uses_reference,
                                                 critic_params=critic, critic_tx=tx if critic else None))
        checkpointer = Checkpointer(ckpt_dir, keep=cfg.checkpoint.keep)
        restored = checkpointer.restore_latest(like)
        checkpointer.close()
        if restored is not None:
            params = restored[1].params
    sampler = make_sampler(cfg.rollout, c.model_cfg, ckpt_dir.parent)
    try:
        print(json.dumps(evaluate_policy(cfg, c.tokenizer, sampler, c.scorer, c.eval_set, params, step=0), indent=2))
    finally:
        sampler.close()
        c.close()
    return 0
