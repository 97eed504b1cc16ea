"""The ``jax`` engine: the embedded sampler behind the :class:`~r1jax.rollout.engine.Engine` interface.

A single worker thread drains a FIFO of requests and packs whole prompt groups from one or more
requests into each batch (up to ``max_batch_rows`` rows), so concurrent clients share the device.
Each batch reads the live ``(version, params)`` pair once, atomically, when it starts: every
group of a batch is produced by one weight version and says which. A commit swaps that pair in
one assignment; batches already running finish on the weights they started with.

Weight transports: ``grpc`` (validated byte chunks staged off to the side, see
:class:`~r1jax.rollout.weights.WeightStager`) and ``safetensors`` (a Hugging Face directory read
with :func:`r1jax.models.load_pretrained` and checked tensor by tensor against the live model).
Every path refuses weights that hold NaN or inf values; the previous weights then stay live.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import threading
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from r1jax.models import ModelConfig
from r1jax.rollout.engine import Engine, ResultStream, VersionGate, validate_request
from r1jax.rollout.types import (EngineInfo, GenerateRequest, InvalidRequestError, NcclInit,
                                 PreconditionError, PromptResult, TensorSpec, WeightChunk)
from r1jax.rollout.weights import WeightStager, flatten_params, tensor_specs, unflatten_params
from r1jax.sampling.params import Sample
from r1jax.sampling.sampler import Row, Sampler

__all__ = ["JaxEngine"]

log = logging.getLogger(__name__)

# Fields of ModelConfig that decide whether a checkpoint's weights fit the live model.
_ARCH_FIELDS = ("architecture", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                "num_heads", "num_kv_heads", "resolved_head_dim", "tie_word_embeddings", "qkv_bias",
                "o_bias", "use_qk_norm")


@dataclasses.dataclass(eq=False)
class _Job:
    stream: ResultStream
    groups: list[tuple[int, list[Row]]]   # (prompt_index, its n rows)
    next_group: int = 0
    remaining: int = 0
    cancelled: bool = False


class JaxEngine(Engine):
    """Serves a :mod:`r1jax.models` transformer with the embedded :class:`~r1jax.sampling.sampler.Sampler`.

    Args:
        params: initial parameters.
        config: the architecture.
        model_name: display name for ``Info``.
        weight_version: version of ``params``.
        max_length: longest prompt + generation allowed (default ``config.max_position_embeddings``).
        max_batch_rows: rows per batch (whole prompt groups; a larger group runs alone).
        decode_chunk: decode steps between checks for finished groups (streaming granularity).
        **sampler_kwargs: passed to :class:`~r1jax.sampling.sampler.Sampler` (buckets, cache dtype).
    """

    TRANSPORTS = ("grpc", "safetensors")

    def __init__(self, params: Any, config: ModelConfig, *, model_name: str = "", weight_version: int = 0,
                 max_length: int | None = None, max_batch_rows: int = 64, decode_chunk: int | None = 32,
                 **sampler_kwargs):
        self.config = config
        self.model_name = model_name or f"{config.architecture}-{config.num_layers}x{config.hidden_size}"
        self.max_length = int(max_length or config.max_position_embeddings)
        self.sampler = Sampler(config, max_batch_rows=max_batch_rows, decode_chunk=decode_chunk, **sampler_kwargs)
        self._specs = tensor_specs(flatten_params(params))
        self._live: tuple[int, Any] = (int(weight_version), params)
        self._gate = VersionGate(weight_version)
        self._stager: WeightStager | None = None
        self._cv = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._active: set[int] = set()
        self._cancelled = 0
        self._closed = False
        self._worker: threading.Thread | None = None

    @classmethod
    def from_pretrained(cls, path: str, *, compute_dtype: str | None = None, **kwargs) -> "JaxEngine":
        """Loads a Hugging Face directory with :func:`r1jax.models.load_pretrained`.

        ``compute_dtype`` overrides the model's (``ModelConfig.compute_dtype``: the weight matmuls'
        input dtype); the other keywords go to the constructor.
        """
        from r1jax.models import load_pretrained

        params, config = load_pretrained(path)
        if compute_dtype is not None:
            config = dataclasses.replace(config, compute_dtype=compute_dtype)
        kwargs.setdefault("model_name", str(path))
        return cls(params, config, **kwargs)

    # -- info --------------------------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._live[0]

    @property
    def params(self) -> Any:
        """The live parameters."""
        return self._live[1]

    def info(self) -> EngineInfo:
        return EngineInfo(model_name=self.model_name, engine="jax", vocab_size=self.config.vocab_size,
                          max_length=self.max_length, weight_version=self._live[0],
                          transports=self.TRANSPORTS, tensors=tuple(self._specs.values()),
                          max_batch_rows=self.sampler.max_batch_rows)

    @property
    def cancelled_requests(self) -> int:
        """Requests whose stream was closed before they finished (e.g. a gRPC client that went away
        or ran out of time); their rows that had not started were dropped."""
        with self._cv:
            return self._cancelled

    def health(self) -> dict[str, Any]:
        with self._cv:
            queued = sum(len(rows) for j in self._jobs for _, rows in j.groups[j.next_group:])
            active = len(self._active)
        return {"serving": not self._closed, "weight_version": self._live[0],
                "active_requests": active, "queued_rows": queued}

    # -- generation --------------------------------------------------------------------------------

    def generate_stream(self, request: GenerateRequest) -> ResultStream:
        if self._closed:
            raise PreconditionError("engine is closed")
        prompts = validate_request(request, self.info())
        s = request.sampling
        seed = s.seed if s.seed is not None else secrets.randbits(32)
        groups = [(request.first_prompt_index + i,
                   [Row(p, s, seed, request.first_prompt_index + i, j) for j in range(s.n)])
                  for i, p in enumerate(prompts)]
        job = _Job(stream=None, groups=groups, remaining=len(groups))  # type: ignore[arg-type]

        def cancel():
            with self._cv:
                if id(job) in self._active and not job.cancelled:
                    self._cancelled += 1
                job.cancelled = True
                self._active.discard(id(job))
                self._cv.notify_all()

        job.stream = ResultStream(on_close=cancel)
        with self._cv:
            self._jobs.append(job)
            self._active.add(id(job))
            self._ensure_worker()
            self._cv.notify_all()
        return job.stream

    def _ensure_worker(self):
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, daemon=True, name="jax-engine")
            self._worker.start()

    def _next_batch(self) -> list[tuple[_Job, int, list[Row]]] | None:
        """Whole prompt groups from the queued jobs, FIFO, up to max_batch_rows rows."""
        with self._cv:
            while not self._closed:
                while self._jobs and (self._jobs[0].cancelled or self._jobs[0].next_group >= len(self._jobs[0].groups)):
                    self._jobs.popleft()
                if self._jobs:
                    break
                self._cv.wait()
            if self._closed:
                return None
            batch, rows = [], 0
            for job in list(self._jobs):
                if job.cancelled:
                    continue
                while job.next_group < len(job.groups):
                    pidx, g = job.groups[job.next_group]
                    if batch and rows + len(g) > self.sampler.max_batch_rows:
                        return batch
                    batch.append((job, pidx, g))
                    rows += len(g)
                    job.next_group += 1
            return batch

    def _work(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            version, params = self._live  # one atomic read: the whole batch uses these weights
            rows = [r for _, _, g in batch for r in g]
            owner = [(k, j) for k, (_, _, g) in enumerate(batch) for j in range(len(g))]
            got: dict[int, list[Sample | None]] = {k: [None] * len(g) for k, (_, _, g) in enumerate(batch)}
            left = {k: len(g) for k, (_, _, g) in enumerate(batch)}
            try:
                for r, sample in self.sampler.run_rows(
                        params, rows, cancelled=lambda: all(job.cancelled for job, _, _ in batch)):
                    k, j = owner[r]
                    got[k][j] = sample
                    left[k] -= 1
                    if left[k] == 0:
                        job, pidx, _ = batch[k]
                        self._deliver(job, PromptResult(pidx, tuple(got[k]), version))
            except Exception as e:  # noqa: BLE001 - reported to every request of the batch
                log.exception("jax engine: batch failed")
                for job in {id(j): j for j, _, _ in batch}.values():
                    job.stream.fail(e)
                    self._finish(job)

    def _deliver(self, job: _Job, result: PromptResult):
        if job.cancelled:
            return
        job.stream.put(result)
        job.remaining -= 1
        if job.remaining == 0:
            job.stream.finish()
            self._finish(job)

    def _finish(self, job: _Job):
        with self._cv:
            self._active.discard(id(job))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self._jobs:
                job.stream.fail(PreconditionError("engine closed"))
            self._jobs.clear()
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)

    # -- weights -----------------------------------------------------------------------------------

    def begin_weight_update(self, version: int, transport: str, *, nccl: NcclInit | None = None,
                            tensors: Sequence[TensorSpec] = ()) -> tuple[TensorSpec, ...]:
        del nccl, tensors
        with self._gate.lock:
            self._gate.begin(version, transport, self.TRANSPORTS)
            self._stager = WeightStager(version, self._specs) if transport == "grpc" else None
            return tuple(self._specs.values()) if transport == "grpc" else ()

    def stage_weights(self, chunk: WeightChunk) -> list[str]:
        return self._gate.stage(chunk, self._stager)

    def commit_weight_update(self, version: int, *, path: str | None = None) -> int:
        with self._gate.lock:
            transport = self._gate.require(version, "commit")
            if transport == "grpc":
                if path:
                    raise InvalidRequestError("path: only the safetensors transport takes a directory")
                flat = {n: jnp.asarray(a) for n, a in self._stager.arrays().items()}  # raises if missing
                new = unflatten_params(self._live[1], flat)
            else:
                if not path:
                    raise InvalidRequestError("path: the safetensors transport needs the directory to load")
                new = self._load_checked(path)
            self._swap(version, new)
            return version

    def abort_weight_update(self, version: int | None = None) -> None:
        with self._gate.lock:
            if version is not None and self._gate.pending_version not in (None, version):
                raise PreconditionError(f"abort of weight version {version}, but the update in progress is "
                                        f"version {self._gate.pending_version}")
            self._gate.clear()
            self._stager = None

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int, **kwargs) -> int:
        """In-process update (embedded mode): validates names / shapes and swaps without copying bytes.

        Args:
            weights: a parameter pytree like the live one, or its flat ``{name: array}`` form.
            version: the new version (> the live one).
        Returns:
            The new live version.
        Raises:
            InvalidRequestError: unknown tensor, wrong shape, NaN / inf values (after the cast to the
                model's dtypes), or a version out of bounds; the previous weights stay live.
            PreconditionError: tensors missing, a stale version, or an update being staged.
        """
        del kwargs
        flat = flatten_params(weights) if any(isinstance(v, (Mapping, list, tuple)) for v in weights.values()) \
            else dict(weights)
        with self._gate.lock:
            if self._gate.pending_version is not None:
                raise PreconditionError(f"weight version {self._gate.pending_version} is being staged; "
                                        "commit or abort it first")
            self._gate.begin(version, "grpc", self.TRANSPORTS)
            try:
                self._check_flat(flat, "update_weights")
                cast = {n: jnp.asarray(a, dtype=self._np_dtype(n)) for n, a in flat.items()}
                _require_finite(cast, f"update_weights of version {version}")
                self._swap(version, unflatten_params(self._live[1], cast))
            finally:
                self._gate.clear()
            return version

    def _np_dtype(self, name: str):
        return jnp.dtype(self._specs[name].dtype)

    def _check_flat(self, flat: Mapping[str, Any], what: str) -> None:
        missing = sorted(set(self._specs) - set(flat))
        unknown = sorted(set(flat) - set(self._specs))
        if unknown:
            raise InvalidRequestError(f"{what}: unknown tensor(s) {unknown[:8]}; expected names like "
                                      f"{sorted(self._specs)[:4]}")
        if missing:
            raise PreconditionError(f"{what}: {len(missing)} tensor(s) missing: {missing[:8]}; "
                                    "the previous weights stay live")
        for n, a in flat.items():
            if tuple(a.shape) != self._specs[n].shape:
                raise InvalidRequestError(f"{what}: tensor {n!r} has shape {list(a.shape)}, the model's is "
                                          f"{list(self._specs[n].shape)}")

    def _load_checked(self, path: str) -> Any:
        from r1jax.models import load_pretrained

        try:
            params, config = load_pretrained(path)
        except Exception as e:  # noqa: BLE001 - any unreadable directory is the caller's input
            raise InvalidRequestError(f"safetensors directory {path!r}: cannot load: {type(e).__name__}: {e}") from None
        for f in _ARCH_FIELDS:
            got, want = getattr(config, f), getattr(self.config, f)
            if got != want:
                raise InvalidRequestError(f"safetensors directory {path!r}: {f} = {got!r}, the served model has "
                                          f"{want!r}")
        flat = flatten_params(params)
        self._check_flat(flat, f"safetensors directory {path!r}")
        cast = {n: jnp.asarray(a, dtype=self._np_dtype(n)) for n, a in flat.items()}
        _require_finite(cast, f"safetensors directory {path!r}")
        return unflatten_params(self._live[1], cast)

    def _swap(self, version: int, params: Any) -> None:
        params = jax.block_until_ready(params)
        self._live = (int(version), params)  # a single assignment: readers see old or new, never a mix
        self._gate.live_version = int(version)
        self._gate.clear()
        self._stager = None


def _require_finite(flat: Mapping[str, jax.Array], what: str) -> None:
    """Raises InvalidRequestError naming the tensors that hold NaN / inf values (checked on device)."""
    ok = jax.device_get({n: jnp.isfinite(a).all() for n, a in flat.items() if jnp.issubdtype(a.dtype, jnp.inexact)})
    bad = sorted(n for n, fine in ok.items() if not fine)
    if bad:
        raise InvalidRequestError(f"{what}: {len(bad)} tensor(s) hold NaN / inf values: {bad[:8]}; refused, the "
                                  "previous weights stay live")
