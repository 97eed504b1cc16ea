"""Asynchronous RL with bounded staleness: a producer thread samples ahead of the trainer.

``rollout.async.max_staleness: K`` (K ≥ 1). The batch of step ``u`` is sampled with the policy of
version ``v(u) = max(start, u - K)`` — versions count updates applied — so the producer runs at
most K versions ahead of the trainer and, while the trainer updates on batch ``u``, the producer is
already sampling batches ``u + 1 .. u + K`` with the weights it has. The schedule is exact, not
opportunistic: a batch never takes a newer policy because one happened to be ready, so the samples
of every step, and the run's metrics, do not depend on timing. That is what makes resume exact.

Between producer and trainer is a bounded FIFO buffer (at most K + 1 batches, each consumed once, in
step order). Each buffered batch carries the version that sampled it (the trainer logs
``staleness = u - v(u)``) and the data iterator's position after its prompts were drawn. The
trainer's loss corrects the off-policy samples with the importance weights to the sampler's
log-probs (``algo.tis``, required with K ≥ 1; see :func:`r1jax.train.config.ExperimentConfig`).

Checkpoints (:meth:`Producer.checkpoint`): the state of version ``s`` is saved once every batch
that needs an older policy (steps ``s .. s + K - 1``) is in the buffer; the checkpoint holds those
batches, the producer's data cursor after them, and the identity of the batch it works on next
(step ``s + K``, version ``s``, which the checkpointed state can sample again). A run SIGKILLed at
any point resumes from its last checkpoint and produces the same samples and metrics as an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from r1jax.sampling.params import Sample
from r1jax.train.rollout import Episodes

__all__ = ["Produced", "Producer", "episodes_to_json", "episodes_from_json"]

log = logging.getLogger("r1jax.train")

# sample(params, version, examples, step) -> Episodes: the trainer's sampling and scoring of one step
SampleFn = Callable[[Any, int, list, int], Episodes]


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
            "verifiers": ep.verifiers}


def episodes_from_json(d: Mapping[str, Any]) -> Episodes:
    """The :class:`Episodes` of :func:`episodes_to_json`'s dict."""
    return Episodes(prompts=[np.asarray(p, np.int32) for p in d["prompts"]],
                    samples=[[Sample(np.asarray(s["token_ids"], np.int32), np.asarray(s["logprobs"], np.float32),
                                     s["finish_reason"]) for s in grp] for grp in d["samples"]],
                    versions=[int(v) for v in d["versions"]], texts=list(d["texts"]),
                    rewards=np.asarray(d["rewards"], np.float32),
                    components={k: np.asarray(v, np.float32) for k, v in d["components"].items()},
                    correct=None if d["correct"] is None else np.asarray(d["correct"], bool),
                    failures=int(d["failures"]), domains=d.get("domains"), verifiers=d.get("verifiers"))


class Producer:
    """Samples the batches of steps ``next_step .. end_step - 1`` on a thread, K versions ahead.

    Args:
      sample: ``sample(params, version, examples, step) -> Episodes`` (called on the producer thread).
      examples: the prompt iterator (``next`` gives a step's examples; ``state()`` its position);
        owned by the producer from now on.
      params: the trainer's params of version ``version`` (a copy the trainer will not donate).
      version: the trainer's current version (updates applied; the step it trains next).
      end_step: the run's last step + 1.
      max_staleness: K ≥ 1.
      buffered: batches restored from a checkpoint (steps ``version ..``, in order).
    """

    def __init__(self, sample: SampleFn, examples: Iterator, *, params: Any, version: int, end_step: int,
                 max_staleness: int, buffered: tuple[Produced, ...] = ()):
        if max_staleness < 1:
            raise ValueError(f"rollout.async.max_staleness: the producer needs K >= 1, got {max_staleness}")
        steps = [b.step for b in buffered]
        if steps != list(range(version, version + len(steps))):
            raise ValueError(f"async buffer: expected batches of steps {version}.., got {steps}")
        self._sample, self._examples = sample, examples
        self.start, self.end, self.k = version, end_step, max_staleness
        self._buffer: dict[int, Produced] = {b.step: b for b in buffered}
        self._next = version + len(steps)          # the next step the producer samples
        self._snapshots: dict[int, Any] = {version: params}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="r1jax-rollout-producer", daemon=True)
        self._thread.start()

    def version_of(self, step: int) -> int:
        """The policy version that samples ``step`` (exactly ``step - K``, never before the run's start)."""
        return max(self.start, step - self.k)

    # ------------------------------------------------------------------ producer thread

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._next >= self.end or self._stop:
                        return
                    step = self._next
                    version = self.version_of(step)
                    self._cond.wait_for(lambda: self._stop or version in self._snapshots)
                    if self._stop:
                        return
                    params = self._snapshots[version]
                t0 = time.perf_counter()
                examples = next(self._examples)
                cursor = self._examples.state()
                episodes = self._sample(params, version, examples, step)
                batch = Produced(step, version, episodes, cursor, time.perf_counter() - t0)
                log.info("sampled step %d with the policy of version %d", step, version)
                with self._cond:
                    self._buffer[step] = batch
                    self._next = step + 1
                    # versions no later step needs (the next batch uses version_of(step + 1) or later)
                    for v in [v for v in self._snapshots if v < self.version_of(step + 1)]:
                        del self._snapshots[v]
                    self._cond.notify_all()
        except BaseException as err:  # handed to the trainer at its next get / checkpoint
            with self._cond:
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
        """The trainer's params after ``version`` updates (a copy it will not donate), if a later batch
        is sampled with them."""
        if any(self.version_of(u) == version for u in range(version, min(version + self.k, self.end - 1) + 1)):
            with self._cond:
                self._snapshots[version] = params
                self._cond.notify_all()

    def checkpoint(self, version: int) -> dict[str, Any]:
        """What a checkpoint of the trainer's state at ``version`` needs to resume the producer exactly.

        Waits until every batch sampled with an older policy (steps ``version .. version + K - 1``)
        is buffered: those are saved; the producer's next batch (step ``version + K``) uses the
        checkpointed policy and is recorded by its identity.
        """
        last = min(version + self.k, self.end)
        with self._cond:
            self._wait(lambda: all(u in self._buffer for u in range(version, last)))
            batches = [self._buffer[u] for u in range(version, last)]
        cursor = batches[-1].cursor if batches else None
        return {"max_staleness": self.k, "buffer": [b.to_json() for b in batches], "cursor": cursor,
                "next": {"step": last, "version": self.version_of(last)}}

    def close(self) -> None:
        """Stops the producer (an in-flight batch is finished first) and joins it."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
