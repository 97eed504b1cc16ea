"""``build(cfg)``: the shared components every stage uses, made once, each only when asked for.

RL, SFT, evaluation and (later) reward-model training and sampling stages are functions over one
:class:`~r1jax.train.state.TrainState` and these components. ``r1jax eval`` asks for the model,
tokenizer, held-out set and rewards only: no optimizer, no training data, no run directory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from r1jax.config import ConfigError
from r1jax.data import PromptIterator, encode_prompts, make_dataset
from r1jax.data.batching import round_up
from r1jax.data.tokenizer import load_tokenizer
from r1jax.models import ModelConfig, init_params, load_pretrained
from r1jax.models.sharding import make_mesh, maybe_initialize_distributed, shard_params
from r1jax.rewards import RewardScorer
from r1jax.train.config import ExperimentConfig

__all__ = ["Components", "build", "check_prompt_lengths", "reward_model_fn", "reward_models", "score_client",
           "served_reward_model_fn", "LENGTH_MULTIPLE"]

LENGTH_MULTIPLE = 8
"""Rows are padded to a multiple of this many tokens (XLA on CPU runs a multiple of 8 no slower than any
shorter length)."""


@dataclasses.dataclass
class Components:
    """What ``build`` made; parts that were not asked for are None."""

    tokenizer: Any
    model_cfg: ModelConfig
    params: Any                       # the initial policy (on the mesh when there is one)
    mesh: jax.sharding.Mesh | None
    train_set: Any = None
    eval_set: Any = None
    scorer: RewardScorer | None = None
    max_length: int = 0               # longest prompt + rollout.max_new_tokens, rounded up to LENGTH_MULTIPLE:
                                      # rows this long hold every sequence the run samples (one shape, one compile)
    score_client: Any = None          # the RolloutClient of served reward models (reward.components[i].served_model)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
        if self.score_client is not None:
            self.score_client.close()


def _mesh(cfg: ExperimentConfig) -> jax.sharding.Mesh | None:
    """The device mesh of ``cfg.mesh``, or None on a single device (fixed sizes whose product is
    smaller than the device count use the first devices)."""
    devices = jax.devices()
    if -1 not in cfg.mesh.sizes:
        devices = devices[: int(np.prod(cfg.mesh.sizes))]
    return None if len(devices) == 1 else make_mesh(cfg.mesh, devices)


def build(cfg: ExperimentConfig, *, train: bool = True, evaluation: bool = True, rewards: bool = True) -> Components:
    """Makes the components of ``cfg``.

    Args:
      cfg: the validated experiment config.
      train: load the training split.
      evaluation: load the held-out split.
      rewards: start the reward scorer (its worker processes).

    Raises:
      ConfigError: ``model.attention_impl: cudnn`` without a GPU; a tokenizer larger than the model's
        vocabulary; data errors (named file and line);
        a prompt that with ``rollout.max_new_tokens`` does not fit the model's context.
    """
    maybe_initialize_distributed(cfg.mesh.coordinator, cfg.mesh.num_processes, cfg.mesh.process_id)
    impl = cfg.model.attention_impl or (cfg.model.config.attention_impl if cfg.model.path is None else "xla")
    if impl == "cudnn" and jax.default_backend() != "gpu":
        raise ConfigError(f"model.attention_impl: 'cudnn' needs an NVIDIA GPU; the JAX backend here is "
                          f"{jax.default_backend()!r} (use 'xla')")
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    if cfg.model.path is not None:
        params, model_cfg = load_pretrained(cfg.model.path)
    else:
        model_cfg = cfg.model.config
        params = init_params(model_cfg, jax.random.fold_in(jax.random.PRNGKey(cfg.run.seed), 1))
    if cfg.model.compute_dtype is not None:
        model_cfg = dataclasses.replace(model_cfg, compute_dtype=cfg.model.compute_dtype)
    if cfg.model.scan_layers is not None:
        model_cfg = dataclasses.replace(model_cfg, scan_layers=cfg.model.scan_layers)
    if cfg.model.attention_blocks is not None:
        model_cfg = dataclasses.replace(model_cfg, attention_blocks=cfg.model.attention_blocks)
    if cfg.model.attention_impl is not None:
        model_cfg = dataclasses.replace(model_cfg, attention_impl=cfg.model.attention_impl)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"model.tokenizer: {tokenizer.vocab_size} tokens do not fit the model's "
                          f"vocab_size {model_cfg.vocab_size}")
    try:  # a data file's errors are ValueErrors naming file and line: a config error, one line
        train_set = make_dataset(cfg.data, "train") if train else None
        eval_set = make_dataset(cfg.data, "eval") if evaluation else None
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    longest = check_prompt_lengths(cfg, tokenizer, model_cfg, train_set, eval_set)
    mesh = _mesh(cfg)
    if mesh is not None:
        params = shard_params(params, mesh)
    client = score_client(cfg) if rewards else None
    try:
        scorer = RewardScorer(cfg.reward, models=reward_models(cfg, client)) if rewards else None
    except BaseException:
        if client is not None:
            client.close()
        raise
    return Components(
        tokenizer=tokenizer, model_cfg=model_cfg, params=params, mesh=mesh, train_set=train_set, eval_set=eval_set,
        scorer=scorer, max_length=round_up(longest + cfg.rollout.max_new_tokens, LENGTH_MULTIPLE),
        score_client=client)


def reward_model_fn(directory: str):
    """``fn(prompts, completions) -> [n] scores`` of the reward model in ``directory`` (made by
    ``r1jax rm``): it reads each prompt through its own template, then the completion, in batches of
    one compiled shape (its training length; longer sequences keep their end).

    Raises:
      ConfigError: not a reward-model directory (e.g. a policy's, with no value head), one line.
    """
    from r1jax.pipeline.rm import load_reward_model, score_texts  # noqa: PLC0415 - the pipeline builds on train

    params, model_cfg, tokenizer, info = load_reward_model(directory)

    def fn(prompts, completions):
        return score_texts(params, model_cfg, tokenizer, info, prompts, completions, max_len=info.max_len)

    return fn


def served_reward_model_fn(client: Any, name: str):
    """``fn(prompts, completions) -> [n] scores`` of the reward model ``name`` of the rollout servers behind
    ``client`` (a :class:`~r1jax.rollout.client.RolloutClient`; their ``Score`` RPC runs the same
    :func:`~r1jax.pipeline.rm.score_texts` as :func:`reward_model_fn`). A failed call raises, so the
    :class:`~r1jax.rewards.RewardScorer` scores 0 on those samples, counted as errors and logged."""

    def fn(prompts, completions):
        return client.score(name, prompts, completions)

    return fn


def score_client(cfg: ExperimentConfig):
    """A :class:`~r1jax.rollout.client.RolloutClient` of ``rollout.servers`` (token, timeout) when a reward
    component is served (``reward.components[i].served_model``), else None."""
    if not any(c.served_model is not None for c in cfg.reward.components):
        return None
    from r1jax.rollout.client import RolloutClient  # noqa: PLC0415 - grpc only when used

    return RolloutClient(list(cfg.rollout.servers), timeout=cfg.rollout.timeout_s, token=cfg.rollout.token)


def reward_models(cfg: ExperimentConfig, client: Any = None) -> dict[str, Any]:
    """The reward-model functions of the config's external components: loaded here from
    ``reward.components[i].model``, or asked of the rollout servers behind ``client`` for
    ``reward.components[i].served_model`` (``client``: :func:`score_client`'s, closed by the caller).

    Raises:
      ConfigError: ``...model``: not a reward-model directory; ``...served_model``: the first server that
        answers ``Info`` serves no reward model of that name (checked here, before any work).
    """
    out = {}
    served = {}
    for i, c in enumerate(cfg.reward.components):
        if c.model is not None:
            try:
                out[c.name] = reward_model_fn(c.model)
            except ConfigError as e:
                raise ConfigError(f"reward.components[{i}].model: {e}") from None
        elif c.served_model is not None:
            served[i] = c
    if served:
        if client is None:
            raise ValueError("reward_models: served reward models need the caller's client (score_client(cfg)), "
                             "which the caller closes")
        info = client.info()
        for i, c in served.items():
            if c.served_model not in info.reward_models:
                have = ", ".join(map(repr, info.reward_models)) or "none"
                raise ConfigError(f"reward.components[{i}].served_model: the rollout server serves no reward model "
                                  f"named {c.served_model!r} (it serves {have}); start it with "
                                  f"`r1jax serve --reward-model {c.served_model}=DIR`")
            out[c.name] = served_reward_model_fn(client, c.served_model)
    return out


def check_prompt_lengths(cfg: ExperimentConfig, tokenizer: Any, model_cfg: ModelConfig, train_set: Any = None,
                         eval_set: Any = None) -> int:
    """Checks that every prompt the run will sample, plus ``rollout.max_new_tokens``, fits the model.

    Encodes, with the configured template as the rollout does, the training prompts of the run's
    ``run.steps`` batches (the first ones of the iterator's order; all of them when the run spans an
    epoch) and the first ``eval.num_prompts`` held-out ones.

    Args:
      cfg: the experiment config.
      tokenizer: its tokenizer.
      model_cfg: the model (``max_position_embeddings`` is its context).
      train_set, eval_set: the datasets (None: not checked).

    Returns:
      The longest prompt's length in tokens.

    Raises:
      ConfigError: naming the longest prompt's length, ``rollout.max_new_tokens`` and the context (or
        ``algo.pack_length`` when it is set and shorter).
    """
    examples = []
    if train_set is not None:
        draws = cfg.run.steps * cfg.rollout.prompts_per_step
        if draws >= len(train_set):
            examples += [train_set[i] for i in range(len(train_set))]
        elif draws:
            examples += next(PromptIterator(train_set, draws, seed=cfg.data.seed))
    if eval_set is not None:
        examples += [eval_set[i] for i in range(min(cfg.eval.num_prompts, len(eval_set)))]
    context, new = model_cfg.max_position_embeddings, cfg.rollout.max_new_tokens
    longest = max(map(len, encode_prompts(examples, tokenizer, cfg.data.template,
                                          system_prompt=cfg.data.system_prompt)), default=0)
    if longest + new > context:
        raise ConfigError(
            f"rollout.max_new_tokens: the longest prompt ({longest} tokens with data.template={cfg.data.template!r}) "
            f"+ rollout.max_new_tokens={new} = {longest + new} tokens exceed the model's context "
            f"(max_position_embeddings={context}); use a shorter template or fewer new tokens")
    if cfg.algo.pack_length and longest + new > cfg.algo.pack_length:
        raise ConfigError(f"algo.pack_length: {cfg.algo.pack_length} tokens cannot hold the longest prompt ({longest} "
                          f"tokens) + rollout.max_new_tokens={new}; use at least {longest + new} or 0 (automatic)")
    return longest
