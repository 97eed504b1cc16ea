"""Reward models behind the rollout server's ``Score`` RPC (``r1jax serve --reward-model NAME=DIR``).

The scoring is the trainer's: :func:`r1jax.pipeline.rm.load_reward_model` reads the directory made
by ``r1jax rm`` and :func:`r1jax.pipeline.rm.score_texts` scores (prompt, response) texts in
fixed-shape batches, one jitted forward each, exactly as ``reward.components[i].model`` does on the
trainer (:func:`r1jax.train.components.reward_model_fn`). This module imports JAX only inside
:func:`load_served_reward_models`, so ``r1jax.rollout.server`` (which the vLLM engine's process
imports) stays JAX-free until a reward model is asked for.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["ServedRewardModel", "parse_reward_model_flags", "load_served_reward_models"]


@dataclasses.dataclass(eq=False)
class ServedRewardModel:
    """One reward model a server scores with.

    Attributes:
      name: the name clients ask for (``ScoreRequest.model``).
      directory: where it was loaded from.
      scores: ``fn(prompts, responses) -> [n] float32`` (the trainer's ``score_texts`` path).
      tokens: ``fn(prompts, responses) -> int``: the tokens the model reads, its template applied,
        summed over pairs before truncation (the request-size check).
    """

    name: str
    directory: str
    scores: Callable[[Sequence[str], Sequence[str]], np.ndarray]
    tokens: Callable[[Sequence[str], Sequence[str]], int]
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """[n] float32 scores; one request's forwards at a time per model (bounded device memory)."""
        with self.lock:
            return np.asarray(self.scores(prompts, responses), np.float32).reshape(-1)


def parse_reward_model_flags(values: Sequence[str] | None) -> dict[str, str]:
    """``["helpful=/rm/h", "safe=/rm/s"]`` -> ``{"helpful": "/rm/h", "safe": "/rm/s"}``.

    Raises:
      ValueError: one line naming ``--reward-model`` and the bad value (no ``=``, empty name or
        directory, a name given twice).
    """
    out: dict[str, str] = {}
    for v in values or ():
        name, sep, directory = v.partition("=")
        name, directory = name.strip(), directory.strip()
        if not sep or not name or not directory:
            raise ValueError(f"--reward-model {v!r}: expected NAME=DIR (a name clients ask for, a directory "
                             "made by `r1jax rm`)")
        if name in out:
            raise ValueError(f"--reward-model {v!r}: the name {name!r} is given twice")
        out[name] = directory
    return out


def load_served_reward_models(specs: Mapping[str, str]) -> dict[str, ServedRewardModel]:
    """Loads every ``{name: directory}`` reward model (float32, on JAX's default device).

    Raises:
      ValueError: one line naming ``--reward-model NAME=DIR`` and what is wrong with the directory
        (not found, not a reward model, unreadable head), or that JAX cannot be imported here.
    """
    if not specs:
        return {}
    try:
        from r1jax.config import ConfigError  # noqa: PLC0415
        from r1jax.pipeline.rm import encode_sequence, load_reward_model, score_texts  # noqa: PLC0415 - JAX
    except ImportError as e:
        raise ValueError(f"--reward-model: scoring reward models is JAX code, and JAX cannot be imported in this "
                         f"environment ({type(e).__name__}: {e}); serve reward models from an r1jax environment "
                         "(e.g. a second `r1jax serve --engine jax` server)") from None
    import pathlib  # noqa: PLC0415

    out: dict[str, ServedRewardModel] = {}
    for name, directory in specs.items():
        flag = f"--reward-model {name}={directory}"
        if not pathlib.Path(directory).is_dir():
            raise ValueError(f"{flag}: directory not found")
        try:
            loaded = load_reward_model(directory)
        except ConfigError as e:
            raise ValueError(f"{flag}: {e}") from None
        out[name] = ServedRewardModel(name, str(directory), *_functions(loaded, score_texts, encode_sequence))
    return out


def _functions(loaded: tuple[Any, ...], score_texts, encode_sequence):
    params, model_cfg, tokenizer, info = loaded

    def scores(prompts, responses):  # as r1jax.train.components.reward_model_fn
        return score_texts(params, model_cfg, tokenizer, info, prompts, responses, max_len=info.max_len)

    def tokens(prompts, responses):
        return sum(len(encode_sequence(p, r, tokenizer, info.template)) for p, r in zip(prompts, responses))

    return scores, tokens
