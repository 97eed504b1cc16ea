"""The reward registry: every reward by name, with its metadata.

A rule-based reward is a plain function ``fn(prompt: str, completion: str, reference) -> float``.
It runs in worker processes (see :mod:`r1jax.rewards.pool`), so it must be picklable: a
module-level function or a ``functools.partial`` of one, never a lambda or a closure.

An *external* reward (``kind="external"``) has no function here: its per-sample scores are computed
elsewhere (a reward model on the accelerator, see :mod:`r1jax.rewards.reward_model`) and handed to
:meth:`r1jax.rewards.RewardScorer.score` as ``precomputed[name]``; the registry entry lets a config
name it and be validated.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from typing import Any, Callable, Literal

__all__ = ["RewardFn", "RewardSpec", "register_reward", "register_external_reward", "get_reward", "list_rewards"]

RewardFn = Callable[[str, str, Any], float]

logger = logging.getLogger("r1jax.rewards")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A registered reward.

    Attributes:
      name: registry key, used in ``RewardComponent.name``.
      fn: the reward function (None for external rewards).
      description: one line: what is rewarded and the value range.
      kind: ``"rule"`` (fn runs in the worker pool) or ``"external"`` (scores supplied by the caller).
      default_timeout_s: per-sample timeout for this reward when the component does not set one
        (None: ``RewardConfig.timeout_s``). The code reward needs more than a math check.
      accuracy: the reward says whether the answer is correct (1 = correct): evaluation reports it as
        accuracy, pass@k and cons@k.
    """

    name: str
    fn: RewardFn | None
    description: str
    kind: Literal["rule", "external"] = "rule"
    default_timeout_s: float | None = None
    accuracy: bool = False


_REGISTRY: dict[str, RewardSpec] = {}


def register_reward(
    name: str,
    fn: RewardFn | None = None,
    *,
    description: str,
    default_timeout_s: float | None = None,
    accuracy: bool = False,
    overwrite: bool = False,
) -> Any:
    """Registers a rule-based reward function under ``name``; usable as a decorator.

    Args:
      name: the registry key.
      fn: ``fn(prompt, completion, reference) -> float``; picklable (module-level).
      description: one line shown by :func:`list_rewards`.
      default_timeout_s: its per-sample timeout when a component does not set one.
      accuracy: it scores correctness (1 = correct); evaluation reports it as accuracy / pass@k / cons@k.
      overwrite: allow replacing an existing entry (otherwise a duplicate name is an error).

    Returns:
      ``fn`` (or a decorator when ``fn`` is None).

    Raises:
      ValueError: duplicate name; TypeError: ``fn`` not callable or not picklable.
    """
    if fn is None:
        return lambda f: register_reward(
            name, f, description=description, default_timeout_s=default_timeout_s, accuracy=accuracy,
            overwrite=overwrite,
        )
    if not callable(fn):
        raise TypeError(f"reward {name!r}: {fn!r} is not callable")
    try:
        pickle.dumps(fn)
    except Exception as e:  # lambdas, closures, bound methods of unpicklable objects
        raise TypeError(
            f"reward {name!r}: the function must be picklable to run in worker processes "
            f"(a module-level function or functools.partial of one): {e}"
        ) from None
    if getattr(fn, "__module__", None) == "__main__":
        logger.warning(
            "reward %r is defined in __main__: reward workers are fresh interpreters and cannot import "
            "it (it will score 0 with an error); move it to an importable module, or use num_workers=0", name,
        )
    _add(RewardSpec(name, fn, description, "rule", default_timeout_s, accuracy), overwrite)
    return fn


def register_external_reward(name: str, *, description: str, overwrite: bool = False) -> None:
    """Registers a reward whose scores the caller supplies (e.g. a reward model's), by name."""
    _add(RewardSpec(name, None, description, "external"), overwrite)


def _add(spec: RewardSpec, overwrite: bool) -> None:
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError(f"reward name must be a non-empty string, got {spec.name!r}")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"reward {spec.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[spec.name] = spec


def get_reward(name: str) -> RewardSpec:
    """The spec registered under ``name``; KeyError listing the known names otherwise."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def list_rewards() -> dict[str, RewardSpec]:
    """All registered rewards, by name."""
    _ensure_builtins()
    return dict(sorted(_REGISTRY.items()))


def _ensure_builtins() -> None:
    # The built-in rewards register themselves on import of the package.
    import r1jax.rewards  # noqa: F401
