"""The ``rm`` stage kind: reward-model training on preference pairs or labelled responses.

DeepSeek-R1's all-scenario RL stage (arXiv 2501.12948, §2.3.4) rewards general prompts with two
reward models: a *helpfulness* model trained on preference pairs (pairwise, Bradley-Terry) and a
*safety* model trained on responses labelled safe / unsafe (pointwise, binary cross-entropy).
This kind trains either one:

* the model is the input ``model`` (an HF policy directory: the trunk, fine-tuned whole) with a
  fresh scalar head (:func:`r1jax.models.init_value_head`) read at the last real token of
  ``template(prompt) + response + EOS`` (:func:`r1jax.rewards.reward_model.reward_model_scores`);
* ``objective: pairwise``: rows ``{prompt, chosen, rejected}``, loss
  :func:`~r1jax.rewards.reward_model.bradley_terry_loss`; ``objective: pointwise``: rows
  ``{prompt, response, label}`` with ``label`` 0 / 1 (or false / true), loss
  :func:`~r1jax.rewards.reward_model.pointwise_bce_loss`. Field names are configurable; every row
  is checked before any work (a missing field or a label that is not 0/1 is one ConfigError line
  naming stage, input, ``file:line`` and field);
* one jitted pure ``update(state, batch, hp) -> (state, metrics)`` per step through the trainer's
  optimizer step (a non-finite loss, gradient or update is skipped and counted, never applied);
  the batch of step ``s`` is a function of ``(seed, s)`` alone
  (:func:`r1jax.pipeline.sft.batch_indices`), so a run killed and restarted from its orbax
  checkpoint (every ``checkpoint_every`` steps, in ``out_dir/checkpoints``) ends with the same
  parameters as an uninterrupted one;
* evaluation on ``eval_data`` or a seeded ``heldout_fraction`` of ``data``, before and after
  training: pairwise - the share of pairs ranked right (which is also the AUC over pairs) with a
  Wilson interval, and the mean margin ``r(chosen) - r(rejected)`` with a Student-t interval;
  pointwise - the ROC AUC of score against label with a stratified-bootstrap interval (fixed seed),
  and the accuracy of ``score > 0`` with a Wilson interval;
* outputs: ``out_dir/reward_model`` (:func:`save_reward_model`: the trunk as HF ``config.json`` +
  ``model.safetensors``, the tokenizer, the head in ``value_head.safetensors`` and
  ``reward_model.json`` naming the objective, the head file, the template and the output
  transform) and ``out_dir/metrics.json``. :func:`load_reward_model` reads the directory back;
  :class:`~r1jax.rewards.reward_model.ValueHeadRewardModel` turns its parameters into a scorer.

The output is named ``reward_model`` (not ``model``): a pipeline's eval section evaluates policies,
and this is not one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import ConfigError, field, from_dict, to_dict
from r1jax.data.templates import PROMPT_TEMPLATES, encode_prompt
from r1jax.data.tokenizer import Tokenizer, load_tokenizer
from r1jax.eval.stats import auc_interval, t_interval, wilson_interval
from r1jax.models import ModelConfig, init_value_head, load_pretrained, save_pretrained
from r1jax.pipeline.datasets import read_rows, write_json
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind
from r1jax.pipeline.manifest import digest_data, digest_path
from r1jax.pipeline.sft import batch_indices, restore_stage, stage_optimizer, steps_per_epoch, truncate_log
from r1jax.rewards.reward_model import (bradley_terry_loss, pairwise_accuracy, pointwise_bce_loss,
                                        reward_model_scores)
from r1jax.train.checkpoint import Checkpointer
from r1jax.train.config import AlgoConfig, OptimConfig
from r1jax.train.state import Hyper, TrainState, init_state, make_optimizer
from r1jax.train.steps import optimizer_step

__all__ = [
    "OBJECTIVES", "RMConfig", "parse_rm_config", "RMData", "RMBatch", "encode_sequence", "encode_rm_data",
    "split_heldout", "make_rm_batch", "objective_loss", "make_rm_update", "score_sequences", "heldout_metrics",
    "RewardModelInfo", "HEAD_FILE", "RM_META_FILE", "save_reward_model", "check_reward_model_dir",
    "load_reward_model", "score_texts", "run_rm", "RMStage",
]

OBJECTIVES = ("pairwise", "pointwise")
HEAD_FILE = "value_head.safetensors"
"""The head's file in a reward-model directory (tensors ``value_head.kernel`` [D], ``value_head.bias`` [1])."""
RM_META_FILE = "reward_model.json"
"""The JSON naming a reward-model directory's objective, head file, template and output transform."""
_FORMAT = "r1jax.reward_model"


# ------------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class RMConfig:
    """The ``rm`` stage's config section."""

    objective: str = field("pairwise", choices=OBJECTIVES,
                           help="pairwise: Bradley-Terry on (prompt, chosen, rejected); pointwise: BCE on "
                                "(prompt, response, label 0/1)")
    prompt_field: str = field("prompt", help="dataset field with the prompt (rendered with `template`)")
    chosen_field: str = field("chosen", help="pairwise: field with the preferred response")
    rejected_field: str = field("rejected", help="pairwise: field with the dispreferred response")
    response_field: str = field("response", help="pointwise: field with the response")
    label_field: str = field("label", help="pointwise: field with the label, 0 / 1 or false / true")
    template: str = field("plain", choices=tuple(PROMPT_TEMPLATES), help="prompt template")
    epochs: int = field(1, ge=1, help="passes over the training examples")
    max_steps: int | None = field(None, ge=1, help="cap on optimizer steps (None: epochs × steps per epoch)")
    batch_size: int = field(8, ge=1, help="pairs (pairwise) or examples (pointwise) per step")
    max_len: int = field(128, ge=2, help="sequence length in tokens (prompt + response + EOS); longer is an error")
    lr: float = field(1e-4, gt=0.0, help="peak learning rate (trunk and head)")
    warmup_steps: int = field(0, ge=0)
    schedule: str = field("constant", choices=("constant", "cosine"))
    weight_decay: float = field(0.0, ge=0.0)
    grad_clip: float | None = field(1.0, gt=0.0)
    seed: int | None = field(None, ge=0, help="data order, held-out split and head init; None: the pipeline's seed")
    heldout_fraction: float = field(0.1, ge=0.0, lt=1.0, help="held out of `data` when there is no eval_data")
    eval_batch_size: int = field(32, ge=1, help="sequences per scoring batch")
    checkpoint_every: int = field(50, ge=0, help="orbax checkpoint every N steps (and at the end); 0: end only")
    log_every: int = field(10, ge=1, help="append the train loss to out_dir/log.jsonl every N steps")
    confidence: float = field(0.95, gt=0.0, lt=1.0, help="coverage of the reported intervals")
    bootstrap_resamples: int = field(2000, ge=1, help="pointwise: resamples of the AUC's bootstrap interval")

    def fields(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(fields every row needs, of which any JSON type)``."""
        if self.objective == "pairwise":
            return (self.prompt_field, self.chosen_field, self.rejected_field), ()
        return (self.prompt_field, self.response_field, self.label_field), (self.label_field,)


def parse_rm_config(stage: str, config: Mapping[str, Any] | RMConfig) -> RMConfig:
    """The validated :class:`RMConfig` of a stage section; ConfigError lines start ``stage NAME:``."""
    if isinstance(config, RMConfig):
        return config
    try:
        return from_dict(RMConfig, dict(config or {}))
    except ConfigError as e:
        raise ConfigError(f"stage {stage}: {e}") from None


# ------------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class RMData:
    """Encoded examples. Pairwise: ``first`` = prompt + chosen, ``second`` = prompt + rejected, labels 1.
    Pointwise: ``first`` = prompt + response, ``second`` None, ``labels`` 0 / 1. Sequences end with EOS."""

    first: list[list[int]]
    second: list[list[int]] | None
    labels: np.ndarray   # [n] float32
    where: list[str]     # "file:line" (JSONL) or "file: row k" (Parquet) of each example

    def subset(self, idx: Sequence[int]) -> "RMData":
        idx = [int(i) for i in idx]
        return RMData([self.first[i] for i in idx], None if self.second is None else [self.second[i] for i in idx],
                      self.labels[np.asarray(idx, np.int64)] if idx else self.labels[:0], [self.where[i] for i in idx])

    def __len__(self) -> int:
        return len(self.first)


def encode_sequence(prompt: str, response: str, tokenizer: Tokenizer, template: str = "plain") -> list[int]:
    """The ids a reward model reads: ``template(prompt)`` (with the tokenizer's BOS) + ``response`` + EOS."""
    if tokenizer.eos_id is None:
        raise ValueError(f"the tokenizer ({tokenizer.source}) has no eos_token")
    return (encode_prompt(prompt, tokenizer, template) + tokenizer.encode(response, add_special_tokens=False)
            + [tokenizer.eos_id])


def _label(value: Any, at: str, name: str) -> float:
    """``value`` as 0.0 / 1.0; ConfigError ``{at}: field 'label' must be 0 or 1 ...`` otherwise."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    raise ConfigError(f"{at}: field {name!r} must be 0 or 1 (or false / true), got {value!r}")


def _read(path: pathlib.Path, cfg: RMConfig, stage: str, input_name: str) -> tuple[list[dict], list[str], np.ndarray]:
    """Rows, their positions and labels (pairwise: ones), every row checked (fields, label values)."""
    fields, any_type = cfg.fields()
    rows, where = read_rows(path, fields, stage=stage, input_name=input_name, any_type=any_type, return_where=True)
    if cfg.objective == "pointwise":
        labels = [_label(r[cfg.label_field], f"stage {stage}: {input_name}: {w}", cfg.label_field)
                  for r, w in zip(rows, where)]
    else:
        labels = [1.0] * len(rows)
    return rows, where, np.asarray(labels, np.float32)


def encode_rm_data(path: str | pathlib.Path, tokenizer: Tokenizer, cfg: RMConfig, *, stage: str,
                   input_name: str = "data") -> RMData:
    """Reads, checks and encodes a dataset (JSONL or Parquet); a sequence longer than ``max_len`` is a ConfigError."""
    if tokenizer.eos_id is None:
        raise ConfigError(f"stage {stage}: the tokenizer ({tokenizer.source}) has no eos_token")
    rows, where, labels = _read(pathlib.Path(path), cfg, stage, input_name)
    p = cfg.prompt_field
    if cfg.objective == "pairwise":
        first = [encode_sequence(r[p], r[cfg.chosen_field], tokenizer, cfg.template) for r in rows]
        second = [encode_sequence(r[p], r[cfg.rejected_field], tokenizer, cfg.template) for r in rows]
    else:
        first = [encode_sequence(r[p], r[cfg.response_field], tokenizer, cfg.template) for r in rows]
        second = None
    for k, w in enumerate(where):
        n = max(len(first[k]), len(second[k]) if second is not None else 0)
        if n > cfg.max_len:
            raise ConfigError(f"stage {stage}: {input_name}: {w}: example is {n} tokens (prompt + response + EOS), "
                              f"more than max_len={cfg.max_len}")
    return RMData(first, second, labels, where)


def split_heldout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, held-out)`` example indices: a seeded ``fraction`` held out (at least one, never all)."""
    k = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(int(i) for i in perm[k:]), sorted(int(i) for i in perm[:k])


class RMBatch(NamedTuple):
    """A step's examples. Pairwise: ``tokens`` rows ``[:B]`` are the chosen sequences, ``[B:]`` the rejected."""

    tokens: jax.Array          # [N, T] int32, right-padded (N = 2B pairwise, B pointwise)
    attention_mask: jax.Array  # [N, T] bool
    labels: jax.Array          # [B] float32 (pointwise targets; ones when pairwise)
    weights: jax.Array         # [B] float32: 1 for a real example, 0 for a filler row


def _pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for r, s in enumerate(seqs):
        tokens[r, :len(s)] = s
        mask[r, :len(s)] = True
    return tokens, mask


def make_rm_batch(data: RMData, idx: Sequence[int], max_len: int, pad_id: int,
                  weights: np.ndarray | None = None) -> RMBatch:
    """The :class:`RMBatch` of examples ``idx`` (rows right-padded to ``max_len``)."""
    seqs = [data.first[i] for i in idx] + ([data.second[i] for i in idx] if data.second is not None else [])
    tokens, mask = _pad(seqs, max_len, pad_id)
    w = np.ones(len(idx), np.float32) if weights is None else np.asarray(weights, np.float32)
    return RMBatch(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(data.labels[np.asarray(idx, np.int64)]),
                   jnp.asarray(w))


# ------------------------------------------------------------------------------------------------
# The update.


def objective_loss(objective: str, scores: jax.Array, labels: jax.Array, weights: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reward-model loss of a batch's scores and its diagnostics (pure, jit-safe; ``objective`` static).

    Args:
      objective: ``pairwise`` (``scores`` = chosen rows then rejected rows) or ``pointwise``.
      scores: [2B] (pairwise) or [B] float32 scores.
      labels: [B] targets in [0, 1] (pointwise).
      weights: [B] example weights (0 masks a filler example).

    Returns:
      ``(loss, {"loss", "accuracy", "margin"})``: the weighted mean Bradley-Terry or BCE loss; the
      share of pairs ranked right (pairwise) or of ``score > 0`` agreeing with the label; the mean
      score gap chosen - rejected (pairwise) or positive-class mean minus negative-class mean.
    """
    w = weights.astype(jnp.float32)
    den = jnp.maximum(jnp.sum(w), 1.0)
    if objective == "pairwise":
        b = labels.shape[0]
        chosen, rejected = scores[:b], scores[b:]
        loss = bradley_terry_loss(chosen, rejected, weights=w)
        return loss, {"loss": loss, "accuracy": pairwise_accuracy(chosen, rejected, weights=w),
                      "margin": jnp.sum((chosen - rejected) * w) / den}
    if objective != "pointwise":
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    y = labels.astype(jnp.float32)
    loss = pointwise_bce_loss(scores, y, weights=w)
    right = ((scores > 0) == (y > 0.5)).astype(jnp.float32)
    pos, neg = w * y, w * (1.0 - y)
    margin = (jnp.sum(scores * pos) / jnp.maximum(jnp.sum(pos), 1.0)
              - jnp.sum(scores * neg) / jnp.maximum(jnp.sum(neg), 1.0))
    return loss, {"loss": loss, "accuracy": jnp.sum(right * w) / den, "margin": margin}


def make_rm_update(model: ModelConfig, objective: str, tx, *, jit: bool = True
                   ) -> Callable[[TrainState, RMBatch, Hyper], tuple[TrainState, dict]]:
    """``update(state, batch, hp) -> (state, metrics)``: one optimizer step on :func:`objective_loss` of
    the reward model ``state.params`` (trunk + ``value_head``). A step whose loss, gradient or update
    is non-finite is skipped and counted (``metrics["skipped"]``, ``state.skipped``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")

    def loss_fn(params, rows: RMBatch):
        scores = reward_model_scores(params, model, rows.tokens, rows.attention_mask)
        return objective_loss(objective, scores, rows.labels, rows.weights)

    def update(state: TrainState, batch: RMBatch, hp: Hyper):
        state, metrics = optimizer_step(state, batch, hp, policy_loss=loss_fn, tx=tx, m=1)
        metrics["skipped_in_a_row"] = state.skipped_in_a_row.astype(jnp.float32)
        return state.replace(step=state.step + 1), metrics

    return jax.jit(update, donate_argnums=(0,)) if jit else update


@functools.lru_cache(maxsize=8)
def _rm_update(model_cfg: ModelConfig, objective: str, optim: OptimConfig, total_steps: int):
    """``(tx, jitted update)``, shared by the runs of one process with the same static configs (a resumed
    run, a pipeline's stages) so each compiles once."""
    tx = make_optimizer(optim, total_steps=total_steps)
    return tx, make_rm_update(model_cfg, objective, tx)


@functools.lru_cache(maxsize=8)
def _score_fn(model_cfg: ModelConfig):
    return jax.jit(lambda params, tokens, mask: reward_model_scores(params, model_cfg, tokens, mask))


def score_sequences(params: Any, model_cfg: ModelConfig, seqs: Sequence[Sequence[int]], pad_id: int, *,
                    max_len: int, batch_size: int = 32) -> np.ndarray:
    """Raw head scores of id sequences, in fixed-shape batches of ``batch_size`` rows of ``max_len``
    (a longer sequence keeps its last ``max_len`` ids).

    Returns:
      [len(seqs)] float32.
    """
    fn, out = _score_fn(model_cfg), []
    seqs = [list(s)[-max_len:] for s in seqs]  # longer than the model reads: keep the end (the response)
    for start in range(0, len(seqs), batch_size):
        chunk = list(seqs[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)  # one compiled shape; the fillers are dropped
        tokens, mask = _pad(chunk, max_len, pad_id)
        out.append(np.asarray(fn(params, jnp.asarray(tokens), jnp.asarray(mask)))[:real])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


def heldout_metrics(objective: str, first: np.ndarray, second: np.ndarray | None, labels: np.ndarray, *,
                    confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Held-out metrics of a reward model's scores, with intervals (NaN where undefined).

    Pairwise (``first`` = chosen scores, ``second`` = rejected): ``accuracy`` (pairs ranked right,
    ties wrong; the AUC over pairs) with its Wilson interval ``accuracy_low`` / ``accuracy_high``,
    ``margin`` (mean chosen - rejected) with a Student-t interval, ``loss`` (mean Bradley-Terry).
    Pointwise (``first`` = scores, ``labels`` 0/1): ``auc`` (ROC AUC) with a stratified-bootstrap
    interval (``resamples``, ``seed``), ``accuracy`` of ``score > 0`` with a Wilson interval,
    ``margin`` (mean score of positives minus negatives), ``loss`` (mean BCE); ``positives``.
    Always ``examples``.
    """
    nan = float("nan")
    n = int(first.size)
    out: dict[str, float] = {"examples": float(n)}
    if objective == "pairwise":
        gap = first.astype(np.float64) - second.astype(np.float64)
        right = int(np.sum(gap > 0))
        loss = np.logaddexp(0.0, -gap)
    else:
        y = labels.astype(np.float64)
        s = first.astype(np.float64)
        right = int(np.sum((s > 0) == (y > 0.5)))
        loss = y * np.logaddexp(0.0, -s) + (1 - y) * np.logaddexp(0.0, s)
        out["positives"] = float(y.sum())
        pos, neg = s[y > 0.5], s[y <= 0.5]
        out["margin"] = float(pos.mean() - neg.mean()) if pos.size and neg.size else nan
        if pos.size and neg.size:
            auc = auc_interval(s, y, confidence, num_resamples=resamples, seed=seed)
            out.update(auc=auc.estimate, auc_low=auc.low, auc_high=auc.high)
        else:
            out.update(auc=nan, auc_low=nan, auc_high=nan)
    if n:
        acc = wilson_interval(right, n, confidence)
        out.update(accuracy=acc.estimate, accuracy_low=acc.low, accuracy_high=acc.high, loss=float(loss.mean()))
    else:
        out.update(accuracy=nan, accuracy_low=nan, accuracy_high=nan, loss=nan)
    if objective == "pairwise":
        if n >= 2:
            m = t_interval(gap, confidence)
            out.update(margin=m.estimate, margin_low=m.low, margin_high=m.high)
        else:
            out.update(margin=float(gap.mean()) if n else nan, margin_low=nan, margin_high=nan)
    return out


def _evaluate(params, model_cfg: ModelConfig, data: RMData, cfg: RMConfig, pad_id: int, seed: int) -> dict[str, float]:
    score = functools.partial(score_sequences, params, model_cfg, pad_id=pad_id, max_len=cfg.max_len,
                              batch_size=cfg.eval_batch_size)
    first = score(data.first)
    second = score(data.second) if data.second is not None else None
    return heldout_metrics(cfg.objective, first, second, data.labels, confidence=cfg.confidence,
                           resamples=cfg.bootstrap_resamples, seed=seed)


# ------------------------------------------------------------------------------------------------
# The reward-model directory.


@dataclasses.dataclass(frozen=True)
class RewardModelInfo:
    """What ``reward_model.json`` says about a reward-model directory."""

    objective: str                 # "pairwise" | "pointwise"
    head_file: str = HEAD_FILE     # the head's safetensors file, relative to the directory
    output: str = "raw"            # "raw" (pairwise: a logit for rankings) | "sigmoid" (pointwise: P(label = 1))
    template: str = "plain"        # the prompt template the model was trained with
    max_len: int = 128             # the sequence length it was trained with


def save_reward_model(params: Any, model_cfg: ModelConfig, tokenizer: Tokenizer, directory: str | pathlib.Path,
                      info: RewardModelInfo) -> pathlib.Path:
    """Writes a reward-model directory: the trunk (HF ``config.json`` + ``model.safetensors``), the
    tokenizer, the head (``info.head_file``: ``value_head.kernel`` [D], ``value_head.bias`` [1], float32)
    and ``reward_model.json``. Returns the directory."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    d = pathlib.Path(directory)
    save_pretrained(params, model_cfg, d)  # leaves out the value head
    tokenizer.save(d)
    head = params["value_head"]
    save_file({"value_head.kernel": np.asarray(jax.device_get(head["kernel"]), np.float32),
               "value_head.bias": np.asarray(jax.device_get(head["bias"]), np.float32).reshape(1)},
              str(d / info.head_file), metadata={"format": _FORMAT})
    write_json(d / RM_META_FILE, {"format": _FORMAT, "version": 1, **dataclasses.asdict(info)})
    return d


def check_reward_model_dir(directory: str | pathlib.Path) -> RewardModelInfo:
    """The :class:`RewardModelInfo` of a reward-model directory, from its files alone (no weights read).

    Raises:
      ConfigError: one line: the directory has no ``config.json``, no value head file (a policy
        directory, say), or an unreadable ``reward_model.json``.
    """
    d = pathlib.Path(directory)
    if not (d / "config.json").is_file():
        raise ConfigError(f"RM checkpoint {d} has no config.json: not a model directory")
    meta_path = d / RM_META_FILE
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise ValueError(f"expected an object with format {_FORMAT!r}")
            info = RewardModelInfo(**{f.name: meta[f.name] for f in dataclasses.fields(RewardModelInfo)
                                      if f.name in meta})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"RM checkpoint {d}: {RM_META_FILE} cannot be read: {' '.join(str(e).split())}") from None
        if info.objective not in OBJECTIVES or info.output not in ("raw", "sigmoid"):
            raise ConfigError(f"RM checkpoint {d}: {RM_META_FILE}: objective {info.objective!r} / output "
                              f"{info.output!r} not understood")
    head = meta.get("head_file", HEAD_FILE)
    if not (d / head).is_file():
        raise ConfigError(f"RM checkpoint {d} has no value head file ({head}): it is not a reward model "
                          f"(a policy directory?); train one with `r1jax rm`")
    if not meta:
        raise ConfigError(f"RM checkpoint {d} has a value head file but no {RM_META_FILE} (objective, template)")
    return info


def load_reward_model(directory: str | pathlib.Path) -> tuple[Any, ModelConfig, Tokenizer, RewardModelInfo]:
    """Reads a directory written by :func:`save_reward_model` (the ``rm`` stage's ``reward_model`` output).

    Returns:
      ``(params, model_config, tokenizer, info)``: ``params`` holds the trunk and ``value_head``
      (float32), ready for :func:`r1jax.rewards.reward_model.reward_model_scores` or
      ``ValueHeadRewardModel(params, model_config, output=info.output)``.

    Raises:
      ConfigError: one line naming the directory: not a reward-model directory (no value head file,
        e.g. a policy's), or a head whose shape does not fit the trunk.
    """
    from safetensors.numpy import load_file  # noqa: PLC0415

    d = pathlib.Path(directory)
    info = check_reward_model_dir(d)
    params, model_cfg = load_pretrained(d, param_dtype="float32")
    try:
        head = load_file(str(d / info.head_file))
    except Exception as e:  # noqa: BLE001 - safetensors' errors as one line
        raise ConfigError(f"RM checkpoint {d}: {info.head_file} cannot be read: {' '.join(str(e).split())}") from None
    kernel, bias = head.get("value_head.kernel"), head.get("value_head.bias")
    if kernel is None or bias is None or kernel.shape != (model_cfg.hidden_size,) or bias.size != 1:
        shapes = {k: tuple(v.shape) for k, v in head.items()}
        raise ConfigError(f"RM checkpoint {d}: {info.head_file} must hold value_head.kernel "
                          f"[{model_cfg.hidden_size}] and value_head.bias [1]; found {shapes}")
    params = {**params, "value_head": {"kernel": jnp.asarray(kernel, jnp.float32),
                                       "bias": jnp.asarray(bias.reshape(()), jnp.float32)}}
    return params, model_cfg, load_tokenizer(d), info


def score_texts(params: Any, model_cfg: ModelConfig, tokenizer: Tokenizer, info: RewardModelInfo,
                prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 32,
                max_len: int | None = None) -> np.ndarray:
    """Scores of (prompt, response) texts as the model was trained to read them; ``info.output`` applied
    (``sigmoid``: probabilities). ``max_len`` defaults to the longest sequence (rounded up to 16).

    Returns:
      [n] float32.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    seqs = [encode_sequence(p, r, tokenizer, info.template) for p, r in zip(prompts, responses)]
    length = max_len or max(16, -(-max((len(s) for s in seqs), default=1) // 16) * 16)
    raw = score_sequences(params, model_cfg, seqs, tokenizer.pad_id, max_len=length, batch_size=batch_size)
    return (1.0 / (1.0 + np.exp(-raw))).astype(np.float32) if info.output == "sigmoid" else raw


# ------------------------------------------------------------------------------------------------
# The run.


def _check_model_dir(stage: str, model: pathlib.Path | None) -> None:
    if model is not None and not (pathlib.Path(model) / "config.json").is_file():
        raise ConfigError(f"stage {stage}: inputs.model: {model} has no config.json (expected an HF model directory)")


def run_rm(stage: str, config: Mapping[str, Any] | RMConfig, *, data: pathlib.Path, model: pathlib.Path,
           out_dir: pathlib.Path, eval_data: pathlib.Path | None = None, seed: int = 0,
           on_step: Callable[[int, dict], None] | None = None) -> StageResult:
    """Runs (or resumes) one reward-model stage in ``out_dir``; see the module docstring.

    Args:
      stage: the stage's name (messages, checkpoint meta).
      config: the stage's config section (or an :class:`RMConfig`).
      data: the training dataset (JSONL, or Parquet by its ``.parquet`` suffix).
      model: the HF policy directory whose trunk the reward model starts from.
      out_dir: the stage directory (checkpoints, log, reward model, metrics).
      eval_data: a held-out dataset (None: hold out ``heldout_fraction`` of ``data``).
      seed: the pipeline's seed (used when ``config.seed`` is None).
      on_step: called as ``on_step(step, metrics)`` after each optimizer step (``step`` counts
        completed steps); an exception raised there stops the run like a kill.

    Returns:
      A :class:`StageResult` with ``reward_model`` and ``metrics`` paths and the metrics: ``train_loss``
      (last step), ``steps``, ``skipped``, ``train_examples``, ``heldout_examples`` and the
      :func:`heldout_metrics` after training as ``heldout_<name>`` and before it (fresh head) as
      ``heldout_<name>_initial`` (pairwise: accuracy with ``_low`` / ``_high``, margin, loss;
      pointwise also auc with ``_low`` / ``_high``).
    """
    cfg = parse_rm_config(stage, config)
    seed = cfg.seed if cfg.seed is not None else seed
    out_dir = pathlib.Path(out_dir)
    _check_model_dir(stage, model)
    tokenizer = load_tokenizer(model)
    train = encode_rm_data(data, tokenizer, cfg, stage=stage, input_name="data")
    if eval_data is not None:
        held = encode_rm_data(eval_data, tokenizer, cfg, stage=stage, input_name="eval_data")
    else:
        tr, he = split_heldout(len(train), cfg.heldout_fraction, seed)
        train, held = train.subset(tr), train.subset(he)
    trunk, model_cfg = load_pretrained(model, param_dtype="float32")
    if cfg.max_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"stage {stage}: max_len: {cfg.max_len} exceeds the model's max_position_embeddings "
                          f"{model_cfg.max_position_embeddings}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rm_out, metrics_path = out_dir / "reward_model", out_dir / "metrics.json"
    outputs = {"reward_model": rm_out, "metrics": metrics_path}
    run_id = digest_data({"kind": "rm", "config": to_dict(cfg), "seed": seed, "data": digest_path(data),
                      "eval_data": digest_path(eval_data) if eval_data else None, "model": digest_path(model)})
    if metrics_path.is_file() and (rm_out / RM_META_FILE).is_file():
        done = json.loads(metrics_path.read_text())
        if done.get("run_id") == run_id:  # finished by an earlier run: nothing to redo
            return StageResult(outputs, done["metrics"])

    params = {**trunk, **init_value_head(model_cfg, jax.random.fold_in(jax.random.PRNGKey(seed), 1))}
    total = cfg.max_steps or cfg.epochs * steps_per_epoch(len(train), cfg.batch_size)
    tx, update = _rm_update(model_cfg, cfg.objective, stage_optimizer(cfg), total)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # one device, like a restored state
    state = jax.device_put(init_state(params, tx, jax.random.PRNGKey(seed)), device)
    hp = Hyper.from_config(AlgoConfig())
    pad = tokenizer.pad_id

    checkpointer = Checkpointer(out_dir / "checkpoints", keep=2)
    try:
        state, meta = restore_stage(checkpointer, state, device, run_id, stage)
        if meta is not None:
            initial = meta["heldout_initial"]
        else:
            initial = _evaluate(state.params, model_cfg, held, cfg, pad, seed)
        meta = {"stage": stage, "run_id": run_id, "heldout_initial": initial, "total_steps": total}
        metrics: dict = {}
        truncate_log(out_dir / "log.jsonl", int(state.step))
        with (out_dir / "log.jsonl").open("a") as log:
            for step in range(int(state.step), total):
                batch = make_rm_batch(train, batch_indices(len(train), cfg.batch_size, seed, step), cfg.max_len, pad)
                state, metrics = update(state, batch, hp)
                done = step + 1
                if done % cfg.log_every == 0 or done == total:
                    log.write(json.dumps({"step": done, "loss": float(metrics["loss"]),
                                          "accuracy": float(metrics["accuracy"])}) + "\n")
                    log.flush()
                if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == total:
                    checkpointer.save(done, state, {**meta, "train_loss": float(metrics["loss"])})
                if on_step is not None:
                    on_step(done, metrics)
        last = checkpointer.latest_step()
        train_loss = float(metrics["loss"]) if metrics else checkpointer.read_meta(last)["train_loss"]
    finally:
        checkpointer.close()

    final = _evaluate(state.params, model_cfg, held, cfg, pad, seed)
    result = {"train_loss": train_loss, "steps": float(total), "skipped": float(state.skipped),
              "train_examples": float(len(train)), "heldout_examples": float(len(held)),
              **{f"heldout_{k}": v for k, v in final.items() if k != "examples"},
              **{f"heldout_{k}_initial": v for k, v in initial.items() if k not in ("examples", "positives")}}
    info = RewardModelInfo(objective=cfg.objective, output="raw" if cfg.objective == "pairwise" else "sigmoid",
                           template=cfg.template, max_len=cfg.max_len)
    save_reward_model(state.params, model_cfg, tokenizer, rm_out, info)
    write_json(metrics_path, {"stage": stage, "run_id": run_id, "objective": cfg.objective,
                              "confidence": cfg.confidence, "metrics": result})
    return StageResult(outputs, result)


@register_stage_kind("rm")
class RMStage(StageKind):
    """``kind: rm``: reward-model training (see :func:`run_rm`). Config: :class:`RMConfig`."""

    inputs = ("model", "data")
    optional_inputs = ("eval_data",)
    outputs = ("reward_model", "metrics")

    def check(self, stage, config, inputs):
        cfg = parse_rm_config(stage, config)
        _check_model_dir(stage, inputs.get("model"))
        for name in ("data", "eval_data"):
            if inputs.get(name) is not None:
                _read(pathlib.Path(inputs[name]), cfg, stage, name)

    def run(self, ctx: StageContext) -> StageResult:
        return run_rm(ctx.name, ctx.config, data=ctx.inputs["data"], model=ctx.inputs["model"],
                      out_dir=ctx.out_dir, eval_data=ctx.inputs.get("eval_data"), seed=ctx.seed)
