"""Buffer policies: which of a step's sampled prompt groups the trainer trains on.

Each RL step samples ``rollout.prompts_per_step + rollout.buffer.extra_prompts`` prompt groups
(asynchronously: a buffered batch, see :mod:`r1jax.train.async_rollout`); the policy named by
``rollout.buffer.policy`` picks ``prompts_per_step`` of them, and the rest are dropped (logged as
``buffer/dropped``). The choice is made when the trainer takes the batch, from its scored episodes
only, so it is as deterministic as the samples are (resumed runs choose the same). With
``extra_prompts: 0`` every policy keeps every group; ``fifo`` keeps the first ones.

A policy is ``policy(episodes, n, *, step) -> indices``: ``n`` distinct prompt indices of
``episodes`` (:class:`r1jax.train.rollout.Episodes`: rewards ``[P, G]``, ``correct``, lengths,
``versions``, ``domains``), in the order to train on. Register one with
:func:`register_buffer_policy` in a module that ``run.imports`` lists; the built-in ones:

- ``fifo``: the groups in the order their prompts were drawn.
- ``informative``: groups whose rewards differ first (GRPO's advantage is zero for a group whose
  samples all score the same: DAPO's dynamic sampling, without sampling again), then the others, each
  in drawn order.
- ``freshest``: groups sampled by the newest policy first (remote servers report each group's
  weight version; within a version, drawn order).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from r1jax.algos.registry import Registry

__all__ = ["BUFFER_POLICIES", "register_buffer_policy", "select_groups"]

BufferPolicy = Callable[..., Sequence[int]]

BUFFER_POLICIES = Registry("buffer policy")
register_buffer_policy = BUFFER_POLICIES.register


@register_buffer_policy("fifo")
def fifo(episodes: Any, n: int, *, step: int) -> list[int]:
    """The first ``n`` groups, in drawn order."""
    del episodes, step
    return list(range(n))


@register_buffer_policy("informative")
def informative(episodes: Any, n: int, *, step: int) -> list[int]:
    """Groups whose rewards are not all equal first, then the rest; drawn order within each."""
    del step
    rewards = np.asarray(episodes.rewards)
    varied = rewards.max(axis=1) > rewards.min(axis=1)
    return sorted(range(len(rewards)), key=lambda i: (not varied[i], i))[:n]


@register_buffer_policy("freshest")
def freshest(episodes: Any, n: int, *, step: int) -> list[int]:
    """Groups of the newest weight version first; drawn order within a version."""
    del step
    versions = list(episodes.versions)
    return sorted(range(len(versions)), key=lambda i: (-versions[i], i))[:n]


def select_groups(policy: str, episodes: Any, n: int, *, step: int) -> list[int]:
    """The ``n`` group indices ``policy`` chooses, checked (distinct, in range, exactly ``n``).

    Raises:
      ValueError: naming the policy and what its answer got wrong.
    """
    available = len(episodes.samples)
    chosen = [int(i) for i in BUFFER_POLICIES[policy](episodes, n, step=step)]
    if len(chosen) != n or len(set(chosen)) != n or not all(0 <= i < available for i in chosen):
        raise ValueError(f"rollout.buffer.policy {policy!r} must return {n} distinct group indices in "
                         f"[0, {available}), got {chosen}")
    return chosen
