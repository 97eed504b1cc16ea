"""The one interface every rollout engine implements (``jax``: the embedded sampler; ``vllm``).

The gRPC server (:mod:`r1jax.rollout.server`) is a thin translation layer over an :class:`Engine`;
in ``rollout.mode: embedded`` the trainer calls the same engine directly. No JAX here.

Weight updates are versioned and atomic::

    engine.begin_weight_update(version, "grpc")      # -> the TensorSpecs the push must cover
    engine.stage_weights(chunk) ...                  # grpc transport: byte chunks, validated
    engine.commit_weight_update(version)             # all or nothing; old weights stay live on error

or, in one call, ``engine.update_weights(params_or_flat_dict, version)``.
"""

from __future__ import annotations

import abc
import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from r1jax.rollout.types import (MAX_VERSION_STEP, MAX_WEIGHT_VERSION, EngineInfo, GenerateRequest,
                                 InvalidRequestError, NcclInit, PreconditionError, PromptResult, TensorSpec,
                                 WeightChunk)
from r1jax.rollout.weights import flatten_params, iter_chunks
from r1jax.sampling.params import check_prompts

__all__ = ["Engine", "ResultStream", "validate_request", "ENGINES", "make_engine"]


def validate_request(request: GenerateRequest, info: EngineInfo) -> list[np.ndarray]:
    """Checks a request against an engine; returns the prompts as int32 arrays.

    Raises:
        InvalidRequestError: naming the prompt / token / field at fault (no prompts, an empty
            prompt, a token id outside the vocabulary, a stop id outside the vocabulary, a prompt
            that does not fit ``max_length`` with ``max_new_tokens``).
    """
    s = request.sampling
    try:
        prompts = check_prompts(request.prompts, info.vocab_size, info.max_length, s.max_new_tokens)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    for i, t in enumerate(s.stop_token_ids):
        if not 0 <= t < info.vocab_size:
            raise InvalidRequestError(f"sampling.stop_token_ids[{i}]: token id {t} is outside the vocabulary "
                                      f"[0, {info.vocab_size})")
    if s.top_k > info.vocab_size:
        raise InvalidRequestError(f"sampling.top_k: {s.top_k} exceeds the vocabulary size {info.vocab_size}")
    return prompts


class ResultStream(Iterator[PromptResult]):
    """A thread-safe, closable iterator of prompt groups fed by an engine's worker.

    The producer calls :meth:`put` (a result), :meth:`fail` (an exception, re-raised to the
    consumer) and :meth:`finish`; the consumer iterates. :meth:`close` may be called from any
    thread (e.g. when a gRPC client vanishes): it unblocks the consumer and runs ``on_close``
    so the engine can drop work that has not started.
    """

    _END = object()

    def __init__(self, on_close: Callable[[], None] | None = None):
        self._q: queue.Queue = queue.Queue()
        self._on_close = on_close
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def put(self, result: PromptResult) -> None:
        self._q.put(result)

    def fail(self, exc: BaseException) -> None:
        self._q.put(exc)

    def finish(self) -> None:
        self._q.put(self._END)

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._q.put(self._END)
        if self._on_close is not None:
            self._on_close()

    def __iter__(self):
        return self

    def __next__(self) -> PromptResult:
        if self._closed.is_set() and self._q.empty():
            raise StopIteration
        item = self._q.get()
        if item is self._END:
            self._closed.set()
            self._q.put(self._END)  # keep later calls returning StopIteration
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item


class Engine(abc.ABC):
    """A rollout engine: generates samples and swaps weights atomically, with versions.

    Thread safety: every method may be called from any thread (the gRPC server calls them from
    its worker pool); generation never observes a half-committed weight version.
    """

    # -- generation --------------------------------------------------------------------------------

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Model name, vocabulary size, max length, live weight version, transports, tensors."""

    @abc.abstractmethod
    def generate_stream(self, request: GenerateRequest) -> ResultStream:
        """Returns a stream of each prompt's group of ``n`` samples, each as soon as it is
        complete (any order).

        Validates the request before returning (raising :class:`InvalidRequestError`).
        Closing the stream early (from any thread) cancels the groups that have not started.
        """

    def generate(self, request: GenerateRequest) -> list[PromptResult]:
        """All prompt groups of a request, in prompt order (see :meth:`generate_stream`)."""
        results = list(self.generate_stream(request))
        return sorted(results, key=lambda r: r.prompt_index)

    # -- weights -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def begin_weight_update(self, version: int, transport: str, *, nccl: NcclInit | None = None,
                            tensors: Sequence[TensorSpec] = ()) -> tuple[TensorSpec, ...]:
        """Starts staging weight ``version`` over ``transport``.

        ``version`` must be newer than the live one, at most ``MAX_VERSION_STEP`` (2**32) ahead of
        it and at most 2**63 - 1 (see :meth:`VersionGate.begin`). A new Begin abandons an update
        still in progress (its staged bytes are dropped).

        Returns:
            The tensors a grpc push must cover (empty when the engine cannot list them).
        Raises:
            PreconditionError: ``version`` is not newer than the live one.
            InvalidRequestError: a version out of bounds, unsupported transport or bad NCCL parameters.
        """

    @abc.abstractmethod
    def stage_weights(self, chunk: WeightChunk) -> list[str]:
        """Stores one grpc chunk of the update in progress; returns the tensors it completed."""

    @abc.abstractmethod
    def commit_weight_update(self, version: int, *, path: str | None = None) -> int:
        """Makes staged (or, for ``safetensors``, the directory ``path``'s) weights live at once.

        Returns:
            The new live version.
        Raises:
            PreconditionError: no such update in progress, or tensors missing; old weights stay live.
            InvalidRequestError: the weights do not match the model, or hold NaN / inf values (names
                the tensor); old weights stay live.
        """

    @abc.abstractmethod
    def abort_weight_update(self, version: int | None = None) -> None:
        """Drops the update in progress (if any; ``version`` must match when given)."""

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int, *,
                       chunk_bytes: int = 64 << 20) -> int:
        """Begin + stage + commit in one call, in-process (embedded mode).

        Args:
            weights: a parameter pytree (nested dicts) or an already flat ``{name: array}``.
            version: the new version.
            chunk_bytes: staging chunk size.
        Returns:
            The new live version.
        """
        flat = flatten_params(weights) if _is_nested(weights) else dict(weights)
        self.begin_weight_update(version, "grpc")
        try:
            for name, arr in flat.items():
                for chunk in iter_chunks(name, arr, version, chunk_bytes):
                    self.stage_weights(chunk)
            return self.commit_weight_update(version)
        except BaseException:
            self.abort_weight_update(version)
            raise

    # -- status ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"serving": bool, "weight_version": int, "active_requests": int, "queued_rows": int}``."""
        return {"serving": True, "weight_version": self.info().weight_version,
                "active_requests": 0, "queued_rows": 0}

    def close(self) -> None:
        """Releases threads and devices; the engine is unusable afterwards."""


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_nested(weights) -> bool:
    return isinstance(weights, Mapping) and any(isinstance(v, (Mapping, list, tuple)) for v in weights.values())


class VersionGate:
    """Shared bookkeeping of the update in progress: which version, which transport.

    Engines hold one; it serialises begin / stage / commit / abort under a lock and enforces
    version ordering. The live weights themselves are the engine's business.
    """

    def __init__(self, live_version: int = 0):
        if not _is_int(live_version) or not 0 <= live_version <= MAX_WEIGHT_VERSION:
            raise ValueError(f"weight_version: must be an int in [0, 2**63 - 1], got {live_version!r}")
        self.lock = threading.RLock()
        self.live_version = int(live_version)
        self.pending_version: int | None = None
        self.pending_transport: str | None = None

    def begin(self, version: int, transport: str, supported: Sequence[str]) -> None:
        """Starts the update of ``version`` over ``transport``.

        A version must be an int with ``live < version <= live + MAX_VERSION_STEP`` and
        ``version <= MAX_WEIGHT_VERSION`` (2**63 - 1), so no update can leave the engine without a
        version for the next one.

        Raises:
            InvalidRequestError: unsupported transport; a version that is not an int, above 2**63 - 1
                or more than ``MAX_VERSION_STEP`` (2**32) ahead of the live one.
            PreconditionError: ``version`` is not newer than the live version.
        """
        if transport not in supported:
            raise InvalidRequestError(f"weight transport {transport!r} is not supported by this engine; "
                                      f"supported: {list(supported)}")
        if not _is_int(version):
            raise InvalidRequestError(f"weight version: must be an int, got {type(version).__name__} {version!r}")
        if version <= self.live_version:
            raise PreconditionError(f"weight version {version} is not newer than the live version "
                                    f"{self.live_version}")
        if version > MAX_WEIGHT_VERSION:
            raise InvalidRequestError(f"weight version {version} exceeds the largest allowed version "
                                      f"{MAX_WEIGHT_VERSION} (2**63 - 1)")
        if version - self.live_version > MAX_VERSION_STEP:
            raise InvalidRequestError(f"weight version {version} is {version - self.live_version} ahead of the "
                                      f"live version {self.live_version}; at most {MAX_VERSION_STEP} (2**32) is "
                                      "allowed (versions count updates, e.g. the training step)")
        self.pending_version = int(version)
        self.pending_transport = transport

    def require(self, version: int, what: str) -> str:
        """Checks an update of ``version`` is in progress; returns its transport."""
        if self.pending_version is None:
            raise PreconditionError(f"{what} for weight version {version}: no weight update in progress "
                                    "(call BeginWeightUpdate first)")
        if int(version) != self.pending_version:
            raise PreconditionError(f"{what} for weight version {version}, but the update in progress is "
                                    f"version {self.pending_version}")
        return self.pending_transport

    def stage(self, chunk: WeightChunk, stager) -> list[str]:
        """Adds a grpc chunk of the update in progress to ``stager``; returns the tensors it completed."""
        with self.lock:
            transport = self.require(chunk.version, f"weight chunk of tensor {chunk.name!r}")
            if transport != "grpc":
                raise PreconditionError(f"weight chunk of tensor {chunk.name!r}: the update in progress uses "
                                        f"transport {transport!r}, not grpc chunks")
            return stager.add(chunk)

    def clear(self) -> None:
        self.pending_version = None
        self.pending_transport = None


ENGINES = ("jax", "vllm")


def make_engine(name: str, model: str, **kwargs) -> Engine:
    """Builds an engine by name, importing its module only then (``vllm`` never imports JAX).

    Args:
        name: ``"jax"`` or ``"vllm"``.
        model: the model directory (Hugging Face format).
        **kwargs: engine-specific options (see :class:`~r1jax.rollout.jax_engine.JaxEngine`,
            :class:`~r1jax.rollout.vllm_engine.VLLMEngine`).
    """
    if name == "jax":
        from r1jax.rollout.jax_engine import JaxEngine

        return JaxEngine.from_pretrained(model, **kwargs)
    if name == "vllm":
        from r1jax.rollout.vllm_engine import VLLMEngine

        return VLLMEngine.from_model(model, **kwargs)
    raise ValueError(f"engine: unknown engine {name!r}; choose one of {list(ENGINES)}")
