"""The ``sample`` stage kind: rejection sampling from a checkpoint into an SFT dataset (paper §2.3.3).

DeepSeek-R1 made its ~600k reasoning SFT examples by sampling several responses per prompt from the
reasoning-RL checkpoint and keeping only the good ones: correct by the rule verifier (or, for
prompts without one, by a DeepSeek-V3 judge given the ground truth), without mixed languages, long
paragraphs or code blocks; then it added ~200k non-reasoning examples (arXiv 2501.12948, §2.3.3).
The R1-Zero → cold-start data of §2.3.1 is the same machinery with the kept samples rewritten into
the cold-start format (``cold_start:``, :class:`r1jax.pipeline.sft.ColdStartFormat`).

What this stage does, in order:

1. validate everything (config, the fields of the ``prompts`` / ``mix`` datasets, JSONL or Parquet,
   reward names, the cold-start tokens against the tokenizer) before any sampling;
2. sample ``n`` completions per prompt with the embedded :class:`~r1jax.sampling.Sampler`, in chunks
   of ``chunk_prompts`` prompts written to ``out_dir/candidates/`` (a rerun after a kill skips the
   chunks already written; a prompt's samples depend only on ``seed`` and its index, so chunking
   changes nothing);
3. :func:`filter_samples`: each filter sees what the ones before it kept, and records how many it
   saw and removed: ``not_truncated`` (finish reason ``length``), ``length_cap``
   (``max_completion_tokens``), ``well_formatted`` (``format_reward`` = 1), ``correct``
   (``verifier`` ≥ ``verifier_threshold``), ``language`` (``language_reward`` ≥ ``language_threshold``,
   eq. 7 of the paper), ``unique`` (the same prompt and whitespace-normalised completion seen before),
   ``judge`` (optional :class:`Judge`), ``k_per_prompt`` (the first ``k`` kept samples of a prompt);
4. optionally rewrite the kept completions into the cold-start format (counted as the filter
   ``cold_start``: a completion without a ``<think>`` or ``<answer>`` block cannot be rewritten);
5. :func:`mix_examples`: add ``round(mix_ratio × kept)`` rows of the ``mix`` dataset (a seeded choice);
6. write ``out_dir/data.jsonl`` (``prompt``, ``completion``, ``source`` and, for sampled rows,
   ``reference``, ``prompt_index``, ``sample_index``) and ``out_dir/provenance.json`` (the source
   checkpoint's path and sha256, the prompt and mix files' digests, the sampling parameters, the
   per-filter counts and acceptance rates); return the counts as metrics.

Judges: anything with ``judge(prompt, completion, reference) -> bool | float`` (:class:`Judge`);
:class:`RolloutJudge` asks a model served by ``r1jax serve`` through
:class:`~r1jax.rollout.client.RolloutClient` with a prompt template (sent as raw text, or with
``chat: true`` as one user message in the judge tokenizer's chat template), and parses its greedy
answer (:func:`parse_verdict`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from r1jax.config import ConfigError, field, from_dict, to_dict
from r1jax.data.templates import PROMPT_TEMPLATES, encode_prompt, encode_prompts, render_prompt
from r1jax.data.tokenizer import Tokenizer, load_tokenizer
from r1jax.models import load_pretrained
from r1jax.pipeline.datasets import read_jsonl, read_rows, write_json, write_jsonl
from r1jax.pipeline.manifest import digest_data, digest_path
from r1jax.pipeline.kinds import StageContext, StageKind, StageResult, register_stage_kind
from r1jax.pipeline.sft import ColdStartFormat, r1_zero_to_cold_start
from r1jax.rewards.registry import get_reward
from r1jax.sampling import Sampler, SamplingParams
from r1jax.train.config import DECODE_WINDOW

__all__ = [
    "Judge", "RolloutJudge", "parse_verdict", "DEFAULT_JUDGE_TEMPLATE", "JudgeConfig", "SampleConfig",
    "parse_sample_config", "FILTERS", "filter_samples", "mix_examples", "run_sample", "SampleStage",
]

FILTERS = ("not_truncated", "length_cap", "well_formatted", "correct", "language", "unique", "judge",
           "k_per_prompt")
"""The filters in the order they run (a disabled one is left out of the counts)."""

DEFAULT_JUDGE_TEMPLATE = (
    "Question: {prompt}\nReference answer: {reference}\nResponse: {completion}\n"
    "Is the final answer of the response correct? Answer yes or no.\nVerdict:"
)


# ------------------------------------------------------------------------------------------------
# Judges.


@runtime_checkable
class Judge(Protocol):
    """Decides whether a completion is acceptable: True / False, or a score compared to a threshold.

    An implementation may also offer ``many(items) -> list`` over ``(prompt, completion, reference)``
    triples to judge a batch in one call (:class:`RolloutJudge` does); ``None`` means "no verdict"
    and counts as a rejection.
    """

    def __call__(self, prompt: str, completion: str, reference: Any) -> bool | float | None: ...


def parse_verdict(text: str) -> bool | float | None:
    """A judge model's answer: its first word ``yes``/``true``/``correct`` → True, ``no``/``false``/
    ``incorrect`` → False, a number → that float; anything else → None."""
    words = text.strip().lower().split()
    if not words:
        return None
    first = words[0].strip(".,:;!")
    if first in ("yes", "true", "correct"):
        return True
    if first in ("no", "false", "incorrect"):
        return False
    try:
        return float(first)
    except ValueError:
        return None


class RolloutJudge:
    """A :class:`Judge` that asks a model served by ``r1jax serve`` (greedy decoding).

    Args:
      client: a :class:`~r1jax.rollout.client.RolloutClient` of the judge's server(s).
      tokenizer: the judge model's tokenizer (prompts go over the wire as token ids).
      template: the judge prompt, with ``{prompt}``, ``{completion}`` and ``{reference}`` fields
        (filled with ``str.replace``, so braces in the texts are safe).
      max_new_tokens: the verdict's generation budget.
      chat: send the rendered judge prompt as one user message through the tokenizer's chat
        template, ending with the assistant header (the ``chat`` prompt template of
        :func:`r1jax.data.templates.encode_prompt`); False: the rendered text as it is.

    Raises:
      ConfigError: ``chat`` and the tokenizer has no chat template (naming ``judge.chat``), or a
        template without ``{completion}``.
    """

    def __init__(self, client: Any, tokenizer: Tokenizer, *, template: str = DEFAULT_JUDGE_TEMPLATE,
                 max_new_tokens: int = 8, chat: bool = False):
        _check_judge_template(template)
        if chat:
            _check_judge_chat(tokenizer)
        self.client, self.tokenizer, self.template, self.max_new_tokens = client, tokenizer, template, max_new_tokens
        self.chat = chat

    def render(self, prompt: str, completion: str, reference: Any) -> str:
        """The judge prompt of one item."""
        return (self.template.replace("{prompt}", prompt).replace("{completion}", completion)
                .replace("{reference}", str(reference)))

    def encode(self, items: Sequence[tuple[str, str, Any]]) -> list[list[int]]:
        """The token ids sent for ``items``: the :meth:`render` text of each, in the chat template when ``chat``."""
        return encode_prompts([self.render(*it) for it in items], self.tokenizer, "chat" if self.chat else "plain")

    def outputs(self, items: Sequence[tuple[str, str, Any]]) -> list[str]:
        """The judge model's raw answers to ``items`` (one request, greedy)."""
        from r1jax.rollout.types import GenerateRequest

        if not items:
            return []
        prompts = self.encode(items)
        sampling = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens,
                                  stop_token_ids=self.tokenizer.eos_ids, n=1, seed=0)
        results = self.client.generate(GenerateRequest(prompts, sampling, request_id="judge"))
        return [self.tokenizer.decode(r.samples[0].token_ids) for r in results]

    def many(self, items: Sequence[tuple[str, str, Any]]) -> list[bool | float | None]:
        """Verdicts of ``items`` (:func:`parse_verdict` of :meth:`outputs`)."""
        return [parse_verdict(t) for t in self.outputs(items)]

    def __call__(self, prompt: str, completion: str, reference: Any) -> bool | float | None:
        return self.many([(prompt, completion, reference)])[0]


def _check_judge_template(template: str) -> None:
    if "{completion}" not in template:
        raise ConfigError("template: must contain {completion} (and usually {prompt} and {reference})")


def _check_judge_chat(tokenizer: Tokenizer) -> None:
    if tokenizer.chat_template is None:
        raise ConfigError(f"judge.chat: true, but the judge's tokenizer ({tokenizer.source or 'in memory'}) has no "
                          "chat_template (tokenizer_config.json 'chat_template' or chat_template.jinja); set "
                          "judge.chat: false or judge.tokenizer to a tokenizer with one")


def _verdicts(judge: Judge, items: list[tuple[str, str, Any]]) -> list[bool | float | None]:
    many = getattr(judge, "many", None)
    return list(many(items)) if callable(many) else [judge(*it) for it in items]


# ------------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """A judge model served by ``r1jax serve`` (:class:`RolloutJudge`)."""

    server: str = field(help="host:port of the judge's rollout server")
    tokenizer: str | None = field(None, help="the judge model's tokenizer directory (default: the sampled model's)")
    template: str = field(DEFAULT_JUDGE_TEMPLATE, help="judge prompt with {prompt}, {completion}, {reference}")
    max_new_tokens: int = field(8, ge=1)
    chat: bool = field(False, help="send the judge prompt as one user message in the tokenizer's chat template")
    token: str | None = field(None, help="the server's shared token (default $R1JAX_ROLLOUT_TOKEN)")
    timeout_s: float = field(120.0, gt=0.0)

    def check(self) -> None:
        _check_judge_template(self.template)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """The ``sample`` stage's config section."""

    prompt_field: str = field("prompt", help="dataset field of the question")
    reference_field: str = field("reference", help="dataset field of the verifier's reference (any JSON value)")
    template: str = field("plain", choices=tuple(PROMPT_TEMPLATES), help="prompt template")
    n: int = field(4, ge=1, help="samples per prompt")
    temperature: float = field(1.0, ge=0.0)
    top_p: float = field(1.0, gt=0.0, le=1.0)
    top_k: int = field(0, ge=0)
    max_new_tokens: int = field(64, ge=1, help="generation budget (a sample that hits it is truncated)")
    seed: int | None = field(None, ge=0, help="sampling seed; None: the pipeline's seed")
    chunk_prompts: int = field(64, ge=1, help="prompts per resumable chunk")
    max_batch_rows: int = field(64, ge=1, help="sampler rows per device batch")
    decode_window: int | None = field(DECODE_WINDOW, ge=1, help="the KV cache starts at prompt + W slots and doubles the "
                                                               "room after the prompt when full (rollout.decode_window); "
                                                               "None = the whole buffer from the first token")
    drop_truncated: bool = field(True, help="filter not_truncated: drop samples that hit max_new_tokens")
    max_completion_tokens: int | None = field(None, ge=1, help="filter length_cap (tokens, EOS not counted)")
    format_reward: str | None = field("format_strict", help="filter well_formatted: this reward must be 1")
    verifier: str | None = field("math_accuracy", help="filter correct: the task's verifier reward")
    verifier_threshold: float = field(1.0, help="correct when verifier >= this")
    language_reward: str | None = field("language_consistency", help="filter language (eq. 7)")
    language_threshold: float = field(0.95, ge=0.0, le=1.0, help="kept when language_reward >= this")
    dedupe: bool = field(True, help="filter unique: drop repeated (prompt, completion) pairs")
    judge: dict[str, Any] | None = field(None, help="filter judge: a served judge model (JudgeConfig keys); None = off")
    judge_threshold: float = field(0.5, help="a numeric verdict passes when >= this (yes/no: yes passes)")
    k_per_prompt: int | None = field(None, ge=1, help="filter k_per_prompt: keep at most k samples per prompt")
    cold_start: dict[str, Any] | None = field(
        None, help="rewrite kept samples into the cold-start format (ColdStartFormat keys; {} = defaults); None = off")
    mix_ratio: float = field(0.0, ge=0.0, help="rows of the `mix` dataset added per kept sample")
    mix_prompt_field: str = field("prompt")
    mix_completion_field: str = field("completion")

    @property
    def judge_config(self) -> JudgeConfig | None:
        """The parsed ``judge`` section."""
        return None if self.judge is None else _section(JudgeConfig, self.judge, "judge")

    @property
    def cold_start_format(self) -> ColdStartFormat | None:
        """The parsed ``cold_start`` section."""
        return None if self.cold_start is None else _section(ColdStartFormat, self.cold_start, "cold_start")

    def rewards(self) -> dict[str, str]:
        """filter name -> reward name of the reward-based filters that are on."""
        named = {"well_formatted": self.format_reward, "correct": self.verifier, "language": self.language_reward}
        return {k: v for k, v in named.items() if v is not None}


def _section(cls, data, key):
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def parse_sample_config(stage: str, config: Mapping[str, Any] | SampleConfig) -> SampleConfig:
    """The validated :class:`SampleConfig`; ConfigError lines start ``stage NAME:``."""
    if isinstance(config, SampleConfig):
        return config
    try:
        cfg = from_dict(SampleConfig, config)
        cfg.judge_config, cfg.cold_start_format  # noqa: B018 - validates the two sections
        for key, name in (("format_reward", cfg.format_reward), ("verifier", cfg.verifier),
                          ("language_reward", cfg.language_reward)):
            if name is not None:
                try:
                    if get_reward(name).fn is None:
                        raise ConfigError(f"{key}: {name!r} is an external reward (no function to run here)")
                except KeyError as e:
                    raise ConfigError(f"{key}: {e.args[0]}") from None
    except ConfigError as e:
        raise ConfigError(f"stage {stage}: {e}") from None
    return cfg


def _prompt_fields(cfg: SampleConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required fields of a prompts row, those of them of any JSON type)."""
    if cfg.verifier is None and cfg.judge is None:
        return (cfg.prompt_field,), ()
    return (cfg.prompt_field, cfg.reference_field), (cfg.reference_field,)


# ------------------------------------------------------------------------------------------------
# Filtering and mixing (plain data: testable on hand-made samples).


def filter_samples(candidates: Sequence[Mapping[str, Any]], cfg: SampleConfig, *, judge: Judge | None = None,
                   rewards: Mapping[str, Callable] | None = None) -> tuple[list[dict], list[dict]]:
    """Applies the filters of ``cfg`` in :data:`FILTERS` order.

    Args:
      candidates: samples as dicts with ``prompt_index``, ``sample_index``, ``prompt`` (the question),
        ``prompt_text`` (the rendered prompt the rewards see), ``reference``, ``completion`` (text),
        ``num_tokens`` (completion tokens, EOS not counted) and ``finish_reason``.
      cfg: the stage config.
      judge: the judge (None: the ``judge`` filter is off).
      rewards: reward name -> function overrides (default: the registry's).

    Returns:
      ``(kept, counts)``: the kept candidates in input order, and one dict per enabled filter:
      ``{"filter", "seen", "removed", "kept", "acceptance"}`` (acceptance = kept / seen, 1 when none seen).
    """
    fns = {name: (rewards or {}).get(name) or get_reward(name).fn for name in cfg.rewards().values()}

    def reward_filter(key: str, threshold: float):
        name = cfg.rewards()[key]
        return lambda c: float(fns[name](c["prompt_text"], c["completion"], c["reference"])) >= threshold

    steps: list[tuple[str, Callable[[list[dict]], list[bool]]]] = []
    if cfg.drop_truncated:
        steps.append(("not_truncated", lambda cs: [c["finish_reason"] != "length" for c in cs]))
    if cfg.max_completion_tokens is not None:
        steps.append(("length_cap", lambda cs: [c["num_tokens"] <= cfg.max_completion_tokens for c in cs]))
    for key, threshold in (("well_formatted", 1.0), ("correct", cfg.verifier_threshold),
                           ("language", cfg.language_threshold)):
        if key in cfg.rewards():
            test = reward_filter(key, threshold)
            steps.append((key, lambda cs, test=test: [test(c) for c in cs]))
    if cfg.dedupe:
        steps.append(("unique", _first_occurrences))
    if judge is not None:
        steps.append(("judge", lambda cs: _judged(judge, cs, cfg.judge_threshold)))
    if cfg.k_per_prompt is not None:
        steps.append(("k_per_prompt", lambda cs: _first_k(cs, cfg.k_per_prompt)))

    kept = [dict(c) for c in candidates]
    counts = []
    for name, keep_fn in steps:
        mask = keep_fn(kept) if kept else []
        seen = len(kept)
        kept = [c for c, ok in zip(kept, mask) if ok]
        counts.append({"filter": name, "seen": seen, "removed": seen - len(kept), "kept": len(kept),
                       "acceptance": len(kept) / seen if seen else 1.0})
    return kept, counts


def _first_occurrences(cands: list[dict]) -> list[bool]:
    seen: set = set()
    out = []
    for c in cands:
        key = (c["prompt_index"], " ".join(c["completion"].split()))
        out.append(key not in seen)
        seen.add(key)
    return out


def _first_k(cands: list[dict], k: int) -> list[bool]:
    taken: dict[int, int] = {}
    out = []
    for c in cands:
        n = taken.get(c["prompt_index"], 0)
        out.append(n < k)
        taken[c["prompt_index"]] = n + 1
    return out


def _judged(judge: Judge, cands: list[dict], threshold: float) -> list[bool]:
    verdicts = _verdicts(judge, [(c["prompt_text"], c["completion"], c["reference"]) for c in cands])
    if len(verdicts) != len(cands):
        raise RuntimeError(f"the judge returned {len(verdicts)} verdicts for {len(cands)} samples")
    out = []
    for v in verdicts:
        if isinstance(v, bool) or v is None:
            out.append(bool(v))
        else:
            out.append(float(v) >= threshold)
    return out


def mix_examples(mix_rows: Sequence[Mapping[str, Any]], num_kept: int, ratio: float, seed: int, *,
                 prompt_field: str = "prompt", completion_field: str = "completion") -> list[dict]:
    """``min(len(mix_rows), round(ratio × num_kept))`` rows of ``mix_rows``, a seeded choice without
    repeats in file order, as ``{"prompt", "completion", "source": "mix"}`` rows."""
    want = min(len(mix_rows), int(round(ratio * num_kept)))
    chosen = sorted(np.random.default_rng([seed, 11]).permutation(len(mix_rows))[:want].tolist())
    return [{"prompt": mix_rows[i][prompt_field], "completion": mix_rows[i][completion_field], "source": "mix"}
            for i in chosen]


# ------------------------------------------------------------------------------------------------
# The run.



def _sample_chunks(params, model_cfg, tokenizer: Tokenizer, rows: list[dict], cfg: SampleConfig, seed: int,
                   cand_dir: pathlib.Path) -> list[dict]:
    """Candidates of every prompt: each chunk sampled once and kept in ``cand_dir`` (resumable)."""
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                              max_new_tokens=cfg.max_new_tokens, stop_token_ids=tokenizer.eos_ids, n=cfg.n, seed=seed)
    sampler = None
    out: list[dict] = []
    eos = set(tokenizer.eos_ids)
    for start in range(0, len(rows), cfg.chunk_prompts):
        path = cand_dir / f"{start:09d}.jsonl"
        if path.is_file():
            out.extend(read_jsonl(path, allow_empty=True))
            continue
        chunk = rows[start:start + cfg.chunk_prompts]
        questions = [r[cfg.prompt_field] for r in chunk]
        texts = [render_prompt(q, cfg.template, tokenizer=tokenizer) for q in questions]
        ids = [encode_prompt(q, tokenizer, cfg.template) for q in questions]
        sampler = sampler or Sampler(model_cfg, max_batch_rows=cfg.max_batch_rows, pad_id=tokenizer.pad_id,
                                     decode_window=cfg.decode_window)
        groups = sampler.generate(params, ids, sampling, first_prompt_index=start)
        cands = []
        for i, group in enumerate(groups):
            for j, s in enumerate(group):
                tok = s.token_ids.tolist()
                n_tok = len(tok) - (1 if s.finish_reason == "stop" and tok and tok[-1] in eos else 0)
                cands.append({"prompt_index": start + i, "sample_index": j, "prompt": questions[i],
                              "prompt_text": texts[i], "reference": chunk[i].get(cfg.reference_field),
                              "completion": tokenizer.decode(tok), "num_tokens": n_tok,
                              "finish_reason": s.finish_reason})
        write_jsonl(path, cands)
        out.extend(cands)
    return out


def _judge_tokenizer(stage: str, jc: JudgeConfig, model: pathlib.Path | str | None) -> Tokenizer:
    """The judge's tokenizer (``judge.tokenizer``, else the sampled model's), checked to have a chat
    template when ``judge.chat``; ConfigError lines start ``stage NAME:``."""
    try:
        tok = load_tokenizer(jc.tokenizer or model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"stage {stage}: {'judge.tokenizer' if jc.tokenizer else 'inputs.model'}: {e}") from None
    if jc.chat:
        try:
            _check_judge_chat(tok)
        except ConfigError as e:
            raise ConfigError(f"stage {stage}: {e}") from None
    return tok


def _make_judge(cfg: SampleConfig, model: pathlib.Path, *, stage: str = "?") -> RolloutJudge | None:
    jc = cfg.judge_config
    if jc is None:
        return None
    from r1jax.rollout.client import RolloutClient

    tok = _judge_tokenizer(stage, jc, model)
    client = RolloutClient(jc.server, token=jc.token, timeout=jc.timeout_s)
    return RolloutJudge(client, tok, template=jc.template, max_new_tokens=jc.max_new_tokens, chat=jc.chat)


def run_sample(stage: str, config: Mapping[str, Any] | SampleConfig, *, model: pathlib.Path,
               prompts: pathlib.Path, out_dir: pathlib.Path, mix: pathlib.Path | None = None, seed: int = 0,
               judge: Judge | None = None) -> StageResult:
    """Runs (or resumes) one rejection-sampling stage in ``out_dir``; see the module docstring.

    Args:
      stage: the stage's name (messages, provenance).
      config: the stage's config section (or a :class:`SampleConfig`).
      model: the HF directory sampled from.
      prompts: the prompts dataset (JSONL, or Parquet by its ``.parquet`` suffix).
      out_dir: the stage directory.
      mix: the non-reasoning dataset (JSONL or Parquet) mixed in (needed when ``mix_ratio > 0``).
      seed: the pipeline's seed (used when ``config.seed`` is None).
      judge: a judge to use (overrides ``config.judge``; e.g. a plain Python function).

    Returns:
      A :class:`StageResult` with ``data`` and ``provenance`` paths; metrics ``candidates``,
      ``kept`` (after the filters), ``mixed_in``, ``written``, ``acceptance_rate`` (kept / candidates)
      and, per enabled filter, ``removed/<filter>`` and ``acceptance/<filter>``.
    """
    cfg = parse_sample_config(stage, config)
    seed = cfg.seed if cfg.seed is not None else seed
    out_dir = pathlib.Path(out_dir)
    fields, any_type = _prompt_fields(cfg)
    rows = read_rows(prompts, fields, stage=stage, input_name="prompts", any_type=any_type)
    mix_rows = _read_mix(stage, cfg, mix)
    tokenizer = load_tokenizer(model)
    if cfg.cold_start is not None:
        try:
            cfg.cold_start_format.check_encodable(tokenizer)
        except ConfigError as e:
            raise ConfigError(f"stage {stage}: {e}") from None
    own_judge = judge is None and cfg.judge is not None
    judge = judge if judge is not None else _make_judge(cfg, model, stage=stage)
    try:
        return _run(stage, cfg, model=model, prompts=prompts, out_dir=out_dir, mix=mix, seed=seed, judge=judge,
                    rows=rows, mix_rows=mix_rows, tokenizer=tokenizer)
    finally:
        if own_judge:
            judge.client.close()


def _run(stage, cfg: SampleConfig, *, model, prompts, out_dir, mix, seed, judge, rows, mix_rows, tokenizer):
    """The work of :func:`run_sample` once everything is validated: sample, filter, mix, write."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_digest = digest_path(model)
    sampling_id = digest_data({k: getattr(cfg, k) for k in ("prompt_field", "reference_field", "template", "n",
                                                          "temperature", "top_p", "top_k", "max_new_tokens",
                                                          "chunk_prompts")}
                          | {"seed": seed, "model": model_digest, "prompts": digest_path(prompts)})
    cand_dir = out_dir / "candidates"
    cand_dir.mkdir(exist_ok=True)
    id_file = cand_dir / "sampling_id"
    if id_file.is_file() and id_file.read_text() != sampling_id:
        raise ConfigError(f"stage {stage}: {cand_dir} holds samples of another model, prompt file or sampling "
                          "config; remove it or use another directory")
    id_file.write_text(sampling_id)
    params, model_cfg = load_pretrained(model, param_dtype="float32")
    candidates = _sample_chunks(params, model_cfg, tokenizer, rows, cfg, seed, cand_dir)

    kept, counts = filter_samples(candidates, cfg, judge=judge)
    out_rows = []
    for c in kept:
        completion = c["completion"]
        if cfg.cold_start is not None:
            completion = r1_zero_to_cold_start(completion, cfg.cold_start_format)
            if completion is None:  # no <think> or <answer> block: only possible without a format filter
                continue
        out_rows.append({"prompt": c["prompt"], "completion": completion, "reference": c["reference"],
                         "source": "sample", "prompt_index": c["prompt_index"], "sample_index": c["sample_index"]})
    if cfg.cold_start is not None:
        counts.append({"filter": "cold_start", "seen": len(kept), "removed": len(kept) - len(out_rows),
                       "kept": len(out_rows), "acceptance": len(out_rows) / len(kept) if kept else 1.0})
    mixed = mix_examples(mix_rows, len(out_rows), cfg.mix_ratio, seed, prompt_field=cfg.mix_prompt_field,
                         completion_field=cfg.mix_completion_field) if mix_rows else []
    data_path = write_jsonl(out_dir / "data.jsonl", out_rows + mixed)

    metrics: dict[str, float] = {"candidates": float(len(candidates)), "kept": float(len(out_rows)),
                                 "mixed_in": float(len(mixed)), "written": float(len(out_rows) + len(mixed)),
                                 "acceptance_rate": len(out_rows) / len(candidates) if candidates else 0.0}
    for c in counts:
        metrics[f"removed/{c['filter']}"] = float(c["removed"])
        metrics[f"acceptance/{c['filter']}"] = float(c["acceptance"])
    provenance = {
        "stage": stage, "model": str(model), "model_sha256": model_digest,
        "prompts": str(prompts), "prompts_sha256": digest_path(prompts), "num_prompts": len(rows),
        "mix": str(mix) if mix else None, "mix_sha256": digest_path(mix) if mix else None,
        "sampling": {"n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                     "max_new_tokens": cfg.max_new_tokens, "seed": seed, "template": cfg.template},
        "filters": counts, "config": to_dict(cfg), "judge": type(judge).__name__ if judge is not None else None,
        "metrics": metrics,
    }
    prov_path = write_json(out_dir / "provenance.json", provenance)
    return StageResult({"data": data_path, "provenance": prov_path}, metrics)


def _read_mix(stage: str, cfg: SampleConfig, mix: pathlib.Path | None) -> list[dict]:
    if cfg.mix_ratio > 0 and mix is None:
        raise ConfigError(f"stage {stage}: mix_ratio: {cfg.mix_ratio} > 0 needs the input `mix` "
                          "(a JSONL or Parquet dataset)")
    if mix is None:
        return []
    return read_rows(mix, (cfg.mix_prompt_field, cfg.mix_completion_field), stage=stage, input_name="mix")


@register_stage_kind("sample")
class SampleStage(StageKind):
    """``kind: sample``: rejection sampling (see :func:`run_sample`). Config: :class:`SampleConfig`."""

    inputs = ("model", "prompts")
    optional_inputs = ("mix",)
    outputs = ("data", "provenance")

    def check(self, stage, config, inputs):
        cfg = parse_sample_config(stage, config)
        fields, any_type = _prompt_fields(cfg)
        if inputs.get("prompts") is not None:
            read_rows(inputs["prompts"], fields, stage=stage, input_name="prompts", any_type=any_type)
        if cfg.mix_ratio > 0 and "mix" not in inputs:
            raise ConfigError(f"stage {stage}: mix_ratio: {cfg.mix_ratio} > 0 needs the input `mix` "
                          "(a JSONL or Parquet dataset)")
        if inputs.get("mix") is not None:
            _read_mix(stage, cfg, inputs["mix"])
        if cfg.cold_start is not None and inputs.get("model") is not None:
            try:
                cfg.cold_start_format.check_encodable(load_tokenizer(inputs["model"]))
            except ConfigError as e:
                raise ConfigError(f"stage {stage}: {e}") from None
        jc = cfg.judge_config
        if jc is not None and jc.chat and (jc.tokenizer or inputs.get("model")) is not None:
            _judge_tokenizer(stage, jc, inputs.get("model"))

    def run(self, ctx: StageContext) -> StageResult:
        return run_sample(ctx.name, ctx.config, model=ctx.inputs["model"], prompts=ctx.inputs["prompts"],
                          out_dir=ctx.out_dir, mix=ctx.inputs.get("mix"), seed=ctx.seed)
