"""The domain verifier: each example of a task mixture is scored by its own domain's verifier.

A mixed RL run (DeepSeek-R1 §4.1: math, code, STEM, logic, general prompts in one batch) needs a
different accuracy reward per example. :mod:`r1jax.data.mixture` therefore writes each mixed
example's reference as ``{"verifier": <reward name>, "reference": <the task's own reference>}``,
and this reward - one component of the reward sum, ``{name: domain_verifier, weight: 1.0}`` -
calls the named registered reward on the inner reference. Nothing else changes: the scorer sends
every sample to every component as before.

``verifier: "none"`` (general prompts: a reward model scores them, not a rule) scores 0.0 here.

The named reward must be registered in the worker process too: the built-in rewards always are; a
reward registered by a user module (``run.imports``) is found in the workers only when that
module is importable there (as for any user reward).
"""

from __future__ import annotations

from typing import Any, Mapping

from r1jax.rewards.registry import get_reward

__all__ = ["domain_verifier", "NO_VERIFIER"]

NO_VERIFIER = "none"
"""The verifier name of examples no rule can check (general prompts)."""


def domain_verifier(prompt: str, completion: str, reference: Any) -> float:
    """The score of the example's own verifier: ``reference["verifier"]`` on ``reference["reference"]``.

    Args:
      prompt: the rendered prompt.
      completion: the generated text.
      reference: ``{"verifier": name, "reference": inner}`` (what a mixture's examples carry).

    Returns:
      The named reward's score (1 = correct for the accuracy rewards); 0.0 for ``"none"``.

    Raises:
      ValueError: a reference without ``verifier`` / ``reference`` keys, or naming a reward that
        is not a rule-based accuracy reward (or this reward itself).
      KeyError: an unregistered verifier name.
    """
    if not isinstance(reference, Mapping) or "verifier" not in reference or "reference" not in reference:
        raise ValueError("domain_verifier: the reference must be {'verifier': name, 'reference': ...} "
                         f"(an example of a data.mixture), got {reference!r}")
    name = reference["verifier"]
    if name == NO_VERIFIER:
        return 0.0
    spec = get_reward(name)
    if spec.fn is None or not spec.accuracy or name == "domain_verifier":
        raise ValueError(f"domain_verifier: {name!r} is not a rule-based accuracy reward")
    return float(spec.fn(prompt, completion, reference["reference"]))
