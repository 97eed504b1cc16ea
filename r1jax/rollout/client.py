"""The trainer's client of one or more rollout servers (no JAX).

:class:`RolloutClient` speaks ``rollout.proto`` with the same dataclasses an in-process
:class:`~r1jax.rollout.engine.Engine` takes, so the trainer's code is the same in
``rollout.mode: server`` and ``embedded``::

    backend = RolloutClient(["127.0.0.1:50051", "10.0.0.2:50051"], token=...)   # or JaxEngine(...)
    results = backend.generate(GenerateRequest(prompts, SamplingParams(n=8, seed=step)))
    backend.update_weights(params, version=step + 1)                            # every server

Requests with several prompts are split into contiguous slices, one per server, sent in
parallel; the random streams depend on the global prompt index (``first_prompt_index``), so the
samples are the same however a request is split. Each slice goes to a server picked by the
balancing policy (``round_robin`` or ``least_loaded``: fewest rows in flight from this client);
a server that does not answer (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``: its queue is full, ...) is
skipped for a cool-down and the slice is retried on another one with exponential backoff. Bad
requests (``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``) are raised at once as
:class:`~r1jax.rollout.types.InvalidRequestError` / :class:`~r1jax.rollout.types.PreconditionError`.
When no server answers, :class:`~r1jax.rollout.types.UnavailableError` names every address and
its last error.

A generation call that runs out of time (``DEADLINE_EXCEEDED``) is NOT retried: the server
cancels the abandoned work, and a retry would redo the whole request (and, on a busy server,
queue behind it); :class:`~r1jax.rollout.types.DeadlineExceededError` says so. Control calls
(Info, Health, weight-update steps) are retried on it as on the other transport errors.

Before sending, every slice of a request is checked against ``limits`` (the servers' limits,
:class:`~r1jax.rollout.types.RequestLimits`; the defaults match ``r1jax serve``'s), so an
oversized request fails here with the field and both numbers, not after a round trip.

``score(model, prompts, responses)`` asks the servers' reward model ``model`` (``Score`` RPC,
``r1jax serve --reward-model NAME=DIR``) for one score per (prompt, response) text pair.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

import grpc
import numpy as np

from r1jax.rollout import convert
from r1jax.rollout import rollout_pb2 as pb
from r1jax.rollout import rollout_pb2_grpc as pb_grpc
from r1jax.rollout.server import MAX_MESSAGE_BYTES, TOKEN_ENV
from r1jax.rollout.types import (DeadlineExceededError, EngineInfo, GenerateRequest, InvalidRequestError,
                                 NcclInit, PreconditionError, PromptResult, RequestLimits, RolloutError,
                                 TensorSpec, UnavailableError)
from r1jax.rollout.weights import flatten_params, iter_chunks

__all__ = ["RolloutClient"]

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.CANCELLED}


def _raise_for(addr: str, err: grpc.RpcError):
    code, details = err.code(), err.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        raise InvalidRequestError(f"{addr}: {details}") from None
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        raise PreconditionError(f"{addr}: {details}") from None
    if code == grpc.StatusCode.UNAUTHENTICATED:
        raise PermissionError(f"{addr}: {details}") from None
    raise RolloutError(f"{addr}: {code.name}: {details}") from None


class _Server:
    def __init__(self, addr: str, creds_md):
        self.addr = addr
        self.channel = grpc.insecure_channel(addr, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.stub = pb_grpc.RolloutStub(self.channel)
        self.md = creds_md
        self.in_flight = 0
        self.down_until = 0.0
        self.last_error = ""


class RolloutClient:
    """Client of N rollout servers: load-balanced generation, weight pushes to all.

    Args:
        addresses: ``"host:port"`` or a list of them.
        token: shared secret sent as ``authorization: Bearer <token>``; default ``$R1JAX_ROLLOUT_TOKEN``.
        timeout: seconds allowed per generation call.
        control_timeout: seconds allowed per control call (Info, Health, weight update steps).
        retries: further attempts after the first failure of a call (across servers).
        backoff: first retry delay in seconds; doubles each retry up to ``max_backoff``.
        max_backoff: cap of the retry delay.
        balance: ``"round_robin"`` or ``"least_loaded"``.
        cooldown: seconds a server that failed is skipped (unless every server is down).
        chunk_bytes: bytes per weight chunk of the grpc transport.
        split: split multi-prompt requests across servers (False: one server per request).
        limits: the servers' per-request limits, checked before sending (they must match the
            servers' ``--max-n`` etc.; None: leave every check to the servers).
    """

    def __init__(self, addresses: str | Sequence[str], *, token: str | None = None, timeout: float = 600.0,
                 control_timeout: float = 60.0, retries: int = 3, backoff: float = 0.25, max_backoff: float = 8.0,
                 balance: str = "round_robin", cooldown: float = 5.0, chunk_bytes: int = 1 << 20,
                 split: bool = True, limits: RequestLimits | None = RequestLimits()):
        addrs = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addrs:
            raise ValueError("addresses: give at least one rollout server address (host:port)")
        if balance not in ("round_robin", "least_loaded"):
            raise ValueError(f"balance: expected 'round_robin' or 'least_loaded', got {balance!r}")
        if retries < 0 or timeout <= 0 or control_timeout <= 0 or backoff < 0 or chunk_bytes <= 0:
            raise ValueError("retries, backoff must be >= 0; timeout, control_timeout, chunk_bytes > 0")
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        md = (("authorization", f"Bearer {token}"),) if token else None
        self._servers = [_Server(a, md) for a in addrs]
        self.timeout, self.control_timeout = timeout, control_timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.balance, self.cooldown, self.chunk_bytes, self.split = balance, cooldown, chunk_bytes, split
        self.limits = limits
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max_workers=max(4, 2 * len(addrs)), thread_name_prefix="rollout-client")

    @property
    def addresses(self) -> list[str]:
        return [s.addr for s in self._servers]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for s in self._servers:
            s.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- server choice and retries -----------------------------------------------------------------

    def _pick(self, exclude: set[str], rows: int) -> _Server:
        with self._lock:
            now = time.monotonic()
            cands = [s for s in self._servers if s.addr not in exclude and s.down_until <= now]
            if not cands:
                cands = [s for s in self._servers if s.addr not in exclude] or list(self._servers)
            if self.balance == "least_loaded":
                start = next(self._rr)
                order = sorted(range(len(cands)), key=lambda i: (cands[i].in_flight, (i - start) % len(cands)))
                s = cands[order[0]]
            else:
                s = cands[next(self._rr) % len(cands)]
            s.in_flight += rows
            return s

    def _release(self, s: _Server, rows: int, error: str | None):
        with self._lock:
            s.in_flight -= rows
            if error is not None:
                s.last_error = error
                s.down_until = time.monotonic() + self.cooldown
            else:
                s.down_until = 0.0

    def _call(self, fn, rows: int = 1, *, generation: bool = False, what: str = "generation"):
        """Runs ``fn(server)`` on a balanced server, retrying others on transport failures.

        ``generation``: a ``DEADLINE_EXCEEDED`` is raised at once (DeadlineExceededError), not retried
        (``what`` names the call in its message).
        """
        tried: list[str] = []
        delay = self.backoff
        for attempt in range(self.retries + 1):
            exclude = set(tried) if len(tried) < len(self._servers) else set()
            s = self._pick(exclude, rows)
            error = None
            try:
                return fn(s)
            except grpc.RpcError as e:
                if generation and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise DeadlineExceededError(
                        f"{s.addr}: {what} did not finish within timeout={self.timeout} s; the server "
                        "cancels it and it is not retried (a retry would redo the whole request): raise "
                        "RolloutClient(timeout=...) or send smaller requests") from None
                if e.code() not in _RETRYABLE:
                    _raise_for(s.addr, e)
                error = f"{e.code().name}: {e.details()}"
            finally:
                self._release(s, rows, error)
            tried.append(s.addr)
            if attempt < self.retries:
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff)
        raise UnavailableError(self._unavailable_message(tried))

    def _unavailable_message(self, tried: Sequence[str]) -> str:
        parts = [f"{s.addr} ({s.last_error or 'not tried'})" for s in self._servers]
        return (f"no rollout server answered after {len(tried)} attempt(s) with {self.retries} retries: "
                + "; ".join(parts))

    # -- generation --------------------------------------------------------------------------------

    def _slices(self, request: GenerateRequest) -> list[GenerateRequest]:
        P = len(request.prompts)
        k = min(P, len(self._servers)) if self.split else 1
        if k <= 1:
            return [request]
        bounds = [round(i * P / k) for i in range(k + 1)]
        return [GenerateRequest(list(request.prompts[a:b]), request.sampling, request.first_prompt_index + a,
                                request.request_id) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def _fixed_seed(self, request: GenerateRequest) -> GenerateRequest:
        # A request split across servers must share one seed: draw it here when unset.
        if request.sampling.seed is not None:
            return request
        import dataclasses
        import secrets

        return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling,
                                                                         seed=secrets.randbits(32)))

    def _checked_slices(self, request: GenerateRequest) -> list[GenerateRequest]:
        """The request's per-server slices, each checked against ``limits`` (nothing sent yet)."""
        slices = self._slices(request)
        if self.limits is not None:
            for r in slices:
                self.limits.check(r)
        return slices

    def generate(self, request: GenerateRequest) -> list[PromptResult]:
        """All prompt groups of ``request`` in prompt order, each with its weight version.

        Raises:
            InvalidRequestError: a slice over ``limits`` (before sending), or a server refused it.
            DeadlineExceededError: a server did not finish within ``timeout`` (not retried).
            UnavailableError: no server answered.
        """
        request = self._fixed_seed(request)
        slices = self._checked_slices(request)
        futs = [self._pool.submit(self._generate_one, r) for r in slices]
        out: list[PromptResult] = []
        for f in futs:
            out.extend(f.result())
        return sorted(out, key=lambda r: r.prompt_index)

    def _generate_one(self, request: GenerateRequest) -> list[PromptResult]:
        msg = convert.request_to_pb(request)
        rows = len(request.prompts) * request.sampling.n

        def call(s: _Server):
            resp = s.stub.Generate(msg, timeout=self.timeout, metadata=s.md)
            return [convert.result_from_pb(r) for r in resp.results]

        return self._call(call, rows, generation=True)

    def generate_stream(self, request: GenerateRequest) -> Iterator[PromptResult]:
        """Yields prompt groups as servers finish them (any order).

        Each slice of the request streams from one server; a slice whose server fails before
        sending anything is retried on another server, one that fails midway raises.
        """
        request = self._fixed_seed(request)
        import queue

        q: queue.Queue = queue.Queue()
        slices = self._checked_slices(request)
        end = object()

        def run(r: GenerateRequest):
            msg = convert.request_to_pb(r)

            def call(s: _Server):
                sent = 0
                try:
                    for item in s.stub.GenerateStream(msg, timeout=self.timeout, metadata=s.md):
                        sent += 1
                        q.put(convert.result_from_pb(item))
                except grpc.RpcError as e:
                    if sent == 0:
                        raise  # nothing delivered yet: another server may retry the slice
                    raise RolloutError(f"{s.addr}: stream broke after {sent} prompt group(s): "
                                       f"{e.code().name}: {e.details()}") from None

            try:
                self._call(call, len(r.prompts) * r.sampling.n, generation=True)
                q.put(end)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(e)

        for r in slices:
            self._pool.submit(run, r)
        finished = 0
        while finished < len(slices):
            item = q.get()
            if item is end:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    # -- reward models -----------------------------------------------------------------------------

    def score(self, model: str, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Scores of (prompt, response) text pairs by the servers' reward model ``model`` (``Score`` RPC).

        The pairs are split into contiguous slices across servers like a generation request (every
        server must serve ``model`` as the same reward model: ``r1jax serve --reward-model NAME=DIR``),
        each slice checked against ``limits.max_request_rows`` before sending. No pair: no call.

        Args:
          model: a reward-model name the servers were started with.
          prompts, responses: raw texts, as many of each (the reward model applies its template).

        Returns:
          [len(prompts)] float32, in pair order.

        Raises:
          InvalidRequestError: unequal lengths or a slice over ``limits`` (before sending), or a server
            refused the request (unknown model, too many tokens).
          DeadlineExceededError: a server did not finish within ``timeout`` (not retried).
          UnavailableError: no server answered.
        """
        prompts, responses = list(prompts), list(responses)
        n = len(prompts)
        if len(responses) != n:
            raise InvalidRequestError(f"responses: {len(responses)} responses for {n} prompts; "
                                      "give one response per prompt")
        if n == 0:
            return np.zeros((0,), np.float32)
        k = min(n, len(self._servers)) if self.split else 1
        bounds = [round(i * n / k) for i in range(k + 1)]
        slices = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if self.limits is not None:
            for a, b in slices:
                self.limits.check_score(b - a)

        def one(a: int, b: int) -> np.ndarray:
            msg = pb.ScoreRequest(model=model, prompts=prompts[a:b], responses=responses[a:b])

            def call(s: _Server):
                resp = s.stub.Score(msg, timeout=self.timeout, metadata=s.md)
                return np.asarray(resp.scores, np.float32)

            out = self._call(call, b - a, generation=True, what="scoring")
            if out.shape != (b - a,):
                raise RolloutError(f"Score returned {out.size} scores for {b - a} pairs")
            return out

        futs = [self._pool.submit(one, a, b) for a, b in slices]
        return np.concatenate([f.result() for f in futs])

    # -- status ------------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        """Info of the first server that answers."""
        return self._call(lambda s: convert.info_from_pb(
            s.stub.Info(pb.InfoRequest(), timeout=self.control_timeout, metadata=s.md)))

    def health(self) -> dict[str, dict[str, Any] | None]:
        """``{address: {"serving", "weight_version", "active_requests", "queued_rows"} | None}``."""
        def one(s: _Server):
            try:
                h = s.stub.Health(pb.HealthRequest(), timeout=self.control_timeout, metadata=s.md)
            except grpc.RpcError:
                return None
            return {"serving": h.serving, "weight_version": h.weight_version,
                    "active_requests": h.active_requests, "queued_rows": h.queued_rows}

        return dict(zip(self.addresses, self._pool.map(one, self._servers)))

    # -- weights -----------------------------------------------------------------------------------

    def _on_all(self, fn) -> list[Any]:
        """Runs ``fn(server)`` on every server in parallel; raises naming every server that failed."""
        futs = {s.addr: self._pool.submit(fn, s) for s in self._servers}
        out, errors, kinds = [], [], set()
        for addr, f in futs.items():
            try:
                out.append(f.result())
            except grpc.RpcError as e:
                errors.append(f"{addr} ({e.code().name}: {e.details()})")
                kinds.add(UnavailableError)
            except Exception as e:  # noqa: BLE001
                msg = str(e) if str(e).startswith(addr) else f"{addr}: {e}"
                errors.append(f"{msg.replace(addr + ': ', addr + ' (', 1)} [{type(e).__name__}])")
                kinds.add(type(e) if isinstance(e, RolloutError) else RolloutError)
        if errors:
            ok = [a for a in futs if not any(err.startswith(a + " ") for err in errors)]
            # The most specific error type that covers every failure (e.g. all stale versions).
            kind = kinds.pop() if len(kinds) == 1 else RolloutError
            raise kind(f"weight update failed on {len(errors)} of {len(futs)} server(s): "
                       + "; ".join(errors) + (f"; succeeded on {ok}" if ok else ""))
        return out

    def update_weights(self, weights: Mapping[str, Any] | Any, version: int, *,
                       transport: str = "grpc") -> int:
        """Pushes weights to every server over grpc chunks: Begin -> PushWeights -> Commit.

        Args:
            weights: a parameter pytree (nested dicts of arrays) or a flat ``{name: array}``.
            version: the new version (> every server's live version).
            transport: only ``"grpc"`` here; see :meth:`update_weights_from_dir` and
                :meth:`begin_nccl_update`.
        Returns:
            The new version.
        Raises:
            RolloutError (or a subclass): naming each server that failed; the others committed.
        """
        if transport != "grpc":
            raise ValueError(f"transport: update_weights pushes grpc chunks; got {transport!r} (use "
                             "update_weights_from_dir for safetensors, begin_nccl_update for NCCL)")
        host = self._host_tensors(weights)

        def push(s: _Server):
            self._stage(s, host, version)
            try:
                return self._commit(s, version, "")
            except BaseException:
                self._abort_quietly(s, version)
                raise

        self._on_all(lambda s: self._wrap(s, push))
        return version

    def stage_weights(self, weights: Mapping[str, Any] | Any, version: int) -> None:
        """The first half of :meth:`update_weights`: every server receives ``version`` over grpc
        chunks and keeps serving its live weights until :meth:`commit` (or :meth:`abort`).

        A trainer stages the next policy while the servers still sample with the last one, so that
        making it live costs only the commit. Raises like :meth:`update_weights`; a server that
        failed is left with no update in progress.
        """
        host = self._host_tensors(weights)
        self._on_all(lambda s: self._wrap(s, lambda s: self._stage(s, host, version)))

    def abort(self, version: int) -> None:
        """Drops the update of ``version`` in progress on every server (errors ignored: a server that
        has none, or cannot be reached, keeps its live weights either way)."""
        for s in self._servers:
            self._abort_quietly(s, version)

    @staticmethod
    def _host_tensors(weights: Mapping[str, Any] | Any) -> dict[str, np.ndarray]:
        flat = flatten_params(weights) if any(isinstance(v, (Mapping, list, tuple)) for v in weights.values()) \
            else dict(weights)
        return {n: np.asarray(a) for n, a in flat.items()}  # one device->host copy for all servers

    def _stage(self, s: _Server, host: Mapping[str, np.ndarray], version: int) -> None:
        self._begin(s, version, pb.GRPC_CHUNKS)
        try:
            chunks = (convert.chunk_to_pb(c) for n, a in host.items()
                      for c in iter_chunks(n, a, version, self.chunk_bytes))
            s.stub.PushWeights(chunks, timeout=self.timeout, metadata=s.md)
        except BaseException:
            self._abort_quietly(s, version)
            raise

    def update_weights_from_dir(self, path: str, version: int) -> int:
        """Every server loads the Hugging Face safetensors directory ``path`` (a shared path)."""
        def load(s: _Server):
            self._begin(s, version, pb.SAFETENSORS_DIR)
            try:
                return self._commit(s, version, str(path))
            except BaseException:
                self._abort_quietly(s, version)
                raise

        self._on_all(lambda s: self._wrap(s, load))
        return version

    def begin_nccl_update(self, version: int, nccl: NcclInit, tensors: Sequence[TensorSpec]) -> None:
        """NCCL transport (vLLM engine), control half: every server starts receiving ``tensors``.

        The trainer then broadcasts the tensors over the NCCL group (rank 0) with vLLM's
        ``NCCLWeightTransferEngine.trainer_send_weights`` and calls :meth:`commit` on every server.
        """
        def begin(s: _Server):
            s.stub.BeginWeightUpdate(pb.BeginWeightUpdateRequest(
                version=version, transport=pb.NCCL, nccl=convert.nccl_to_pb(nccl),
                tensors=[convert.spec_to_pb(t) for t in tensors]), timeout=self.control_timeout, metadata=s.md)

        self._on_all(lambda s: self._wrap(s, begin))

    def commit(self, version: int) -> int:
        """Commits ``version`` on every server (after an NCCL broadcast or :meth:`stage_weights`)."""
        self._on_all(lambda s: self._wrap(s, lambda s: self._commit(s, version, "")))
        return version

    def _wrap(self, s: _Server, fn):
        try:
            return fn(s)
        except grpc.RpcError as e:
            if e.code() in _RETRYABLE:
                raise
            _raise_for(s.addr, e)

    def _begin(self, s: _Server, version: int, transport) -> None:
        s.stub.BeginWeightUpdate(pb.BeginWeightUpdateRequest(version=version, transport=transport),
                                 timeout=self.control_timeout, metadata=s.md)

    def _commit(self, s: _Server, version: int, path: str) -> int:
        return s.stub.CommitWeightUpdate(pb.CommitWeightUpdateRequest(version=version, path=path),
                                         timeout=self.timeout, metadata=s.md).weight_version

    def _abort_quietly(self, s: _Server, version: int) -> None:
        try:
            s.stub.AbortWeightUpdate(pb.AbortWeightUpdateRequest(version=version),
                                     timeout=self.control_timeout, metadata=s.md)
        except grpc.RpcError:
            pass

