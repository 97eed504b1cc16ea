"""Asynchronous RL with bounded staleness: a producer thread samples ahead of the trainer.

``rollout.async.max_staleness: K`` (K ≥ 1). The batch of step ``u`` is sampled with the policy of
version ``v(u) = max(start, u - K)`` — versions count updates applied — so the producer runs at
most K versions ahead of the trainer and, while the trainer updates on batch ``u``, the producer is
already sampling batches ``u + 1 .. u + K`` with the weights it has. The schedule is exact, not
opportunistic: a batch never takes a newer policy because one happened to be ready, so the samples
of every step, and the run's metrics, do not depend on timing. That is what makes resume exact.

Partial rollouts (``rollout.async.partial_tokens: S``, K ≥ 2): new tokens are sampled in segments
of S; segment ``j`` of step ``u`` uses the policy of version ``max(start, min(u - K + j, u - 1))``,
so a sample interrupted by a weight update continues under the new weights (exactly one version
newer per segment, never one the trainer has not made before it needs the batch). Each token
records the version that sampled it.

Sampling and scoring overlap: the producer thread samples a batch and hands its scoring to a second
thread, then samples the next batch while the first is scored (rewards are CPU work on the trainer's
side; a rollout server would otherwise idle through them every step). Batches are scored and
buffered in step order.

Between producer and trainer is a bounded FIFO buffer (at most K + 1 batches, each consumed once, in
step order). Each buffered batch carries the version that sampled it (the trainer logs
``staleness = u - v(u)``) and the data iterator's position after its prompts were drawn. The
trainer's loss corrects the off-policy samples with the importance weights to the sampler's
log-probs (``algo.tis``, required with K ≥ 1; see :func:`r1jax.train.config.ExperimentConfig`);
which of a buffered batch's groups it trains on is the buffer policy's choice
(:mod:`r1jax.train.buffer`).

Checkpoints (:meth:`Producer.checkpoint`): the state of version ``s`` is saved once every segment
that needs an older policy is sampled; the checkpoint holds the buffered batches, the samples so
far of a batch interrupted between segments, and the data cursor to draw the next prompts from.
Everything after that point uses the checkpointed policy or a newer one, which the resumed trainer
makes again. A run SIGKILLed at any point resumes from its last checkpoint and produces the same
samples and metrics as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from r1jax.sampling.params import Sample
from r1jax.train.rollout import Episodes, Partial

__all__ = ["InProgress", "Produced", "Producer", "episodes_to_json", "episodes_from_json"]

log = logging.getLogger("r1jax.train")

# policy(segment, partial) -> (params, version): the weights that sample a segment of the batch (waits
# until the trainer has made them); ``partial`` holds the samples of the segments before it.
PolicyFn = Callable[[int, Partial], tuple[Any, int]]
# sample(examples, step, policy, resume) -> score: the trainer's sampling of one step, returning the
# function that scores it (``resume``: the Partial of a batch checkpointed between segments, else None)
SampleFn = Callable[[list, int, PolicyFn, "Partial | None"], Callable[[], Episodes]]


class _Stopped(Exception):
    """The producer was closed while it waited for a policy."""


@dataclasses.dataclass
class Produced:
    """One buffered batch: the scored episodes of ``step``, sampled by the policy of ``version``."""

    step: int
    version: int
    episodes: Episodes
    cursor: dict          # the data iterator's state after this step's prompts were drawn
    seconds: float        # the producer's wall time for sampling and scoring it

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "version": self.version, "episodes": episodes_to_json(self.episodes),
                "cursor": self.cursor, "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Produced":
        return cls(step=int(d["step"]), version=int(d["version"]), episodes=episodes_from_json(d["episodes"]),
                   cursor=dict(d["cursor"]), seconds=float(d["seconds"]))


def episodes_to_json(ep: Episodes) -> dict[str, Any]:
    """A JSON-ready dict of ``ep`` that :func:`episodes_from_json` turns back into equal arrays
    (float32 values go through Python floats, which hold them exactly)."""
    return {"prompts": [np.asarray(p).tolist() for p in ep.prompts],
            "samples": [[{"token_ids": s.token_ids.tolist(), "logprobs": s.logprobs.tolist(),
                          "finish_reason": s.finish_reason} for s in grp] for grp in ep.samples],
            "versions": [int(v) for v in ep.versions], "texts": list(ep.texts),
            "rewards": np.asarray(ep.rewards).tolist(),
            "components": {k: np.asarray(v).tolist() for k, v in ep.components.items()},
            "correct": None if ep.correct is None else np.asarray(ep.correct).tolist(),
            "failures": int(ep.failures), "domains": ep.domains,
            "verifiers": ep.verifiers,
            "token_versions": None if ep.token_versions is None else [
                [v.tolist() for v in grp] for grp in ep.token_versions]}


def episodes_from_json(d: Mapping[str, Any]) -> Episodes:
    """The :class:`Episodes` of :func:`episodes_to_json`'s dict."""
    return Episodes(prompts=[np.asarray(p, np.int32) for p in d["prompts"]],
                    samples=[[Sample(np.asarray(s["token_ids"], np.int32), np.asarray(s["logprobs"], np.float32),
                                     s["finish_reason"]) for s in grp] for grp in d["samples"]],
                    versions=[int(v) for v in d["versions"]], texts=list(d["texts"]),
                    rewards=np.asarray(d["rewards"], np.float32),
                    components={k: np.asarray(v, np.float32) for k, v in d["components"].items()},
                    correct=None if d["correct"] is None else np.asarray(d["correct"], bool),
                    failures=int(d["failures"]), domains=d.get("domains"), verifiers=d.get("verifiers"),
                    token_versions=None if d.get("token_versions") is None else [
                        [np.asarray(v, np.int32) for v in grp] for grp in d["token_versions"]])


@dataclasses.dataclass
class InProgress:
    """A batch interrupted between segments (partial rollouts): its samples so far, and the data
    iterator's position *before* its prompts were drawn (a resumed producer draws them again)."""

    step: int
    partial: Partial
    cursor: dict

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "partial": self.partial.to_json(), "cursor": self.cursor}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "InProgress":
        return cls(int(d["step"]), Partial.from_json(d["partial"]), dict(d["cursor"]))


class Producer:
    """Samples the batches of steps ``next_step .. end_step - 1`` on a thread, K versions ahead.

    Args:
      sample: ``sample(examples, step, policy, resume) -> score`` samples a step on the producer thread
        (``policy(segment, partial)`` gives the weights of each segment, waiting for them) and returns
        ``score() -> Episodes``, which the scoring thread runs while the next step is sampled.
      examples: the prompt iterator (``next`` gives a step's examples; ``state()`` its position);
        owned by the producer from now on.
      params: the trainer's params of version ``version`` (a copy the trainer will not donate).
      version: the trainer's current version (updates applied; the step it trains next).
      end_step: the run's last step + 1.
      max_staleness: K ≥ 1.
      segments: the most segments a batch has (partial rollouts; 1 = each batch with one policy).
      buffered: batches restored from a checkpoint (steps ``version ..``, in order).
      in_progress: the checkpointed batch interrupted between segments (the step after the buffered).
    """

    def __init__(self, sample: SampleFn, examples: Iterator, *, params: Any, version: int, end_step: int,
                 max_staleness: int, segments: int = 1, buffered: tuple[Produced, ...] = (),
                 in_progress: InProgress | None = None):
        if max_staleness < 1:
            raise ValueError(f"rollout.async.max_staleness: the producer needs K >= 1, got {max_staleness}")
        steps = [b.step for b in buffered]
        if steps != list(range(version, version + len(steps))):
            raise ValueError(f"async buffer: expected batches of steps {version}.., got {steps}")
        if in_progress is not None and in_progress.step != version + len(steps):
            raise ValueError(f"async buffer: the interrupted batch is of step {in_progress.step}, expected "
                             f"{version + len(steps)}")
        self._sample, self._examples = sample, examples
        self.start, self.end, self.k, self.segments = version, end_step, max_staleness, segments
        self._buffer: dict[int, Produced] = {b.step: b for b in buffered}
        self._next = version + len(steps)          # the next step the producer samples
        self._scored = self._next                  # the next step the scoring thread buffers
        self._front = (self._next, 0)              # the next (step, segment) it samples
        self._in_progress = in_progress
        self._snapshots: dict[int, Any] = {version: params}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stop = False
        self._to_score: queue.Queue = queue.Queue()  # (step, version, cursor, t0, score); None: no more
        self._scorer = threading.Thread(target=self._score, name="r1jax-rollout-scorer", daemon=True)
        self._thread = threading.Thread(target=self._run, name="r1jax-rollout-producer", daemon=True)
        self._scorer.start()
        self._thread.start()

    def version_of(self, step: int, segment: int = 0) -> int:
        """The policy version that samples ``segment`` of ``step``: ``step - K + segment``, at most
        ``step - 1`` (made before the trainer needs the batch), never before the run's start."""
        return max(self.start, min(step - self.k + segment, step - 1))

    def _needed(self, version: int) -> bool:
        """Whether a (step, segment) not yet sampled uses ``version`` (the caller holds the lock)."""
        step, seg = self._front
        return any(self.version_of(u, j) == version for u in range(step, min(self.end, version + self.k + 1))
                   for j in range(seg if u == step else 0, self.segments))

    # ------------------------------------------------------------------ producer thread

    def _policy(self, step: int, cursor: dict, used: list[int]) -> Callable[[int, Partial], tuple[Any, int]]:
        def policy(segment: int, partial: Partial) -> tuple[Any, int]:
            version = self.version_of(step, segment)
            used.append(version)
            with self._cond:
                self._front = (step, segment)
                if segment:  # what a checkpoint keeps of this batch if it is taken from now on
                    self._in_progress = InProgress(step, copy.deepcopy(partial), cursor)
                for v in [v for v in self._snapshots if not self._needed(v)]:
                    del self._snapshots[v]
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._stop or version in self._snapshots)
                if self._stop:
                    raise _Stopped
                if segment:
                    log.info("step %d continues at segment %d with the policy of version %d", step, segment, version)
                return self._snapshots[version], version
        return policy

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._next >= self.end or self._stop:
                        return
                    step = self._next
                    resume = self._in_progress.partial if self._in_progress is not None else None
                t0 = time.perf_counter()
                before = self._examples.state()
                examples = next(self._examples)
                cursor = self._examples.state()
                used: list[int] = list(resume.policy_versions) if resume is not None else []
                score = self._sample(examples, step, self._policy(step, before, used), resume)
                with self._cond:
                    # the oldest policy that sampled it (a batch resumed between segments began before this run)
                    self._to_score.put((step, used[0], cursor, t0, score))
                    self._next = step + 1
                    self._front = (step + 1, 0)
                    self._in_progress = None
                    for v in [v for v in self._snapshots if not self._needed(v)]:
                        del self._snapshots[v]
                    self._cond.notify_all()
        except _Stopped:
            return
        except BaseException as err:  # handed to the trainer at its next get / checkpoint
            self._fail(err)
        finally:
            self._to_score.put(None)

    def _score(self) -> None:
        """The scoring thread: scores the sampled batches in step order and buffers them."""
        while (item := self._to_score.get()) is not None:
            step, version, cursor, t0, score = item
            try:
                batch = Produced(step, version, score(), cursor, time.perf_counter() - t0)
            except BaseException as err:  # noqa: BLE001 - handed to the trainer
                self._fail(err)
                return
            log.info("sampled step %d with the policy of version %d", step, version)
            with self._cond:
                self._buffer[step] = batch
                self._scored = step + 1
                self._cond.notify_all()

    def _fail(self, err: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = err
            self._cond.notify_all()

    # ------------------------------------------------------------------ trainer side

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Waits (the caller holds the lock) until ``ready()``; re-raises a producer error."""
        self._cond.wait_for(lambda: ready() or self._error is not None)
        if self._error is not None:
            raise RuntimeError(f"the rollout producer failed: {self._error!r}") from self._error

    def get(self, step: int) -> Produced:
        """The batch of ``step`` (waits for it), removed from the buffer."""
        with self._cond:
            self._wait(lambda: step in self._buffer)
            return self._buffer.pop(step)

    def publish(self, version: int, params: Any) -> None:
        """The trainer's params after ``version`` updates (a copy it will not donate), if a later
        segment is sampled with them."""
        with self._cond:
            if self._needed(version):
                self._snapshots[version] = params
                self._cond.notify_all()

    def published_after(self, version: int) -> tuple[int, Any] | None:
        """The oldest policy kept for sampling that is newer than ``version``: (its version, params)."""
        with self._cond:
            newer = [v for v in self._snapshots if v > version]
            return (min(newer), self._snapshots[min(newer)]) if newer else None

    def _past_older_policies(self, version: int) -> tuple[int, int]:
        """The first (step, segment) sampled with ``version`` or newer after every one sampled with an
        older policy (steps ``version .. version + K - 1`` hold the latter)."""
        step = min(version + self.k - 1, self.end - 1)
        seg = 0
        while seg < self.segments and self.version_of(step, seg) < version:
            seg += 1
        return (step, seg) if seg < self.segments else (step + 1, 0)

    def checkpoint(self, version: int) -> dict[str, Any]:
        """What a checkpoint of the trainer's state at ``version`` needs to resume the producer exactly.

        Waits until every segment sampled with an older policy is done; then saves the buffered
        batches, the samples so far of a batch interrupted between segments, and the data cursor
        after the prompts drawn (before the interrupted batch's, which a resumed producer draws
        again). What the producer samples next uses the checkpointed policy or a newer one.
        """
        past = self._past_older_policies(version)
        with self._cond:
            # sampled past them, and every batch sampled so far scored (buffered)
            self._wait(lambda: (self._front >= past or self._next >= self.end) and self._scored == self._next)
            batches = [self._buffer[u] for u in sorted(self._buffer)]
            in_progress, (step, segment) = self._in_progress, self._front
        cursor = in_progress.cursor if in_progress else (batches[-1].cursor if batches else None)
        return {"max_staleness": self.k, "segments": self.segments, "buffer": [b.to_json() for b in batches],
                "in_progress": in_progress.to_json() if in_progress else None, "cursor": cursor,
                "next": {"step": step, "segment": segment}}

    def close(self) -> None:
        """Stops the producer (an in-flight segment, and the scoring of what was sampled, are finished
        first) and joins its threads."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._scorer.join()
