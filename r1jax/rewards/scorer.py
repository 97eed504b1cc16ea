"""Declarative reward composition: weighted sums of registered rewards, with step schedules.

A :class:`RewardConfig` lists :class:`RewardComponent` s by registry name. At training step ``s``
the total reward of a sample is

    r = sum_k  w_k * 1[component k active at s] * r_k(prompt, completion, reference)

Schedules: a component is active for ``start_step <= s < end_step`` (``end_step=None``: to the
end), or, with ``last_n_steps=N``, only in the last N steps of a run of ``total_steps`` (as
DeepSeek-R1 mixed in its preference rewards only late in the final RL stage). Inactive components
are not computed at all.

The paper's rule reward for R1-Zero is accuracy + format with equal weights, the default here.
A reward that raises or times out scores 0 for that sample; the failure is counted per component
and logged on the ``"r1jax.rewards"`` logger (Python ``logging``), and the run goes on.

Example (YAML section of an experiment config)::

    rewards:
      timeout_s: 10
      num_workers: 2
      components:
        - {name: math_accuracy, weight: 1.0}
        - {name: format_strict, weight: 1.0}
        - {name: language_consistency, weight: 0.1, start_step: 200}
        - {name: helpfulness, weight: 0.5, last_n_steps: 400, model: runs/rm/reward_model}  # a reward model's
        - {name: safety, weight: 0.5, served_model: safe}       # scored by the rollout servers (Score RPC)

References:
  DeepSeek-AI, "DeepSeek-R1", arXiv 2501.12948: rule-based rewards for R1-Zero (accuracy + format),
  language consistency reward (eq. 7), and the combination with model-based rewards in the
  final RL stage.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.config import ConfigError, field
from r1jax.rewards.pool import RewardPool, RewardTask, TaskResult, call_with_timeout
from r1jax.rewards.registry import RewardSpec, get_reward

__all__ = ["RewardComponent", "RewardConfig", "RewardOutput", "RewardScorer"]

logger = logging.getLogger("r1jax.rewards")

_LOGGED_FAILURES_PER_COMPONENT = 3
_NOT_SCORED = TaskResult(0.0, "ok")  # a sample outside a component's domains: 0, not a failure


@dataclasses.dataclass(frozen=True)
class RewardComponent:
    """One term of the reward sum."""

    name: str = field("math_accuracy", help="registered reward name (r1jax.rewards.list_rewards())")
    weight: float = field(1.0, help="coefficient of this reward in the sum (negative: a penalty)")
    start_step: int = field(0, ge=0, help="first training step at which the reward is active")
    end_step: int | None = field(None, ge=1, help="first step at which it is inactive again (None: never)")
    last_n_steps: int | None = field(None, ge=1, help="active only in the last N steps (needs total_steps)")
    timeout_s: float | None = field(None, gt=0.0, help="per-sample timeout (None: the reward's default, then rewards.timeout_s)")
    domains: tuple[str, ...] = field((), help="score only the prompts of these domains (data.mixture; a single "
                                              "task's domain is its name); the others get 0 from it. () = all")
    model: str | None = field(None, help="an external reward's reward-model directory (made by `r1jax rm`), "
                                         "loaded and run on the trainer's devices")
    served_model: str | None = field(None, help="instead of model: the name of a reward model the rollout servers "
                                                "serve (`r1jax serve --reward-model NAME=DIR`), scored there by "
                                                "their Score RPC; needs rollout.mode: remote")

    def check(self) -> None:
        if not self.name:
            raise ConfigError("name: a reward component needs a registered reward name")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ConfigError(f"end_step: {self.end_step} must be > start_step ({self.start_step})")
        if self.last_n_steps is not None and (self.start_step != 0 or self.end_step is not None):
            raise ConfigError("last_n_steps: use either last_n_steps or start_step/end_step, not both")
        if self.model is not None and not pathlib.Path(self.model).is_dir():
            raise ConfigError(f"model: reward-model directory not found: {self.model}")

    def applies_to(self, domains: Sequence[str | None] | None, n: int) -> np.ndarray:
        """[n] bool: the samples this component scores (every one without ``domains``)."""
        if not self.domains:
            return np.ones(n, bool)
        if domains is None:
            raise ValueError(f"reward {self.name!r} scores domains {list(self.domains)}: pass the samples' domains")
        return np.array([d in self.domains for d in domains], bool)

    def is_active(self, step: int, total_steps: int | None = None) -> bool:
        """Whether this component counts at training step ``step`` (0-based).

        Raises:
          ValueError: ``last_n_steps`` is set but ``total_steps`` is not given.
        """
        if self.last_n_steps is not None:
            if total_steps is None:
                raise ValueError(f"reward {self.name!r} has last_n_steps={self.last_n_steps}: pass total_steps")
            return total_steps - self.last_n_steps <= step < total_steps
        return step >= self.start_step and (self.end_step is None or step < self.end_step)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Which rewards, how they are weighted and scheduled, and how they are run."""

    components: tuple[RewardComponent, ...] = field(
        (RewardComponent("math_accuracy", 1.0), RewardComponent("format_strict", 1.0)),
        help="the terms of the reward sum",
    )
    timeout_s: float = field(10.0, gt=0.0, help="default per-sample soft timeout of a reward function, seconds")
    hard_timeout_grace_s: float = field(2.0, ge=0.0, help="a worker is killed this long after a missed soft timeout")
    num_workers: int = field(2, ge=0, help="reward worker processes (0: run in the calling process, no hard timeout)")
    worker_memory_mb: int | None = field(4096, ge=256, help="address-space limit of each worker (None: unlimited)")

    def check(self) -> None:
        if not self.components:
            raise ConfigError("components: at least one reward component is needed")
        names = [c.name for c in self.components]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"components: reward {dup[0]!r} is listed twice")


@dataclasses.dataclass(frozen=True)
class RewardOutput:
    """Scores of a batch.

    Attributes:
      total: [N] float32, the weighted sum over the active components.
      components: name -> [N] float32 raw (unweighted) scores of each active component; 0 where failed.
      weights: name -> the weight each configured component had at this step (0.0 when inactive).
      failed: name -> [N] bool, the samples whose reward raised or timed out (active components).
      num_errors, num_timeouts: name -> counts of those failures.
    """

    total: np.ndarray
    components: dict[str, np.ndarray]
    weights: dict[str, float]
    failed: dict[str, np.ndarray]
    num_errors: dict[str, int]
    num_timeouts: dict[str, int]

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Flat scalars for logging: mean total, per-component mean / weight / error and timeout counts."""
        out = {f"{prefix}/total_mean": float(self.total.mean()) if self.total.size else 0.0}
        for name, values in self.components.items():
            out[f"{prefix}/{name}/mean"] = float(values.mean()) if values.size else 0.0
            out[f"{prefix}/{name}/weight"] = self.weights[name]
            out[f"{prefix}/{name}/errors"] = float(self.num_errors[name])
            out[f"{prefix}/{name}/timeouts"] = float(self.num_timeouts[name])
        return out


class RewardScorer:
    """Scores batches of (prompt, completion, reference) with the configured composition.

    Rule rewards run in a :class:`r1jax.rewards.pool.RewardPool` (started on first use, shared by
    every later call) or, with ``num_workers=0``, in the calling process (soft timeouts only when
    called from the main thread; no hard timeout). External rewards take the caller's scores.

    Args:
      config: the composition.
      registry: name -> spec overrides (tests, private rewards); names not in it are looked up in
        the global registry.
      pool: an existing pool to use (not closed by :meth:`close`); default: one of the scorer's
        own, started on first use from the config's worker settings.
      models: external component name -> ``fn(prompts, completions) -> [n] scores`` (a reward model,
        e.g. :func:`r1jax.train.components.reward_model_fn`): called on the component's samples at
        the steps it is active, unless the caller passes the scores as ``precomputed``. A model that
        raises scores 0 on those samples, counted as errors and logged, like a failing rule reward.

    Raises:
      KeyError: a component names no registered reward.
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        registry: Mapping[str, RewardSpec] | None = None,
        pool: RewardPool | None = None,
        models: Mapping[str, Any] | None = None,
    ):
        self.config = config
        self.models = dict(models or {})
        self._specs: dict[str, RewardSpec] = {}
        for c in config.components:
            spec = (registry or {}).get(c.name) or get_reward(c.name)
            self._specs[c.name] = spec
        self._pool: RewardPool | None = pool
        self._owns_pool = pool is None
        self._lock = threading.Lock()

    def timeout_for(self, component: RewardComponent) -> float:
        """Soft timeout of a component: its own, else its reward's default, else the config's."""
        if component.timeout_s is not None:
            return component.timeout_s
        spec = self._specs[component.name]
        return spec.default_timeout_s if spec.default_timeout_s is not None else self.config.timeout_s

    def _get_pool(self) -> RewardPool:
        if self._pool is None:
            cfg = self.config
            self._pool = RewardPool(
                cfg.num_workers, grace_s=cfg.hard_timeout_grace_s,
                memory_limit_mb=cfg.worker_memory_mb,
            )
        return self._pool

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        references: Sequence[Any],
        *,
        step: int = 0,
        total_steps: int | None = None,
        precomputed: Mapping[str, Any] | None = None,
        domains: Sequence[str | None] | None = None,
        model_prompts: Sequence[str] | None = None,
    ) -> RewardOutput:
        """Scores a batch.

        Args:
          prompts, completions, references: N each (a group of G samples repeats its prompt and
            reference G times).
          step: the training step (schedules).
          total_steps: the run's length (needed by ``last_n_steps`` components).
          precomputed: name -> [N] scores of the *external* components (e.g. reward-model outputs);
            non-finite entries count as errors.
          domains: the N samples' domains, for components limited to some (``RewardComponent.domains``):
            they score 0 elsewhere, are not run there, and count no failures there.
          model_prompts: the prompts the reward ``models`` read (default ``prompts``; the trainer passes
            the raw prompts, which a reward model applies its own template to).

        Returns:
          A :class:`RewardOutput`.

        Raises:
          ValueError: mismatched lengths, a missing or misshaped external score array, a
            precomputed key that is not a configured external component.
        """
        n = len(completions)
        if len(prompts) != n or len(references) != n:
            raise ValueError(f"score: got {len(prompts)} prompts, {n} completions and {len(references)} references")
        if domains is not None and len(domains) != n:
            raise ValueError(f"score: got {len(domains)} domains for {n} samples")
        precomputed = dict(precomputed or {})
        for key in precomputed:
            if key not in self._specs or self._specs[key].kind != "external":
                raise ValueError(f"precomputed[{key!r}]: not an external reward component of this config")
        active = [c for c in self.config.components if c.is_active(step, total_steps)]
        weights = {c.name: (c.weight if c in active else 0.0) for c in self.config.components}

        values: dict[str, np.ndarray] = {}
        failed: dict[str, np.ndarray] = {}
        errors: dict[str, int] = {}
        timeouts: dict[str, int] = {}
        rule = [c for c in active if self._specs[c.name].kind == "rule"]
        where = {c.name: np.flatnonzero(c.applies_to(domains, n)) for c in active}
        results: dict[str, list[TaskResult]] = {}
        if rule and n:
            tasks = [
                RewardTask(self._specs[c.name].fn, prompts[i], completions[i], references[i], self.timeout_for(c))
                for c in rule for i in where[c.name]
            ]
            with self._lock:
                if not tasks:
                    flat = []
                elif self.config.num_workers > 0 or not self._owns_pool:
                    flat = self._get_pool().map(tasks)
                else:
                    flat = [call_with_timeout(t.fn, t.prompt, t.completion, t.reference, t.timeout_s) for t in tasks]
            start = 0
            for c in rule:
                res = [_NOT_SCORED] * n
                for i, r in zip(where[c.name], flat[start:start + len(where[c.name])]):
                    res[i] = r
                results[c.name] = res
                start += len(where[c.name])
        for c in active:
            if self._specs[c.name].kind == "external" and c.name not in precomputed and c.name in self.models:
                precomputed[c.name] = self._run_model(c.name, where[c.name], model_prompts or prompts, completions)
        for c in active:
            spec = self._specs[c.name]
            if spec.kind == "external":
                if c.name not in precomputed:
                    raise ValueError(f"reward {c.name!r} is external: pass its scores as precomputed[{c.name!r}]")
                arr = np.asarray(precomputed[c.name], dtype=np.float64).reshape(-1)
                if arr.shape != (n,):
                    raise ValueError(f"precomputed[{c.name!r}] has {arr.size} scores for {n} samples")
                bad = ~np.isfinite(arr)
                res = [TaskResult(0.0, "error", "non-finite score") if b else TaskResult(float(v), "ok")
                       for v, b in zip(arr, bad)]
                scored = set(where[c.name].tolist())
                res = [r if i in scored else _NOT_SCORED for i, r in enumerate(res)]
            else:
                res = results.get(c.name, [])
            values[c.name] = np.array([r.value for r in res], dtype=np.float32).reshape(n)
            failed[c.name] = np.array([r.status != "ok" for r in res], dtype=bool).reshape(n)
            errors[c.name] = sum(r.status == "error" for r in res)
            timeouts[c.name] = sum(r.status == "timeout" for r in res)
            self._log_failures(c.name, res, step)
        total = np.zeros(n, dtype=np.float64)
        for c in active:
            total += c.weight * values[c.name].astype(np.float64)
        return RewardOutput(total.astype(np.float32), values, weights, failed, errors, timeouts)

    def _run_model(self, name: str, idx: np.ndarray, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """[N] scores of reward model ``name`` on the samples ``idx`` (0 elsewhere; NaN where it raised)."""
        out = np.zeros(len(completions), np.float64)
        if idx.size:
            try:
                scores = np.asarray(self.models[name]([prompts[i] for i in idx], [completions[i] for i in idx]),
                                    np.float64).reshape(-1)
                if scores.shape != (idx.size,):
                    raise ValueError(f"returned {scores.size} scores for {idx.size} samples")
            except Exception as e:  # noqa: BLE001 - a broken reward model scores 0 and is counted, as a rule reward
                logger.warning("reward model %r failed on %d samples, scored 0: %s: %s", name, idx.size,
                               type(e).__name__, e)
                scores = np.full(idx.size, np.nan)
            out[idx] = scores
        return out

    @staticmethod
    def _log_failures(name: str, res: Sequence[TaskResult], step: int) -> None:
        bad = [(i, r) for i, r in enumerate(res) if r.status != "ok"]
        for i, r in bad[:_LOGGED_FAILURES_PER_COMPONENT]:
            logger.warning("reward %r %s on sample %d (step %d), scored 0: %s", name, r.status, i, step, r.message)
        if len(bad) > _LOGGED_FAILURES_PER_COMPONENT:
            logger.warning("reward %r: %d more failures at step %d (each scored 0)", name,
                           len(bad) - _LOGGED_FAILURES_PER_COMPONENT, step)

    def close(self) -> None:
        """Stops the worker pool, if one was started."""
        if self._pool is not None and self._owns_pool:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
