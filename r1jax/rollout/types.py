"""Request / response dataclasses of the rollout service, shared by every engine and transport.

The same types travel in-process (``rollout.mode: embedded``: the trainer calls an
:class:`~r1jax.rollout.engine.Engine` directly) and over gRPC (:class:`~r1jax.rollout.client.RolloutClient`
converts them to and from ``rollout.proto``). No JAX here: the vLLM server imports this module.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np

from r1jax.sampling.params import Sample, SamplingParams

__all__ = [
    "GenerateRequest", "PromptResult", "EngineInfo", "TensorSpec", "WeightChunk", "NcclInit",
    "Transport", "TRANSPORTS", "RolloutError", "InvalidRequestError", "PreconditionError",
    "UnavailableError", "ResourceExhaustedError", "DeadlineExceededError", "RequestLimits",
    "MAX_WEIGHT_VERSION", "MAX_VERSION_STEP", "Sample", "SamplingParams",
]

Transport = Literal["grpc", "safetensors", "nccl"]
TRANSPORTS: tuple[str, ...] = ("grpc", "safetensors", "nccl")


class RolloutError(Exception):
    """Base class of rollout-service errors; ``code`` is the gRPC status code name it maps to."""

    code = "INTERNAL"


class InvalidRequestError(RolloutError, ValueError):
    """The request itself is wrong (bad prompt, bad sampling parameter, bad weight chunk).

    Maps to gRPC ``INVALID_ARGUMENT``; the message names the field, prompt, token or tensor.
    """

    code = "INVALID_ARGUMENT"


class PreconditionError(RolloutError, RuntimeError):
    """The request is well formed but the server's state does not allow it (no update begun,
    stale version, commit with missing tensors). Maps to gRPC ``FAILED_PRECONDITION``."""

    code = "FAILED_PRECONDITION"


class UnavailableError(RolloutError, ConnectionError):
    """No rollout server answered (after retries); the message names every address tried."""

    code = "UNAVAILABLE"


class ResourceExhaustedError(RolloutError):
    """The server is busy: admitting the request would exceed its queue (``max_queued_rows``).
    Maps to gRPC ``RESOURCE_EXHAUSTED``; the same request may succeed later."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(RolloutError, TimeoutError):
    """A generation call did not finish within the client's timeout (``DEADLINE_EXCEEDED``).

    The server cancels the abandoned work; the client does not retry it (a retry would redo the
    whole request and could queue a second copy behind the first)."""

    code = "DEADLINE_EXCEEDED"


# Weight versions are integers in [0, MAX_WEIGHT_VERSION] (they fit a signed 64-bit int), and a new
# version may be at most MAX_VERSION_STEP ahead of the live one: versions count updates (the
# trainer uses its step), and a huge jump (e.g. 2**64 - 1) would leave no version for later updates.
MAX_WEIGHT_VERSION = 2**63 - 1
MAX_VERSION_STEP = 2**32


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds on the work one Generate request may ask of a rollout server.

    A row is one sample to generate (a prompt x one of its ``n`` samples). The server checks every
    request against these before doing any work (``INVALID_ARGUMENT`` for a request over a
    per-request limit, ``RESOURCE_EXHAUSTED`` when its queue is full); the client checks the
    per-request limits before sending.

    Attributes:
        max_n: samples per prompt (``sampling.n``).
        max_request_rows: rows per request (prompts x ``n``).
        max_request_tokens: tokens per request, prompt tokens + ``max_new_tokens`` summed over
            rows (what the request may hold in the KV cache and send back).
        max_queued_rows: rows of the requests a server has admitted and not finished yet
            (running or waiting); at least ``max_request_rows``.
    """

    max_n: int = 256
    max_request_rows: int = 16384
    max_request_tokens: int = 1 << 25
    max_queued_rows: int = 65536

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"limits.{f.name}: must be an int >= 1, got {v!r}")
        if self.max_queued_rows < self.max_request_rows:
            raise ValueError(f"limits.max_queued_rows ({self.max_queued_rows}) must be >= "
                             f"limits.max_request_rows ({self.max_request_rows}): a request that may be "
                             "sent must fit the queue")

    def check(self, request: "GenerateRequest") -> int:
        """Checks ``request`` against the per-request limits (cheap: no prompt is read).

        Returns:
            The request's rows (prompts x ``n``).
        Raises:
            InvalidRequestError: naming the field, the request's number and the limit.
        """
        s = request.sampling
        n, prompts = int(s.n), len(request.prompts)
        if n > self.max_n:
            raise InvalidRequestError(f"sampling.n: {n} exceeds the limit max_n = {self.max_n}")
        rows = prompts * n
        if rows > self.max_request_rows:
            raise InvalidRequestError(f"prompts x sampling.n: {prompts} x {n} = {rows} rows exceeds the limit "
                                      f"max_request_rows = {self.max_request_rows}")
        prompt_tokens = sum(len(p) for p in request.prompts)
        tokens = n * (prompt_tokens + prompts * int(s.max_new_tokens))
        if tokens > self.max_request_tokens:
            raise InvalidRequestError(
                f"request tokens: n {n} x ({prompt_tokens} prompt tokens + {prompts} prompts x max_new_tokens "
                f"{s.max_new_tokens}) = {tokens} exceeds the limit max_request_tokens = {self.max_request_tokens}")
        return rows

    def check_score(self, pairs: int) -> int:
        """Checks a ``Score`` request's pair count (a pair is one row) against ``max_request_rows``.

        Returns:
            The request's rows (its pairs).
        Raises:
            InvalidRequestError: naming the field, the request's number and the limit.
        """
        if pairs > self.max_request_rows:
            raise InvalidRequestError(f"prompts: {pairs} (prompt, response) pairs exceeds the limit "
                                      f"max_request_rows = {self.max_request_rows}")
        return pairs

    def check_score_tokens(self, tokens: int) -> None:
        """Checks the tokens a reward model would read for a ``Score`` request (its template applied,
        summed over pairs) against ``max_request_tokens``; raises InvalidRequestError naming both."""
        if tokens > self.max_request_tokens:
            raise InvalidRequestError(f"prompts + responses: {tokens} tokens (the reward model's template applied, "
                                      f"summed over pairs) exceeds the limit max_request_tokens = "
                                      f"{self.max_request_tokens}")


@dataclasses.dataclass(frozen=True, eq=False)
class GenerateRequest:
    """Prompts (token ids; the trainer owns the tokenizer) and how to sample them.

    Attributes:
        prompts: one 1-D int sequence per prompt, unpadded.
        sampling: the sampling parameters (``n`` samples per prompt).
        first_prompt_index: global index of ``prompts[0]``. Random streams are derived from
            ``(sampling.seed, first_prompt_index + i, sample j)``, so splitting a request across
            servers (or batches) gives the same samples as one server would.
        request_id: free-form, for logs.
    """

    prompts: Sequence[Sequence[int]]
    sampling: SamplingParams = SamplingParams()
    first_prompt_index: int = 0
    request_id: str = ""

    def __post_init__(self):
        if not isinstance(self.sampling, SamplingParams):
            raise TypeError(f"GenerateRequest.sampling: expected SamplingParams, got {type(self.sampling).__name__}")
        if isinstance(self.first_prompt_index, bool) or not isinstance(self.first_prompt_index, (int, np.integer)) \
                or self.first_prompt_index < 0:
            raise InvalidRequestError(
                f"GenerateRequest.first_prompt_index: must be an int >= 0, got {self.first_prompt_index!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class PromptResult:
    """The ``n`` samples of one prompt, all produced by the same weights.

    Attributes:
        prompt_index: global index of the prompt (``first_prompt_index`` + position).
        samples: ``n`` :class:`~r1jax.sampling.params.Sample` objects.
        weight_version: the version of the weights that produced every sample here.
    """

    prompt_index: int
    samples: tuple[Sample, ...]
    weight_version: int

    def __post_init__(self):
        object.__setattr__(self, "samples", tuple(self.samples))


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype (numpy-style name, e.g. ``"float32"``, ``"bfloat16"``) of a weight."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_itemsize(self.dtype)


@dataclasses.dataclass(frozen=True)
class WeightChunk:
    """A slice of one tensor's C-order bytes (grpc transport).

    Attributes:
        version: the weight version being staged (must match the begun update).
        name, shape, dtype: the whole tensor's identity; checked against the expected spec.
        offset: byte offset of ``data`` within the tensor.
        data: the bytes.
    """

    version: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class NcclInit:
    """Rendezvous of vLLM's NCCL weight transfer (trainer is rank 0)."""

    master_address: str
    master_port: int
    world_size: int
    rank_offset: int = 1
    packed: bool = False


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """What a client needs to know about an engine.

    Attributes:
        model_name: a display name (the model directory, usually).
        engine: ``"jax"`` or ``"vllm"``.
        vocab_size: token ids must lie in ``[0, vocab_size)``.
        max_length: prompt length + ``max_new_tokens`` must not exceed it.
        weight_version: the live weight version.
        transports: the weight transports this engine accepts.
        tensors: the tensors a grpc weight push must cover (empty if the engine cannot list them).
        max_batch_rows: rows (prompts x n) the engine runs in one batch.
        reward_models: the reward-model names the server's ``Score`` RPC accepts (set by the server,
            not the engine: ``r1jax serve --reward-model NAME=DIR``).
    """

    model_name: str
    engine: str
    vocab_size: int
    max_length: int
    weight_version: int
    transports: tuple[str, ...]
    tensors: tuple[TensorSpec, ...] = ()
    max_batch_rows: int = 0
    reward_models: tuple[str, ...] = ()


# Byte sizes of the dtype names used on the wire; numpy lacks bfloat16 without ml_dtypes, and the
# vLLM process must not need ml_dtypes, so sizes are tabulated here.
_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
}


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of a wire dtype name; raises InvalidRequestError for unknown names."""
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; known: {sorted(_ITEMSIZE)}") from None
