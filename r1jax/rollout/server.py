"""The gRPC rollout server: a thin translation layer from ``rollout.proto`` to an :class:`Engine`.

No JAX here (the vLLM engine's process imports this module). Errors map to status codes:
:class:`~r1jax.rollout.types.InvalidRequestError` -> ``INVALID_ARGUMENT``,
:class:`~r1jax.rollout.types.PreconditionError` -> ``FAILED_PRECONDITION``,
:class:`~r1jax.rollout.types.ResourceExhaustedError` -> ``RESOURCE_EXHAUSTED``, anything else ->
``INTERNAL``; the message names the field / prompt / tensor at fault and the server keeps serving.

Limits: every Generate / GenerateStream request is checked against the server's
:class:`~r1jax.rollout.types.RequestLimits` before any work (``max_n``, ``max_request_rows``,
``max_request_tokens`` -> ``INVALID_ARGUMENT``), then admitted only if the rows of the requests
admitted and not yet finished stay within ``max_queued_rows`` (else ``RESOURCE_EXHAUSTED``).
A ``Score`` request's pairs are rows too: an unknown model, unequal prompts / responses or no pair
-> ``INVALID_ARGUMENT``; more pairs than ``max_request_rows`` or more tokens (the reward model's
template applied, summed) than ``max_request_tokens`` -> ``INVALID_ARGUMENT``; a full queue ->
``RESOURCE_EXHAUSTED``.

Cancellation: when a call ends early (the client went away, cancelled, or its deadline passed),
gRPC runs the call's termination callback, which closes the engine's result stream; the engine
then drops the request's groups that have not started and stops its running batch at the next
decode chunk if nothing else in it is wanted. Unary and streaming calls both do this.

Security: the server binds loopback by default. Binding any other address requires
``allow_remote=True`` AND a shared token, which an interceptor checks on every call (metadata
``authorization: Bearer <token>``).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import threading
from concurrent import futures
from typing import Any, Iterator, Mapping

import grpc

from r1jax.rollout import convert
from r1jax.rollout import rollout_pb2 as pb
from r1jax.rollout import rollout_pb2_grpc as pb_grpc
from r1jax.rollout.engine import Engine, ResultStream
from r1jax.rollout.types import (GenerateRequest, InvalidRequestError, RequestLimits, ResourceExhaustedError,
                                 RolloutError)

__all__ = ["RolloutServicer", "TokenInterceptor", "make_server", "is_loopback", "TOKEN_ENV",
           "MAX_MESSAGE_BYTES"]

log = logging.getLogger(__name__)

TOKEN_ENV = "R1JAX_ROLLOUT_TOKEN"
MAX_MESSAGE_BYTES = 256 << 20
_CODES = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
          "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
          "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
          "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE}


def _abort(context, exc: BaseException):
    if isinstance(exc, RolloutError):
        context.abort(_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
    log.exception("rollout server: internal error")
    context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _close_on_termination(context, stream: ResultStream) -> None:
    """Closes ``stream`` when the call ends: a vanished, cancelled or timed-out client then stops
    the engine's work for it (closing unblocks the handler thread at once)."""
    if not context.add_callback(stream.close):
        stream.close()  # the call had already ended


class RolloutServicer(pb_grpc.RolloutServicer):
    """Implements the ``Rollout`` service of ``rollout.proto`` over an :class:`Engine`.

    Args:
        engine: the engine to serve.
        limits: bounds on the work of one request and on the rows admitted at once (default
            :class:`~r1jax.rollout.types.RequestLimits`).
        reward_models: name -> :class:`~r1jax.rollout.reward_models.ServedRewardModel` (anything with
            ``score(prompts, responses) -> [n]`` and ``tokens(prompts, responses) -> int``), the
            models the ``Score`` RPC accepts.
    """

    def __init__(self, engine: Engine, limits: RequestLimits | None = None,
                 reward_models: Mapping[str, Any] | None = None):
        self.engine = engine
        self.limits = limits if limits is not None else RequestLimits()
        self.reward_models = dict(reward_models or {})
        self._active = 0
        self._admitted_rows = 0
        self._lock = threading.Lock()

    def _admit(self, request: pb.GenerateRequest) -> tuple[GenerateRequest, int]:
        """Converts and checks a request against the limits; reserves its rows. Returns both."""
        req = convert.request_from_pb(request)
        return req, self._reserve(self.limits.check(req))

    def _reserve(self, rows: int) -> int:
        """Admits ``rows`` more rows if the queue holds them (else RESOURCE_EXHAUSTED); returns ``rows``."""
        with self._lock:
            if self._admitted_rows + rows > self.limits.max_queued_rows:
                raise ResourceExhaustedError(
                    f"server busy: {self._admitted_rows} rows admitted and not finished + {rows} requested "
                    f"exceeds the limit max_queued_rows = {self.limits.max_queued_rows}; retry later")
            self._admitted_rows += rows
            self._active += 1
        return rows

    def _release(self, rows: int) -> None:
        with self._lock:
            self._admitted_rows -= rows
            self._active -= 1

    def Generate(self, request, context):
        rows, stream = None, None
        try:
            req, rows = self._admit(request)
            stream = self.engine.generate_stream(req)  # validates
            _close_on_termination(context, stream)
            results = list(stream)
            if not context.is_active():
                return pb.GenerateResponse()  # cancelled: the stream was closed, nobody reads this
            results.sort(key=lambda r: r.prompt_index)
            return pb.GenerateResponse(results=[convert.result_to_pb(r) for r in results])
        except Exception as e:  # noqa: BLE001 - every error becomes a status code
            _abort(context, e)
        finally:
            if stream is not None:
                stream.close()
            if rows is not None:
                self._release(rows)

    def GenerateStream(self, request, context) -> Iterator[pb.PromptResult]:
        rows, stream = None, None
        try:
            try:
                req, rows = self._admit(request)
                stream = self.engine.generate_stream(req)  # validates
            except Exception as e:  # noqa: BLE001
                _abort(context, e)
            _close_on_termination(context, stream)
            while True:
                try:
                    item = next(stream)
                except StopIteration:
                    return
                except Exception as e:  # noqa: BLE001
                    _abort(context, e)
                if not context.is_active():
                    return
                yield convert.result_to_pb(item)
        finally:
            if stream is not None:
                stream.close()
            if rows is not None:
                self._release(rows)

    def BeginWeightUpdate(self, request, context):
        try:
            transport = convert.TRANSPORT_FROM_PB.get(request.transport)
            if transport is None:
                raise InvalidRequestError("transport: unspecified; choose GRPC_CHUNKS, SAFETENSORS_DIR or NCCL")
            nccl = convert.nccl_from_pb(request.nccl) if request.HasField("nccl") else None
            expected = self.engine.begin_weight_update(
                int(request.version), transport, nccl=nccl,
                tensors=tuple(convert.spec_from_pb(s) for s in request.tensors))
            return pb.BeginWeightUpdateResponse(live_version=self.engine.info().weight_version,
                                                expected=[convert.spec_to_pb(s) for s in expected])
        except Exception as e:  # noqa: BLE001
            _abort(context, e)

    def PushWeights(self, request_iterator, context):
        try:
            chunks = nbytes = 0
            complete: list[str] = []
            for msg in request_iterator:
                complete += self.engine.stage_weights(convert.chunk_from_pb(msg))
                chunks += 1
                nbytes += len(msg.data)
            return pb.PushWeightsResponse(chunks=chunks, bytes=nbytes, complete=complete)
        except Exception as e:  # noqa: BLE001
            _abort(context, e)

    def CommitWeightUpdate(self, request, context):
        try:
            v = self.engine.commit_weight_update(int(request.version), path=request.path or None)
            return pb.CommitWeightUpdateResponse(weight_version=v)
        except Exception as e:  # noqa: BLE001
            _abort(context, e)

    def AbortWeightUpdate(self, request, context):
        try:
            self.engine.abort_weight_update(int(request.version) or None)
            return pb.AbortWeightUpdateResponse(live_version=self.engine.info().weight_version)
        except Exception as e:  # noqa: BLE001
            _abort(context, e)

    def Score(self, request, context):
        rows = None
        try:
            model = self.reward_models.get(request.model)
            if model is None:
                have = ", ".join(map(repr, sorted(self.reward_models))) or "none"
                raise InvalidRequestError(f"model: no reward model named {request.model!r} on this server (it has "
                                          f"{have}; start it with r1jax serve --reward-model NAME=DIR)")
            n = len(request.prompts)
            if len(request.responses) != n:
                raise InvalidRequestError(f"responses: {len(request.responses)} responses for {n} prompts; "
                                          "send one response per prompt")
            if n == 0:
                raise InvalidRequestError("prompts: empty request; send at least one (prompt, response) pair")
            rows = self._reserve(self.limits.check_score(n))
            prompts, responses = list(request.prompts), list(request.responses)
            self.limits.check_score_tokens(int(model.tokens(prompts, responses)))
            scores = model.score(prompts, responses)
            return pb.ScoreResponse(scores=[float(x) for x in scores])
        except Exception as e:  # noqa: BLE001
            _abort(context, e)
        finally:
            if rows is not None:
                self._release(rows)

    def Health(self, request, context):
        try:
            h = self.engine.health()
            return pb.HealthResponse(serving=bool(h["serving"]), weight_version=int(h["weight_version"]),
                                     active_requests=max(self._active, int(h.get("active_requests", 0))),
                                     queued_rows=int(h.get("queued_rows", 0)))
        except Exception as e:  # noqa: BLE001
            _abort(context, e)

    def Info(self, request, context):
        try:
            return convert.info_to_pb(dataclasses.replace(self.engine.info(),
                                                          reward_models=tuple(sorted(self.reward_models))))
        except Exception as e:  # noqa: BLE001
            _abort(context, e)


class TokenInterceptor(grpc.ServerInterceptor):
    """Rejects (``UNAUTHENTICATED``) every call without metadata ``authorization: Bearer <token>``."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("TokenInterceptor: empty token")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        md = dict(handler_call_details.invocation_metadata or ())
        got = md.get("authorization", "")
        got = got.encode() if isinstance(got, str) else bytes(got)
        if hmac.compare_digest(got, self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong rollout token (metadata 'authorization: Bearer <token>')")

        def deny_stream(request, context):
            deny(request, context)
            yield  # pragma: no cover - abort raises

        kw = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny, **kw)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
        return grpc.unary_unary_rpc_method_handler(deny, **kw)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (name or IP, brackets allowed) is a loopback address."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                allow_remote: bool = False, max_workers: int = 32,
                limits: RequestLimits | None = None,
                reward_models: Mapping[str, Any] | None = None) -> tuple[grpc.Server, int]:
    """Builds and starts a rollout server.

    Args:
        engine: the engine to serve.
        host: address to bind; loopback unless ``allow_remote`` and ``token`` are given.
        port: port to bind; ``0`` picks a free ephemeral port.
        token: shared secret required in every call's metadata (``authorization: Bearer <token>``).
        allow_remote: must be True to bind a non-loopback address.
        max_workers: gRPC handler threads (concurrent calls).
        limits: bounds on each Generate request and on the rows admitted at once (default
            :class:`~r1jax.rollout.types.RequestLimits`: ``max_n`` 256, ``max_request_rows`` 16384,
            ``max_request_tokens`` 2**25, ``max_queued_rows`` 65536).
        reward_models: name -> reward model the ``Score`` RPC scores with (see
            :func:`r1jax.rollout.reward_models.load_served_reward_models`; default none).

    Returns:
        ``(server, bound_port)``; stop it with ``server.stop(grace)``.

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote`` and a token.
    """
    if not is_loopback(host):
        if not allow_remote:
            raise ValueError(f"serve: refusing to bind non-loopback address {host!r} without --allow-remote")
        if not token:
            raise ValueError(f"serve: binding non-loopback address {host!r} needs a shared token "
                             f"(--token or ${TOKEN_ENV})")
    interceptors = (TokenInterceptor(token),) if token else ()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rollout-grpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)])
    pb_grpc.add_RolloutServicer_to_server(RolloutServicer(engine, limits, reward_models), server)
    bind = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    bound = server.add_insecure_port(f"{bind}:{port}")
    if bound == 0:
        raise OSError(f"serve: could not bind {bind}:{port}")
    server.start()
    return server, bound
