"""Where the trainer's samples come from, and how a scored rollout becomes the update's input.

``rollout.mode: embedded`` is a function call: :class:`EmbeddedSampler` runs the JAX sampler on
the params it is given (the train state's own, on device), so there is nothing to push and
nothing held between steps. ``rollout.mode: remote`` talks to ``r1jax serve`` / vLLM servers
(:class:`RemoteSampler`): every new policy is pushed as the next weight version (gRPC chunks or
a safetensors directory) and samples report the version that produced them.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import pathlib
import shutil
import threading
from typing import Any, Callable, Sequence

import jax
import numpy as np

from r1jax.data.batching import pack_sequences, pad_prompts, pad_sequences
from r1jax.data.mixture import domain_metrics
from r1jax.data.templates import encode_prompts, render_prompt
from r1jax.rewards import RewardScorer, get_reward
from r1jax.models import ModelConfig, save_pretrained
from r1jax.models.hf import hf_state_dict
from r1jax.models.sharding import logical_to_spec
from r1jax.rollout.types import GenerateRequest, Sample, SamplingParams
from r1jax.sampling.sampler import Sampler
from r1jax.train.components import LENGTH_MULTIPLE
from r1jax.train.config import ExperimentConfig, RolloutConfig
from r1jax.train.steps import Grouped, Packed, Rollout

log = logging.getLogger("r1jax.train")

__all__ = ["EmbeddedSampler", "RemoteSampler", "make_sampler", "assemble_rollout", "group_rollout", "group_split",
           "pack_rollout", "put_rows",
           "LENGTH_MULTIPLE", "Episodes", "Partial", "Segments", "generate_in_segments", "sample_and_score",
           "sample_then_score", "step_seed"]

class EmbeddedSampler:
    """In-process sampling: ``generate(params, prompts, sampling, first_index)`` on any params."""

    def __init__(self, model: ModelConfig, max_batch_rows: int = 64, drop_finished_every: int | None = None,
                 decode_window: int | None = None, cache_dtype: str | None = None, parallel_batches: int = 1):
        self.sampler = Sampler(model, max_batch_rows=max_batch_rows, drop_finished_every=drop_finished_every,
                               decode_window=decode_window, cache_dtype=cache_dtype, parallel_batches=parallel_batches)
        self.weight_version = 0

    def generate(self, params, prompts: Sequence[Sequence[int]], sampling: SamplingParams, first_index: int
                 ) -> tuple[list[list[Sample]], list[int]]:
        """``sampling.n`` samples per prompt (``[P][n]``) and the weight version of each prompt's samples."""
        samples = self.sampler.generate(params, prompts, sampling, first_prompt_index=first_index)
        return samples, [self.weight_version] * len(prompts)

    def push(self, params) -> None:
        """The next policy: embedded sampling reads the params it is given, so only the version moves."""
        del params
        self.weight_version += 1

    def close(self) -> None:
        pass


class RemoteSampler:
    """Rollout servers over gRPC; the trainer's policy is pushed to them as versioned weights.

    Args:
      config: the rollout section (servers, token, timeout, transport).
      model: the architecture (to write safetensors directories).
      weights_dir: where the safetensors transport writes ``v<version>`` directories (servers read them).
      weight_version: the trainer's last pushed version; servers may serve a newer one (they outlive
        trainers), and pushes continue after the newest.
    """

    def __init__(self, config: RolloutConfig, model: ModelConfig, weights_dir: pathlib.Path, weight_version: int = 0):
        from r1jax.rollout.client import RolloutClient  # noqa: PLC0415 - grpc only when used

        self.config, self.model, self.weights_dir = config, model, weights_dir.resolve()
        self.client = RolloutClient(list(config.servers), timeout=config.timeout_s, token=config.token)
        live = [h["weight_version"] for h in self.client.health().values() if h]
        self.weight_version = max([weight_version, *live])
        # the JAX engine takes r1jax's parameter names; vLLM the served HF checkpoint's tensors
        # (names, layouts, dtype: a push is checked against them)
        info = self.client.info()
        self.hf_tensors = info.engine != "jax"
        dtypes = {t.dtype for t in info.tensors}
        self.hf_dtype = dtypes.pop() if len(dtypes) == 1 and self.hf_tensors else None
        self._lock = threading.Lock()  # one push (or stage) at a time
        self._staged: tuple[Any, int, cf.Future] | None = None  # (key, version, future of its commit)
        self._stager = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1jax-weight-stage")
        self.staged_pushes = 0  # pushes that only committed what stage() had sent

    def generate(self, params, prompts, sampling: SamplingParams, first_index: int):
        del params  # the servers sample with the last pushed weights
        results = sorted(self.client.generate(GenerateRequest(prompts, sampling, first_prompt_index=first_index)),
                         key=lambda r: r.prompt_index)
        return [list(r.samples) for r in results], [r.weight_version for r in results]

    def push(self, params, key: Any = None) -> None:
        """Makes ``params`` the servers' live weights as the next version (atomic on their side).

        If :meth:`stage` staged the same ``key``, only its commit is left to do; a staged update of
        another key (or one that failed) is dropped and ``params`` sent whole.
        """
        with self._lock:
            staged, self._staged = self._staged, None
            commit = None
            if staged is not None:
                staged_key, staged_version, future = staged
                try:
                    commit = future.result()
                except Exception as e:  # noqa: BLE001 - sent again whole below, which raises if it fails
                    log.warning("staging weight version %d failed (%s: %s); sending it again", staged_version,
                                type(e).__name__, e)
                if commit is None or staged_key != key:
                    self._drop(staged_version)
                    commit = None
            version = self.weight_version + 1
            self.staged_pushes += commit is not None
            if commit is None:
                commit = self._send(params, version)
            try:
                commit()
            except BaseException:
                self._drop(version)
                raise
            previous, self.weight_version = self.weight_version, version
            if self.config.weight_transport == "safetensors":
                shutil.rmtree(self.weights_dir / f"v{previous}", ignore_errors=True)

    def stage(self, params, key: Any) -> bool:
        """Starts sending ``params`` as the next version on a background thread, without making it
        live: the servers keep sampling with their weights until :meth:`push` of the same ``key``
        commits it. Asynchronous RL stages the policy the producer pushes next while the servers
        still sample with the last one, so the servers wait only for the commit.

        Returns:
            Whether it staged: not while another push or stage is under way (that push goes on whole).
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._staged is not None:
                return False
            version = self.weight_version + 1
            self._staged = (key, version, self._stager.submit(self._send, params, version))
            return True
        finally:
            self._lock.release()

    def _send(self, params, version: int) -> Callable[[], Any]:
        """Sends ``params`` to the servers as ``version`` without making it live; returns the commit."""
        if self.config.weight_transport == "safetensors":
            directory = self.weights_dir / f"v{version}"
            save_pretrained(jax.device_get(params), self.model, directory)
            return lambda: self.client.update_weights_from_dir(str(directory), version)
        wire = hf_state_dict(params, self.model, dtype=self.hf_dtype) if self.hf_tensors else jax.device_get(params)
        self.client.stage_weights(wire, version)
        return lambda: self.client.commit(version)

    def _drop(self, version: int) -> None:
        """Forgets a sent, uncommitted ``version`` (the servers keep their live weights)."""
        if self.config.weight_transport == "safetensors":
            shutil.rmtree(self.weights_dir / f"v{version}", ignore_errors=True)
        else:
            self.client.abort(version)

    def close(self) -> None:
        with self._lock:
            staged, self._staged = self._staged, None
            if staged is not None:
                cf.wait([staged[2]])
                self._drop(staged[1])
        self._stager.shutdown()
        self.client.close()


def make_sampler(config: RolloutConfig, model: ModelConfig, run_dir: pathlib.Path, weight_version: int = 0):
    """The sampler of ``config.mode`` ("embedded" or "remote")."""
    if config.mode == "embedded":
        sampler = EmbeddedSampler(model, max_batch_rows=max(64, config.prompts_per_step * config.group_size),
                                  drop_finished_every=config.drop_finished_every, decode_window=config.decode_window,
                                  cache_dtype=config.cache_dtype, parallel_batches=config.parallel_batches)
        sampler.weight_version = weight_version
        return sampler
    return RemoteSampler(config, model, run_dir / "weights", weight_version)


def assemble_rollout(prompts: Sequence[np.ndarray], samples: Sequence[Sequence[Sample]], rewards: np.ndarray,
                     pad_id: int, *, length: int | None = None, pack_length: int | None = None,
                     rows_multiple_of: int = 1, group_shape: tuple[int, int, int] | None = None) -> Rollout:
    """The update's input (NumPy arrays) from prompts, their samples ``[P][G]`` and rewards ``[P, G]``.

    Rows are prompt + completion, right-padded to a multiple of :data:`LENGTH_MULTIPLE` (or exactly
    ``length``, for runs whose shapes must not change, e.g. vmapped ablation arms). With
    ``pack_length`` the rollout also carries the sequences packed first-fit-decreasing into rows of
    that many tokens (:class:`~r1jax.train.steps.Packed`), the row count rounded up to a multiple of
    ``rows_multiple_of`` and of :data:`LENGTH_MULTIPLE` (so shapes, and compiles, repeat). With
    ``group_shape = (Lp, Tc, split)`` it carries the :class:`~r1jax.train.steps.Grouped` layout
    instead: each prompt ``split`` times (see :func:`group_rollout`), left-padded to ``Lp`` tokens,
    and the completions right-padded to ``Tc``.
    """
    group = len(samples[0])
    rows_p = [p for p in prompts for _ in range(group)]
    rows_c = [s.token_ids for grp in samples for s in grp]
    sampler_logp = {"sampler_logp": [s.logprobs for grp in samples for s in grp]}
    tb = pad_sequences(rows_p, rows_c, pad_id, multiple_of=LENGTH_MULTIPLE, length=length, token_values=sampler_logp)
    lengths = np.array([[len(s) for s in grp] for grp in samples], np.float32)
    packed = None
    if pack_length is not None:
        packed = pack_rollout(rows_p, rows_c, pad_id, tb.tokens.shape[1], pack_length,
                              math.lcm(rows_multiple_of, LENGTH_MULTIPLE))
    grouped = None
    if group_shape is not None:
        grouped = group_rollout(prompts, [[s.token_ids for s in grp] for grp in samples], pad_id,
                                tb.tokens.shape[1], *group_shape)
    return Rollout(tokens=tb.tokens, attention_mask=tb.attention_mask, loss_mask=tb.loss_mask[:, 1:],
                   sampler_logp=tb.values["sampler_logp"][:, 1:].astype(np.float32),
                   rewards=np.asarray(rewards, np.float32), lengths=lengths, packed=packed, grouped=grouped)


def group_split(group: int, prompt_length: int, completion_length: int, max_tokens: int | None) -> int | None:
    """How many times :func:`group_rollout` holds each prompt: the fewest copies (dividing ``group``)
    whose units, a prompt and its ``group / split`` completions, fit a micro-batch of ``max_tokens``
    (None: no bound, 1). None when only single rows fit: nothing to share."""
    split = next((k for k in range(1, group + 1) if group % k == 0
                  and (max_tokens is None or prompt_length + group // k * completion_length <= max_tokens)), group)
    return None if split == group else split


def group_rollout(prompts: Sequence[np.ndarray], completions: Sequence[Sequence[Sequence[int]]], pad_id: int,
                  padded_length: int, prompt_length: int, completion_length: int, split: int = 1) -> Grouped:
    """The grouped layout of ``P`` prompts and their completions ``[P][G]`` whose padded rows
    (prompt + completion) are ``padded_length`` long.

    Completion token ``t`` of sequence ``n`` is grouped target ``(n, t)`` and padded target
    ``(n, len(prompt) - 1 + t)``; prompt targets have no grouped counterpart (the extra zero slot).
    ``split > 1`` holds each prompt ``split`` times, each copy with ``G / split`` consecutive
    completions: smaller units, for micro-batches smaller than a group.
    """
    group = len(completions[0])
    if any(len(grp) != group for grp in completions):
        raise ValueError(f"group_rollout: groups of different sizes {sorted({len(g) for g in completions})}")
    if group % split:
        raise ValueError(f"group_rollout: split={split} does not divide the group size {group}")
    pb = pad_prompts([p for p in prompts for _ in range(split)], pad_id, length=prompt_length)
    rows = [np.asarray(c, np.int32).reshape(-1) for grp in completions for c in grp]
    n = len(rows)
    tokens = np.full((n, completion_length), pad_id, np.int32)
    mask = np.zeros((n, completion_length), bool)
    gather = np.full((n, completion_length), n * (padded_length - 1), np.int32)
    scatter = np.full((n, padded_length - 1), n * completion_length, np.int32)
    for i, c in enumerate(rows):
        if c.size > completion_length:
            raise ValueError(f"completion {i} has {c.size} tokens, more than length={completion_length}")
        start = len(prompts[i // group]) - 1  # the padded target that predicts completion token 0
        if start + c.size > padded_length - 1:
            raise ValueError(f"sequence {i} has {start + 1 + c.size} tokens, more than length={padded_length}")
        t = np.arange(c.size)
        tokens[i, t], mask[i, t] = c, True
        gather[i, t] = i * (padded_length - 1) + start + t
        scatter[i, start + t] = i * completion_length + t
    return Grouped(prompt_tokens=pb.tokens, prompt_mask=pb.mask, tokens=tokens, attention_mask=mask,
                   gather=gather, scatter=scatter)


def packed_rows_bucket(rows: int, num_sequences: int, multiple: int) -> int:
    """The packed row count a rollout is padded to: ``multiple`` × the next power of two, at most the
    row count of one sequence per row (rounded up to ``multiple``), so a run compiles its update for
    at most ``log2(num_sequences / multiple) + 1`` packed shapes whatever the lengths sampled."""
    most = -(-num_sequences // multiple) * multiple
    return min(multiple * (1 << (-(-rows // multiple) - 1).bit_length()), max(most, rows))


def pack_rollout(prompts: Sequence[np.ndarray], completions: Sequence[Sequence[int]], pad_id: int,
                 padded_length: int, pack_length: int, rows_multiple_of: int) -> Packed:
    """The packed layout of N sequences whose padded rows are ``padded_length`` long.

    Target ``t`` of sequence ``n`` (predicting its token ``t + 1``) is padded target ``(n, t)`` and
    packed target ``(row_n, offset_n + t)``, for ``t < len_n - 1``; every other target maps to the
    extra zero slot of the other layout.
    """
    pb = pack_sequences(prompts, completions, pack_length, pad_id, rows_multiple_of=rows_multiple_of)
    n, rows = len(prompts), pb.tokens.shape[0]
    bucketed = packed_rows_bucket(rows, n, rows_multiple_of)
    if bucketed != rows:  # a few row counts per run (so few compiles of the update), not one per count
        pb = pack_sequences(prompts, completions, pack_length, pad_id, num_rows=bucketed)
        rows = bucketed
    seq_len = pb.prompt_lengths + pb.completion_lengths
    gather = np.full((rows, pack_length - 1), n * (padded_length - 1), np.int32)
    scatter = np.full((n, padded_length - 1), rows * (pack_length - 1), np.int32)
    for i in range(n):
        t = np.arange(seq_len[i] - 1)
        gather[pb.row[i], pb.offset[i] + t] = i * (padded_length - 1) + t
        scatter[i, t] = pb.row[i] * (pack_length - 1) + pb.offset[i] + t
    return Packed(tokens=pb.tokens, attention_mask=pb.attention_mask, segment_ids=pb.segment_ids, gather=gather,
                  scatter=scatter, row_of_seq=pb.row.astype(np.int32))


def put_rows(mesh: jax.sharding.Mesh | None, tree):
    """Host arrays onto the devices in one transfer: rows over the mesh's batch axes when they divide."""
    if mesh is None:
        return jax.device_put(tree)
    shape = dict(mesh.shape)
    spec = lambda x: logical_to_spec(("batch",) + (None,) * (x.ndim - 1), shape=x.shape,  # noqa: E731
                                     mesh_shape=shape, strict=False)
    return jax.device_put(tree, jax.tree.map(lambda x: jax.sharding.NamedSharding(mesh, spec(x)), tree))


def step_seed(run_seed: int, step: int, salt: int = 0) -> int:
    """A sampling seed that depends only on (run seed, step): resumed runs sample the same."""
    return int(np.random.SeedSequence([run_seed, step, salt]).generate_state(1)[0])


@dataclasses.dataclass
class Episodes:
    """Sampled and scored completions of P prompts × n samples."""

    prompts: list[np.ndarray]       # token ids of each rendered prompt
    samples: list[list[Sample]]     # [P][n]
    versions: list[int]             # weight version that produced each prompt's samples
    texts: list[str]                # decoded completions, prompt-major
    rewards: np.ndarray             # [P, n] total reward
    components: dict[str, np.ndarray]  # {reward name: [P, n]}
    correct: np.ndarray | None      # [P, n] bool by the accuracy reward(s) (None: no accuracy reward)
    failures: int                   # rewards that raised, timed out or were non-finite
    domains: list[str] | None = None  # each prompt's domain (data.mixture; a single task's name)
    verifiers: list[str] | None = None  # each prompt's verifier (data.mixture; "none": nothing checks it)
    token_versions: list[list[np.ndarray]] | None = None  # [P][n] int32 [L]: the trainer version of each
    #                                                     token's policy (partial rollouts; None: one per batch)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([[len(s) for s in grp] for grp in self.samples], np.float32)

    @property
    def truncated(self) -> np.ndarray:
        return np.array([[s.finish_reason == "length" for s in grp] for grp in self.samples])

    def select(self, groups: Sequence[int]) -> "Episodes":
        """The episodes of prompt groups ``groups`` only, in that order."""
        n = len(self.samples[0])
        pick = lambda xs: None if xs is None else [xs[i] for i in groups]  # noqa: E731
        rows = [i * n + j for i in groups for j in range(n)]
        idx = np.asarray(groups, np.int64)
        return Episodes(prompts=pick(self.prompts), samples=pick(self.samples), versions=pick(self.versions),
                        texts=[self.texts[r] for r in rows], rewards=self.rewards[idx],
                        components={k: v[idx] for k, v in self.components.items()},
                        correct=None if self.correct is None else self.correct[idx], failures=self.failures,
                        domains=pick(self.domains), verifiers=pick(self.verifiers),
                        token_versions=pick(self.token_versions))

    def metrics(self) -> dict[str, float]:
        """Rewards, accuracy, lengths and weight versions of the batch (the RL step's sampling metrics)."""
        lengths = self.lengths
        return {"reward/total": float(self.rewards.mean()),
                **{f"reward/{k}": float(v.mean()) for k, v in self.components.items()},
                "reward/failures": self.failures,
                "accuracy": float(self.correct.mean()) if self.correct is not None else 0.0,
                "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
                "response_length/clipped_frac": float(self.truncated.mean()),
                "weight_version_min": int(min(self.versions)), **self.domain_metrics()}

    def domain_metrics(self) -> dict[str, float]:
        """``accuracy_by_domain/<d>`` and ``reward_by_domain/<d>`` when the batch mixes domains."""
        if not self.domains or len(set(self.domains)) < 2:
            return {}
        return domain_metrics(self.domains, self.correct, self.rewards, verifiers=self.verifiers,
                              prefixes=("accuracy_by_domain", "reward_by_domain"))


@dataclasses.dataclass
class Partial:
    """A batch's samples generated so far, segment by segment (partial rollouts): ``[P][n]`` token ids,
    log-probs and the trainer version of each token's policy; ``finish[i][j]`` is None while sample
    ``(i, j)`` continues in the next segment. JSON-ready via :meth:`to_json` (exact round trip)."""

    segments: int                       # segments done
    tokens: list[list[list[int]]]
    logprobs: list[list[list[float]]]
    versions: list[list[list[int]]]
    finish: list[list[str | None]]
    sampler_versions: list[int]         # the sampler's weight version of each prompt's first segment
    policy_versions: list[int]          # the trainer version of each segment's policy

    @classmethod
    def empty(cls, prompts: int, n: int) -> "Partial":
        grid = lambda: [[[] for _ in range(n)] for _ in range(prompts)]  # noqa: E731
        return cls(0, grid(), grid(), grid(), [[None] * n for _ in range(prompts)], [], [])

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Partial":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Segments:
    """Partial rollouts: new tokens are sampled in segments of ``tokens``; before segment ``j`` runs,
    ``policy(j, partial)`` (given the samples so far) returns ``(params, version)`` of the policy
    that samples it, so a sample interrupted by a weight update continues under the new weights.
    ``resume``: the :class:`Partial` of a checkpointed batch to continue from."""

    tokens: int
    policy: Callable[[int, Partial], tuple[Any, int]]
    resume: Partial | None = None


def generate_in_segments(sampler, prompts: Sequence[np.ndarray], sampling: SamplingParams, first_index: int,
                         segments: Segments) -> tuple[list[list[Sample]], list[int], list[list[np.ndarray]]]:
    """``sampling.n`` samples per prompt, ``segments.tokens`` new tokens at a time.

    Segment 0 samples every (prompt, sample) for up to ``tokens`` tokens with ``policy(0)``'s weights;
    each later segment continues the samples that neither stopped nor reached ``max_new_tokens`` as
    single-sample requests whose prompt is the prompt + the tokens so far (the new policy recomputes
    their prefix; the seed is ``(seed, segment)``'s). Returns the samples ``[P][n]`` (log-probs of each
    token under the policy that sampled it), the sampler's weight version of each prompt's first
    segment, and the trainer version of every token's policy ``[P][n]`` int32 ``[L]``.
    """
    n, budget = sampling.n, sampling.max_new_tokens
    part = segments.resume or Partial.empty(len(prompts), n)
    while True:
        # a sample is finished once it stopped or reached the budget (below)
        active = [(i, j) for i in range(len(prompts)) for j in range(n) if part.finish[i][j] is None]
        if not active:
            break
        params, version = segments.policy(part.segments, part)
        part.policy_versions.append(version)
        new = min(segments.tokens, budget - part.segments * segments.tokens)
        if part.segments == 0:
            out, part.sampler_versions = sampler.generate(params, prompts, dataclasses.replace(
                sampling, max_new_tokens=new), first_index)
            results = [(i, j, out[i][j]) for i, j in active]
        else:
            rows = [np.concatenate([prompts[i], np.asarray(part.tokens[i][j], np.int32)]) for i, j in active]
            seed = int(np.random.SeedSequence([sampling.seed or 0, part.segments]).generate_state(1)[0])
            out, _ = sampler.generate(params, rows, dataclasses.replace(sampling, n=1, max_new_tokens=new, seed=seed),
                                      first_index * n)
            results = [(i, j, grp[0]) for (i, j), grp in zip(active, out)]
        for i, j, s in results:
            part.tokens[i][j] += s.token_ids.tolist()
            part.logprobs[i][j] += s.logprobs.tolist()
            part.versions[i][j] += [version] * len(s.token_ids)
            if s.finish_reason == "stop" or len(part.tokens[i][j]) >= budget:
                part.finish[i][j] = s.finish_reason
        part.segments += 1
    samples = [[Sample(np.asarray(part.tokens[i][j], np.int32), np.asarray(part.logprobs[i][j], np.float32),
                       part.finish[i][j]) for j in range(n)] for i in range(len(prompts))]
    return samples, list(part.sampler_versions), [[np.asarray(v, np.int32) for v in grp] for grp in part.versions]


def sample_and_score(cfg: ExperimentConfig, tokenizer, sampler, scorer: RewardScorer, params, examples, *,
                     n: int, temperature: float, seed: int, first_index: int, step: int,
                     segments: Segments | None = None) -> Episodes:
    """Samples ``n`` completions per example with ``params`` (or segment by segment with the policies
    of ``segments``: partial rollouts) and scores them with the configured rewards.

    Rewards see the rendered prompt (a template may open ``<think>``; the language reward detects the
    target language from it). A sample is correct when every accuracy reward (``RewardSpec.accuracy``)
    of the config scores it above 0.5.
    """
    return sample_then_score(cfg, tokenizer, sampler, scorer, params, examples, n=n, temperature=temperature,
                             seed=seed, first_index=first_index, step=step, segments=segments)()


def sample_then_score(cfg: ExperimentConfig, tokenizer, sampler, scorer: RewardScorer, params, examples, *,
                      n: int, temperature: float, seed: int, first_index: int, step: int,
                      segments: Segments | None = None) -> Callable[[], Episodes]:
    """:func:`sample_and_score` in two halves: samples now and returns the function that scores the
    samples (asynchronous RL scores a batch on another thread while it samples the next)."""
    data, ro = cfg.data, cfg.rollout
    prompts = encode_prompts(examples, tokenizer, data.template, system_prompt=data.system_prompt)
    sampling = SamplingParams(temperature=temperature, top_p=ro.top_p, top_k=ro.top_k,
                              max_new_tokens=ro.max_new_tokens, stop_token_ids=tokenizer.eos_ids, n=n, seed=seed)
    token_versions = None
    if segments is None:
        samples, versions = sampler.generate(params, prompts, sampling, first_index)
    else:
        samples, versions, token_versions = generate_in_segments(sampler, prompts, sampling, first_index, segments)

    def score() -> Episodes:
        domains = [str(e.get("domain") or e.get("task") or "") for e in examples]
        texts = [tokenizer.decode(s.token_ids) for grp in samples for s in grp]
        rendered = [render_prompt(e, data.template, tokenizer=tokenizer, system_prompt=data.system_prompt)
                    for e in examples]
        result = scorer.score(prompts=[r for r in rendered for _ in range(n)], completions=texts,
                              references=[e["reference"] for e in examples for _ in range(n)],
                              step=step, total_steps=cfg.run.steps, domains=[d for d in domains for _ in range(n)],
                              model_prompts=[str(e["prompt"]) for e in examples for _ in range(n)])
        shape = (len(examples), n)
        comps = {k: np.asarray(v, np.float32).reshape(shape) for k, v in result.components.items()}
        acc = [v for k, v in comps.items() if get_reward(k).accuracy]
        return Episodes(prompts=list(prompts), samples=samples, versions=list(versions), texts=texts,
                        rewards=np.asarray(result.total, np.float32).reshape(shape), components=comps,
                        correct=np.all(np.stack(acc) > 0.5, axis=0) if acc else None,
                        failures=int(sum(result.num_errors.values()) + sum(result.num_timeouts.values())),
                        domains=domains, verifiers=[str(e["verifier"]) for e in examples] if all(
                            "verifier" in e for e in examples) else None, token_versions=token_versions)

    return score
