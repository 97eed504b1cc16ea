"""The ``sft`` stage kind: supervised fine-tuning on a dataset (JSONL or Parquet) of (prompt, completion) pairs.

One config-driven SFT for every supervised step of the R1 pipeline (arXiv 2501.12948, Figure 2):
the cold start of reasoning RL on a few thousand long-CoT examples (§2.3.1 / App. B.3.2), the SFT on
~800k rejection-sampled and non-reasoning examples (§2.3.3), and the distillation of small students
(§4.1, :mod:`r1jax.pipeline.distill`). It is the general form of ``experiments/pretrain_base.py``:

* the model is either the input ``model`` (an HF directory, fine-tuned) or a new one made from
  ``model.config`` (a :class:`~r1jax.models.ModelConfig` dict; the tokenizer from ``model.tokenizer``);
* rows are the template-rendered prompt (:func:`r1jax.data.templates.encode_prompt`) followed by the
  completion and EOS; the loss is the token-mean NLL of the completion tokens only
  (:func:`r1jax.train.steps.make_sft_update`), rows right-padded or packed (``packing: true``:
  :func:`r1jax.data.batching.pack_sequences`, each sequence attending only to itself);
* the batch of step ``s`` is a function of ``(seed, s)`` alone (a fresh permutation per epoch), so a
  run killed and restarted from its orbax checkpoint (every ``checkpoint_every`` steps, in
  ``out_dir/checkpoints``) trains on the same batches and ends with the same parameters;
* evaluation: the held-out NLL (on ``eval_data``, or a seeded ``heldout_fraction`` of ``data``)
  before and after training, and the format rate: greedy completions of held-out prompts from the
  embedded :class:`~r1jax.sampling.Sampler`, scored by a registered reward (``format_eval.reward``);
* outputs: ``out_dir/model`` (HF weights + tokenizer) and ``out_dir/metrics.json``.

The cold-start output format ``|special_token|<reasoning_process>|special_token|<summary>`` is
:class:`ColdStartFormat` (its tokens and line separator configurable; the tiny char tokenizer has no
newline, so the tiny configs use ``newline: " "``), and :func:`r1_zero_to_cold_start` rewrites an
R1-Zero completion into it (used by the ``sample`` stage's ``cold_start`` option to make cold-start
data from an R1-Zero checkpoint's own correct samples, as the paper did).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import algos
from r1jax.config import ConfigError, field, from_dict, to_dict
from r1jax.data.batching import pack_sequences, pad_sequences
from r1jax.data.templates import PROMPT_TEMPLATES, encode_prompt, render_prompt
from r1jax.data.tokenizer import Tokenizer, load_tokenizer
from r1jax.models import ModelConfig, init_params, load_pretrained, save_pretrained
from r1jax.pipeline.datasets import read_rows, write_json
from r1jax.pipeline.manifest import digest_data, digest_path
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind
from r1jax.rewards.parsing import extract_tag, extract_think
from r1jax.rewards.registry import get_reward
from r1jax.sampling import Sampler, SamplingParams
from r1jax.train.checkpoint import Checkpointer
from r1jax.train.config import DECODE_WINDOW, AlgoConfig, KernelConfig, OptimConfig
from r1jax.train.state import Hyper, init_state, make_optimizer
from r1jax.train.steps import SFTBatch, make_sft_update, policy_logprobs

__all__ = [
    "ColdStartFormat", "r1_zero_to_cold_start",
    "SFTModelConfig", "FormatEvalConfig", "SFTConfig", "parse_sft_config",
    "SFTData", "encode_examples", "batch_indices", "steps_per_epoch", "make_batch", "nll_sum_fn", "heldout_loss",
    "format_rate",
    "run_sft", "SFTStage",
]


# ------------------------------------------------------------------------------------------------
# The cold-start output format.


@dataclasses.dataclass(frozen=True)
class ColdStartFormat:
    """The cold-start format ``|special_token|<reasoning_process>|special_token|<summary>`` (App. B.3.2).

    ``render(r, s) = open + nl + r + nl + close + nl + nl + s``: with the defaults this is exactly
    :func:`r1jax.data.templates.format_cold_start` (``<think>\\n r \\n</think>\\n\\n s``).
    """

    open_token: str = field("<think>", help="the first |special_token| (before the reasoning)")
    close_token: str = field("</think>", help="the second |special_token| (between reasoning and summary)")
    newline: str = field("\n", help="line separator (' ' for tokenizers without a newline, e.g. the tiny char one)")

    def check(self) -> None:
        if not self.open_token or not self.close_token or self.open_token == self.close_token:
            raise ConfigError("open_token and close_token: must be two different non-empty strings")

    def render(self, reasoning: str, summary: str) -> str:
        """The completion text of ``(reasoning, summary)``.

        Raises:
          ValueError: the reasoning contains a delimiter (the text could not be parsed back).
        """
        for tok in (self.open_token, self.close_token):
            if tok in reasoning:
                raise ValueError(f"cold-start reasoning contains the delimiter {tok!r}: {reasoning[:60]!r}")
        nl = self.newline
        return f"{self.open_token}{nl}{reasoning}{nl}{self.close_token}{nl}{nl}{summary}"

    def parse(self, text: str) -> tuple[str, str] | None:
        """``(reasoning, summary)`` of a rendered completion, or None when it is not in the format."""
        nl = self.newline
        head, mid = f"{self.open_token}{nl}", f"{nl}{self.close_token}{nl}{nl}"
        if not text.startswith(head):
            return None
        body = text[len(head):]
        cut = body.find(mid)
        if cut < 0 or self.open_token in body[:cut] or self.close_token in body[:cut]:
            return None
        return body[:cut], body[cut + len(mid):]

    def check_encodable(self, tokenizer: Tokenizer) -> None:
        """Raises ConfigError when a delimiter or the separator does not survive encode -> decode."""
        unk = tokenizer.token_to_id(tokenizer.unk_token) if tokenizer.unk_token else None
        for name in ("open_token", "close_token", "newline"):
            text = getattr(self, name)
            ids = tokenizer.encode(text, add_special_tokens=False)
            if (unk is not None and unk in ids) or tokenizer.decode(ids, skip_special_tokens=False) != text:
                raise ConfigError(f"cold_start.{name}: {text!r} is not encodable by the tokenizer "
                                  f"({tokenizer.source or 'given'}): ids {ids} decode to "
                                  f"{tokenizer.decode(ids, skip_special_tokens=False)!r}")


def r1_zero_to_cold_start(completion: str, fmt: ColdStartFormat = ColdStartFormat()) -> str | None:
    """An R1-Zero completion ``<think> R </think> <answer> A </answer>`` rewritten into the cold-start
    format with the reasoning ``R`` and the summary ``<answer> A </answer>`` (as
    :func:`r1jax.data.templates.sft_completion` does), so the rule rewards score both formats alike.

    Returns:
      The rewritten text, or None when the completion has no ``<think>`` or ``<answer>`` block.
    """
    reasoning, answer = extract_think("", completion), extract_tag(completion, "answer")
    if reasoning is None or answer is None or not reasoning.strip() or not answer.strip():
        return None
    return fmt.render(" ".join(reasoning.split()), f"<answer> {answer.strip()} </answer>")


# ------------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class SFTModelConfig:
    """Where the trained model comes from: the input ``model`` directory, or a new one from ``config``."""

    config: dict[str, Any] | None = field(
        None, help="ModelConfig of a model trained from scratch (vocab_size, bos/eos ids default to the "
                   "tokenizer's); None: fine-tune the input `model`")
    tokenizer: str | None = field(None, help="tokenizer directory of a model trained from scratch")


@dataclasses.dataclass(frozen=True)
class FormatEvalConfig:
    """The format-compliance eval: greedy completions of held-out prompts scored by a reward."""

    reward: str | None = field("format_strict", help="registered reward name; None = no format eval")
    num_prompts: int = field(16, ge=0, help="held-out prompts sampled (0 = off)")
    max_new_tokens: int = field(64, ge=1, help="generation budget")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The ``sft`` stage's config section."""

    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    prompt_field: str = field("prompt", help="dataset field with the question (rendered with `template`)")
    completion_field: str = field("completion", help="dataset field with the target completion (EOS appended)")
    template: str = field("plain", choices=tuple(PROMPT_TEMPLATES), help="prompt template")
    epochs: int = field(1, ge=1, help="passes over the training rows")
    max_steps: int | None = field(None, ge=1, help="cap on optimizer steps (None: epochs × steps per epoch)")
    batch_size: int = field(8, ge=1, help="sequences per step")
    max_len: int = field(128, ge=2, help="row length in tokens; a longer example is an error")
    packing: bool = field(False, help="pack sequences into rows (segment ids) instead of one per row")
    pack_rows: int | None = field(None, ge=1, help="rows per packed batch (default batch_size; set it lower to "
                                                     "gain from packing; a step whose batch does not fit is an error)")
    lr: float = field(1e-3, gt=0.0, help="peak learning rate")
    warmup_steps: int = field(0, ge=0)
    schedule: str = field("constant", choices=("constant", "cosine"))
    weight_decay: float = field(0.0, ge=0.0)
    grad_clip: float | None = field(1.0, gt=0.0)
    seed: int | None = field(None, ge=0, help="data order and init; None: the pipeline's seed")
    heldout_fraction: float = field(0.1, ge=0.0, lt=1.0, help="held out of `data` when there is no eval_data")
    eval_batch_size: int = field(16, ge=1, help="rows per held-out loss batch")
    checkpoint_every: int = field(50, ge=0, help="orbax checkpoint every N steps (and at the end); 0: end only")
    log_every: int = field(10, ge=1, help="append the train loss to out_dir/log.jsonl every N steps")
    format_eval: FormatEvalConfig = field(default_factory=FormatEvalConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)


def parse_sft_config(stage: str, config: Mapping[str, Any] | SFTConfig, *,
                     tokenizer_given: bool = False) -> SFTConfig:
    """The validated :class:`SFTConfig` of a stage section; ConfigError lines start ``stage NAME:``.

    ``tokenizer_given``: the caller supplies the tokenizer of a model trained from scratch (the
    distill stage: the teacher's), so ``model.tokenizer`` may be left out.
    """
    if isinstance(config, SFTConfig):
        return config
    try:
        cfg = from_dict(SFTConfig, config)
        if cfg.model.config is not None:
            from_dict(ModelConfig, {"vocab_size": 1, **cfg.model.config})
            if cfg.model.tokenizer is None and not tokenizer_given:
                raise ConfigError("model.tokenizer: a model trained from scratch (model.config) needs a tokenizer "
                                  "directory")
        if cfg.format_eval.reward is not None and cfg.format_eval.num_prompts:
            try:
                get_reward(cfg.format_eval.reward)
            except KeyError as e:
                raise ConfigError(f"format_eval.reward: {e.args[0]}") from None
    except ConfigError as e:
        raise ConfigError(f"stage {stage}: {e}") from None
    return cfg


# ------------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class SFTData:
    """Encoded examples: prompt ids, completion ids (EOS appended), question texts, where they came from."""

    prompts: list[list[int]]
    completions: list[list[int]]
    questions: list[str]
    where: list[str]     # "file:line" (JSONL) or "file: row k" (Parquet) of each example

    def subset(self, idx: Sequence[int]) -> "SFTData":
        return SFTData(*([getattr(self, f.name)[i] for i in idx] for f in dataclasses.fields(self)))

    def __len__(self) -> int:
        return len(self.prompts)


def encode_examples(path: str | pathlib.Path, tokenizer: Tokenizer, cfg: SFTConfig, *, stage: str,
                    input_name: str = "data") -> SFTData:
    """Reads, checks and encodes a dataset (JSONL or Parquet); an example longer than ``max_len`` is a ConfigError."""
    if tokenizer.eos_id is None:
        raise ConfigError(f"stage {stage}: the tokenizer ({tokenizer.source}) has no eos_token")
    rows, where = read_rows(path, (cfg.prompt_field, cfg.completion_field), stage=stage, input_name=input_name,
                            return_where=True)
    questions = [r[cfg.prompt_field] for r in rows]
    prompts = [encode_prompt(q, tokenizer, cfg.template) for q in questions]
    completions = [tokenizer.encode(r[cfg.completion_field], add_special_tokens=False) + [tokenizer.eos_id]
                   for r in rows]
    for p, c, w in zip(prompts, completions, where):
        if len(p) + len(c) > cfg.max_len:
            raise ConfigError(f"stage {stage}: {input_name}: {w}: example is {len(p) + len(c)} tokens "
                              f"(prompt {len(p)} + completion {len(c)}), more than max_len={cfg.max_len}")
    return SFTData(prompts, completions, questions, where)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of step ``step``: a function of ``(seed, step)`` alone.

    Epoch ``e = step // steps_per_epoch`` visits the examples in the permutation drawn from
    ``default_rng([seed, e])``; the last batch of an epoch is filled from the permutation's start, so
    every batch has ``batch_size`` rows (one compiled shape).
    """
    spe = steps_per_epoch(num_examples, batch_size)
    epoch, k = divmod(step, spe)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    idx = np.arange(k * batch_size, (k + 1) * batch_size) % num_examples
    return perm[idx]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def make_batch(data: SFTData, idx: Sequence[int], cfg: SFTConfig, pad_id: int) -> SFTBatch:
    """The :class:`SFTBatch` of examples ``idx``: padded rows, or packed rows with segment ids.

    ``SFTBatch.loss_mask`` is ``TokenBatch.loss_mask[:, 1:]``: the targets that are completion tokens.
    """
    prompts, completions = [data.prompts[i] for i in idx], [data.completions[i] for i in idx]
    if cfg.packing:
        tb = pack_sequences(prompts, completions, cfg.max_len, pad_id, num_rows=cfg.pack_rows or len(idx))
        seg = jnp.asarray(tb.segment_ids)
    else:
        tb = pad_sequences(prompts, completions, pad_id, length=cfg.max_len)
        seg = None
    return SFTBatch(tokens=jnp.asarray(tb.tokens), attention_mask=jnp.asarray(tb.attention_mask),
                    loss_mask=jnp.asarray(tb.loss_mask[:, 1:]), segment_ids=seg)


# ------------------------------------------------------------------------------------------------
# Evaluation.


@functools.lru_cache(maxsize=8)
def _sft_update(model_cfg: ModelConfig, kernels: KernelConfig, optim: OptimConfig, total_steps: int):
    """``(tx, jitted update)``, shared by the SFT runs of one process with the same static configs (a
    pipeline's stages, a resumed run) so each compiles once."""
    tx = make_optimizer(optim, total_steps=total_steps)
    return tx, make_sft_update(model_cfg, kernels, tx)


@functools.lru_cache(maxsize=8)
def nll_sum_fn(model_cfg: ModelConfig, kernels: KernelConfig):
    """Jitted ``nll_sum(params, batch) -> (sum of completion-token NLLs, number of them)`` (the ``nll``
    loss's numerator and denominator, so batches combine exactly)."""
    @jax.jit
    def nll_sum(params, batch: SFTBatch):
        logp = policy_logprobs(params, model_cfg, kernels, batch.tokens, batch.attention_mask, jnp.float32(1.0),
                               segment_ids=batch.segment_ids)
        out = algos.POLICY_LOSSES["nll"](logp, None, None, batch.loss_mask)
        return algos.loss_numerator(out.loss, batch.loss_mask, "token_mean"), jnp.sum(batch.loss_mask)

    return nll_sum


def heldout_loss(params, model_cfg: ModelConfig, data: SFTData, cfg: SFTConfig, pad_id: int, *,
                 nll_sum: Callable | None = None) -> float:
    """Token-mean NLL of the completion tokens of ``data`` (all of it, in order)."""
    if not len(data):
        return float("nan")
    nll_sum = nll_sum or nll_sum_fn(model_cfg, cfg.kernels)
    total, count, bs = 0.0, 0, cfg.eval_batch_size
    padded = dataclasses.replace(cfg, packing=False)  # same loss as packed rows (tested); fixed shapes
    for start in range(0, len(data), bs):
        real = min(bs, len(data) - start)
        idx = [start + min(i, real - 1) for i in range(bs)]  # fixed shape; the repeats are masked out
        batch = make_batch(data, idx, padded, pad_id)
        batch = batch._replace(loss_mask=batch.loss_mask & jnp.asarray(np.arange(bs) < real)[:, None])
        s, n = nll_sum(params, batch)
        total, count = total + float(s), count + int(n)
    return total / max(count, 1)


def format_rate(params, model_cfg: ModelConfig, tokenizer: Tokenizer, questions: Sequence[str], cfg: SFTConfig,
                seed: int) -> float:
    """Mean ``format_eval.reward`` of greedy completions of ``questions`` (the embedded sampler)."""
    fe = cfg.format_eval
    questions = list(questions)[: fe.num_prompts]
    if fe.reward is None or not questions:
        return float("nan")
    reward = get_reward(fe.reward).fn
    prompts = [encode_prompt(q, tokenizer, cfg.template) for q in questions]
    sampler = Sampler(model_cfg, max_batch_rows=max(len(prompts), 1), pad_id=tokenizer.pad_id,
                      decode_window=DECODE_WINDOW)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=fe.max_new_tokens,
                              stop_token_ids=tokenizer.eos_ids, n=1, seed=seed)
    groups = sampler.generate(params, prompts, sampling)
    texts = [tokenizer.decode(g[0].token_ids) for g in groups]
    scores = [float(reward(render_prompt(q, cfg.template, tokenizer=tokenizer), t, None))
              for q, t in zip(questions, texts)]
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------------------
# The run.


def _load_model(cfg: SFTConfig, model_dir: pathlib.Path | None, tokenizer_dir: pathlib.Path | None, seed: int,
                stage: str):
    """(params, model_cfg, tokenizer): the input model, or a new one from ``model.config``."""
    if cfg.model.config is not None:
        if model_dir is not None:
            raise ConfigError(f"stage {stage}: give either the input `model` (fine-tune) or model.config "
                              "(train from scratch), not both")
        tok_dir = pathlib.Path(cfg.model.tokenizer) if cfg.model.tokenizer else tokenizer_dir
        tokenizer = load_tokenizer(tok_dir)
        base = {"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_id,
                "eos_token_ids": list(tokenizer.eos_ids)}
        try:
            model_cfg = from_dict(ModelConfig, {**base, **cfg.model.config})
        except ConfigError as e:
            raise ConfigError(f"stage {stage}: model.config: {e}") from None
        if model_cfg.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"stage {stage}: model.config.vocab_size: {model_cfg.vocab_size} is smaller than the "
                              f"tokenizer's {tokenizer.vocab_size} ({tok_dir})")
        params = jax.jit(init_params, static_argnums=0)(model_cfg, jax.random.PRNGKey(seed))
        return params, model_cfg, tokenizer
    if model_dir is None:
        raise ConfigError(f"stage {stage}: no model: give the input `model` (an HF directory) or model.config")
    params, model_cfg = load_pretrained(model_dir, param_dtype="float32")
    return params, model_cfg, load_tokenizer(model_dir)


def _split(data: SFTData, fraction: float, seed: int) -> tuple[SFTData, SFTData]:
    """(train, held-out): a seeded ``fraction`` of the examples held out (at least one, never all)."""
    n = len(data)
    k = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return data.subset(sorted(perm[k:])), data.subset(sorted(perm[:k]))


def truncate_log(path: pathlib.Path, step: int) -> None:
    """Drops log lines after ``step`` (written by a run that was killed after its last checkpoint)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def stage_optimizer(cfg: Any) -> OptimConfig:
    """The optimizer section of a training stage's config (``lr``, ``schedule``, ``warmup_steps``,
    ``weight_decay``, ``grad_clip``: the fields an sft and an rm config share)."""
    return OptimConfig(lr=cfg.lr, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def restore_stage(checkpointer: Checkpointer, state: Any, device: Any, run_id: str, stage: str) -> tuple[Any, dict | None]:
    """The stage's newest checkpoint as ``(state on device, its meta)``, or ``(state, None)`` without one.

    Raises:
      ConfigError: the checkpoints belong to another run (its config, data or model changed).
    """
    restored = checkpointer.restore_latest(state)
    if restored is None:
        return state, None
    _, state, meta = restored
    if meta.get("run_id") != run_id:
        raise ConfigError(f"stage {stage}: {checkpointer.directory} holds checkpoints of another run (config, "
                          "data or model changed); remove them or use another directory")
    return jax.device_put(state, device), meta


def run_sft(stage: str, config: Mapping[str, Any] | SFTConfig, *, data: pathlib.Path, out_dir: pathlib.Path,
            model: pathlib.Path | None = None, eval_data: pathlib.Path | None = None,
            tokenizer_dir: pathlib.Path | None = None, seed: int = 0,
            on_step: Callable[[int, dict], None] | None = None) -> StageResult:
    """Runs (or resumes) one SFT stage in ``out_dir``; see the module docstring.

    Args:
      stage: the stage's name (messages, checkpoint meta).
      config: the stage's config section (or an :class:`SFTConfig`).
      data: the training dataset (JSONL, or Parquet by its ``.parquet`` suffix).
      out_dir: the stage directory (checkpoints, log, model, metrics).
      model: the input HF directory to fine-tune (None: ``model.config`` from scratch).
      eval_data: a held-out dataset, JSONL or Parquet (None: hold out ``heldout_fraction`` of ``data``).
      tokenizer_dir: the tokenizer of a model from scratch when ``model.tokenizer`` is not set (the
        distill stage passes the teacher's).
      seed: the pipeline's seed (used when ``config.seed`` is None).
      on_step: called as ``on_step(step, metrics)`` after each optimizer step (``step`` counts
        completed steps); an exception raised there stops the run like a kill.

    Returns:
      A :class:`StageResult` with ``model`` and ``metrics`` paths and the final metrics:
      ``train_loss`` (last step), ``heldout_loss_initial``, ``heldout_loss``, ``format_rate``,
      ``steps``, ``train_examples``, ``heldout_examples``.
    """
    cfg = parse_sft_config(stage, config, tokenizer_given=tokenizer_dir is not None)
    seed = cfg.seed if cfg.seed is not None else seed
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_out, metrics_path = out_dir / "model", out_dir / "metrics.json"

    params, model_cfg, tokenizer = _load_model(cfg, model, tokenizer_dir, seed, stage)
    train = encode_examples(data, tokenizer, cfg, stage=stage, input_name="data")
    if eval_data is not None:
        held = encode_examples(eval_data, tokenizer, cfg, stage=stage, input_name="eval_data")
    else:
        train, held = _split(train, cfg.heldout_fraction, seed)
    if cfg.max_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"stage {stage}: max_len: {cfg.max_len} exceeds the model's max_position_embeddings "
                          f"{model_cfg.max_position_embeddings}")
    run_id = digest_data({"config": to_dict(cfg), "seed": seed, "data": digest_path(data),
                      "eval_data": digest_path(eval_data) if eval_data else None,
                      "model": digest_path(model) if model else None})
    if metrics_path.is_file() and (model_out / "config.json").is_file():
        done = json.loads(metrics_path.read_text())
        if done.get("run_id") == run_id:  # finished by an earlier run: nothing to redo
            return StageResult({"model": model_out, "metrics": metrics_path}, done["metrics"])

    total = cfg.max_steps or cfg.epochs * steps_per_epoch(len(train), cfg.batch_size)
    tx, update = _sft_update(model_cfg, cfg.kernels, stage_optimizer(cfg), total)
    # One device (this stage does not shard); committed like a restored state, so both share compiles.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = jax.device_put(init_state(params, tx, jax.random.PRNGKey(seed)), device)
    hp = Hyper.from_config(AlgoConfig())
    nll_sum = nll_sum_fn(model_cfg, cfg.kernels)
    pad = tokenizer.pad_id

    checkpointer = Checkpointer(out_dir / "checkpoints", keep=2)
    try:
        state, meta = restore_stage(checkpointer, state, device, run_id, stage)
        if meta is not None:
            initial = meta["heldout_loss_initial"]
        else:
            initial = heldout_loss(state.params, model_cfg, held, cfg, pad, nll_sum=nll_sum)
        meta = {"stage": stage, "run_id": run_id, "heldout_loss_initial": initial, "total_steps": total}
        metrics: dict = {}
        truncate_log(out_dir / "log.jsonl", int(state.step))
        with (out_dir / "log.jsonl").open("a") as log:
            for step in range(int(state.step), total):
                try:
                    batch = make_batch(train, batch_indices(len(train), cfg.batch_size, seed, step), cfg, pad)
                except ValueError as e:  # pack_rows too small for this step's sequences
                    raise ConfigError(f"stage {stage}: pack_rows: step {step}: {e}") from None
                state, metrics = update(state, batch, hp)
                done = step + 1
                if done % cfg.log_every == 0 or done == total:
                    log.write(json.dumps({"step": done, "loss": float(metrics["loss"])}) + "\n")
                    log.flush()
                if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == total:
                    checkpointer.save(done, state, {**meta, "train_loss": float(metrics["loss"])})
                if on_step is not None:
                    on_step(done, metrics)
        last = checkpointer.latest_step()
        train_loss = (float(metrics["loss"]) if metrics else checkpointer.read_meta(last)["train_loss"])
    finally:
        checkpointer.close()

    params = state.params
    result = {
        "train_loss": train_loss,
        "heldout_loss_initial": float(initial),
        "heldout_loss": heldout_loss(params, model_cfg, held, cfg, pad, nll_sum=nll_sum),
        "format_rate": format_rate(params, model_cfg, tokenizer, held.questions or train.questions, cfg, seed),
        "steps": float(total), "train_examples": float(len(train)), "heldout_examples": float(len(held)),
    }
    save_pretrained(params, model_cfg, model_out)
    tokenizer.save(model_out)
    write_json(metrics_path, {"stage": stage, "run_id": run_id, "metrics": result})
    return StageResult({"model": model_out, "metrics": metrics_path}, result)


@register_stage_kind("sft")
class SFTStage(StageKind):
    """``kind: sft``: supervised fine-tuning (see :func:`run_sft`). Config: :class:`SFTConfig`."""

    inputs = ("data",)
    optional_inputs = ("model", "eval_data")
    outputs = ("model", "metrics")

    def check(self, stage, config, inputs):
        cfg = parse_sft_config(stage, config)
        fields = (cfg.prompt_field, cfg.completion_field)
        for name in ("data", "eval_data"):
            if inputs.get(name) is not None:
                read_rows(inputs[name], fields, stage=stage, input_name=name)
        if cfg.model.config is not None and inputs.get("model") is not None:
            raise ConfigError(f"stage {stage}: give either the input `model` (fine-tune) or model.config "
                              "(train from scratch), not both")
        if cfg.model.config is None and "model" not in inputs:
            raise ConfigError(f"stage {stage}: no model: give the input `model` (an HF directory) or model.config")
        if cfg.model.config is not None and not (pathlib.Path(cfg.model.tokenizer) / "tokenizer.json").is_file():
            raise ConfigError(f"stage {stage}: model.tokenizer: {cfg.model.tokenizer} has no tokenizer.json")

    def run(self, ctx: StageContext) -> StageResult:
        return run_sft(ctx.name, ctx.config, data=ctx.inputs["data"], out_dir=ctx.out_dir,
                       model=ctx.inputs.get("model"), eval_data=ctx.inputs.get("eval_data"), seed=ctx.seed)
