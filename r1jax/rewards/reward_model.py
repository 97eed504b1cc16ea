"""Model-based rewards: a scalar-head transformer scoring whole responses, and its training losses.

DeepSeek-R1's final RL stage adds two reward models to the rule rewards: a *helpfulness* model
trained pairwise on preference pairs (Bradley-Terry), and a *safety* model trained pointwise on
responses labelled safe / unsafe (binary cross-entropy). Both are a decoder from
:mod:`r1jax.models` with a scalar head (``init_value_head`` / ``value``), read at the last real
token of each sequence.

Everything here is pure JAX (jit / vmap / grad safe, float32): the losses take score arrays, not
models, and :func:`reward_model_scores` takes parameters and token ids. :class:`ValueHeadRewardModel`
binds parameters and a config into a callable ``(tokens, attention_mask) -> [B]`` that satisfies
:class:`ScalarRewardModel`; the trainer runs it on the accelerator and hands the scores to
:meth:`r1jax.rewards.RewardScorer.score` as ``precomputed["helpfulness"]`` / ``["safety"]``
(external rewards, see :mod:`r1jax.rewards.registry`).

References:
  DeepSeek-AI, "DeepSeek-R1", arXiv 2501.12948 (v2): helpfulness (pairwise) and safety (pointwise)
  reward models of the final RL stage.
  R. A. Bradley and M. E. Terry, "Rank analysis of incomplete block designs", Biometrika 1952.
  L. Ouyang et al., "Training language models to follow instructions with human feedback",
  arXiv 2203.02155, eq. 1 (the pairwise reward-model loss).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp

__all__ = [
    "ScalarRewardModel",
    "ValueHeadRewardModel",
    "last_token_scores",
    "reward_model_scores",
    "bradley_terry_loss",
    "pairwise_accuracy",
    "pointwise_bce_loss",
]

_F32 = jnp.float32


class ScalarRewardModel(Protocol):
    """Anything that maps a batch of token ids to one scalar reward per sequence."""

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """[B, T] int token ids, [B, T] bool mask (True = real token) -> [B] float32 scores."""
        ...


def last_token_scores(values: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """The per-token values read at each row's last real token.

    Works for left- and right-padded rows alike (the last True of the mask). A row without any
    real token scores 0.

    Args:
      values: [B, T] per-token scalar outputs.
      attention_mask: [B, T] bool, True for real tokens.

    Returns:
      [B] float32.
    """
    mask = attention_mask.astype(bool)
    T = mask.shape[-1]
    last = T - 1 - jnp.argmax(mask[:, ::-1], axis=-1)
    picked = jnp.take_along_axis(values.astype(_F32), last[:, None], axis=-1)[:, 0]
    return jnp.where(mask.any(axis=-1), picked, 0.0)


def reward_model_scores(params: Any, config: Any, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Scores of a scalar-head decoder: the value head at the last real token of each row.

    Args:
      params: model parameters including ``value_head`` (``{**init_params(...), **init_value_head(...)}``).
      config: the ``r1jax.models.ModelConfig`` (static under jit).
      tokens: [B, T] int32 prompt + response token ids (padding anywhere the mask says).
      attention_mask: [B, T] bool.

    Returns:
      [B] float32 scores (unnormalised logits of the head).
    """
    from r1jax.models import forward, value

    hidden = forward(params, config, tokens, attention_mask=attention_mask)
    return last_token_scores(value(params, config, hidden), attention_mask)


def _reduce(per_example: jax.Array, weights: jax.Array | None, denominator: Any | None) -> jax.Array:
    if weights is None:
        weights = jnp.ones_like(per_example)
    weights = weights.astype(_F32)
    total = jnp.sum(per_example * weights)
    denom = jnp.sum(weights) if denominator is None else jnp.asarray(denominator, _F32)
    return total / jnp.maximum(denom, jnp.finfo(_F32).tiny)


def bradley_terry_loss(
    chosen: jax.Array,
    rejected: jax.Array,
    *,
    margin: jax.Array | float = 0.0,
    weights: jax.Array | None = None,
    denominator: jax.Array | float | None = None,
) -> jax.Array:
    """Pairwise (Bradley-Terry) reward-model loss: ``-log sigmoid(r_chosen - r_rejected - margin)``.

    Args:
      chosen: [B] scores of the preferred responses.
      rejected: [B] scores of the dispreferred responses.
      margin: scalar or [B] required score gap (0 for the plain model; traced).
      weights: optional [B] per-pair weights (0 masks a padded pair).
      denominator: what the weighted sum is divided by; default the sum of the weights. Pass the
        pair count of the whole optimisation batch to make micro-batching exact.

    Returns:
      Scalar float32 loss.

    References:
      Bradley & Terry 1952; Ouyang et al., arXiv 2203.02155, eq. 1.
    """
    diff = chosen.astype(_F32) - rejected.astype(_F32) - jnp.asarray(margin, _F32)
    return _reduce(-jax.nn.log_sigmoid(diff), weights, denominator)


def pairwise_accuracy(chosen: jax.Array, rejected: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Share of pairs ranked correctly (``chosen > rejected``); ties count as wrong."""
    return _reduce((chosen > rejected).astype(_F32), weights, None)


def pointwise_bce_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    weights: jax.Array | None = None,
    denominator: jax.Array | float | None = None,
) -> jax.Array:
    """Pointwise reward-model loss: binary cross-entropy of ``sigmoid(logit)`` against the label.

    ``-[y log sigmoid(s) + (1 - y) log sigmoid(-s)]``, computed with ``log_sigmoid`` so it stays
    finite for large logits.

    Args:
      logits: [B] scores.
      labels: [B] targets in [0, 1] (1 = safe / good; soft labels allowed).
      weights: optional [B] per-example weights.
      denominator: as in :func:`bradley_terry_loss`.

    Returns:
      Scalar float32 loss.
    """
    s = logits.astype(_F32)
    y = labels.astype(_F32)
    per = -(y * jax.nn.log_sigmoid(s) + (1.0 - y) * jax.nn.log_sigmoid(-s))
    return _reduce(per, weights, denominator)


class ValueHeadRewardModel:
    """A :class:`ScalarRewardModel` from ``r1jax.models`` parameters with a value head.

    Args:
      params: model parameters including ``value_head``.
      config: the ``ModelConfig``.
      output: ``"raw"`` (the head's logit; a pairwise-trained helpfulness model) or ``"sigmoid"``
        (a probability in (0, 1); a pointwise-trained safety model).
      jit: compile the scoring function (config static).
    """

    def __init__(self, params: Any, config: Any, *, output: Literal["raw", "sigmoid"] = "raw", jit: bool = True):
        if output not in ("raw", "sigmoid"):
            raise ValueError(f"output must be 'raw' or 'sigmoid', got {output!r}")
        if "value_head" not in params:
            raise KeyError("params has no 'value_head': merge in r1jax.models.init_value_head(config, key)")
        self.params = params
        self.config = config
        self.output = output

        def fn(p, tokens, mask):
            s = reward_model_scores(p, config, tokens, mask)
            return jax.nn.sigmoid(s) if output == "sigmoid" else s

        self._fn = jax.jit(fn) if jit else fn

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        attention_mask = jnp.asarray(attention_mask, bool)
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != tokens shape {tokens.shape}")
        return self._fn(self.params, tokens, attention_mask)
