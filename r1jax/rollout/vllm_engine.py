"""The ``vllm`` engine: vLLM's ``AsyncLLM`` behind the :class:`~r1jax.rollout.engine.Engine` interface.

THIS MODULE MUST NOT IMPORT JAX (a test imports it in a fresh interpreter and checks): vLLM pins
its own torch / transformers and runs in its own environment and process; only this module,
:mod:`r1jax.rollout.server`, :mod:`~r1jax.rollout.engine`, :mod:`~r1jax.rollout.types`,
:mod:`~r1jax.rollout.weights` and :mod:`r1jax.sampling.params` are needed there, and ``vllm``
itself is imported only when an engine is built.

Status: written against vLLM's documented API (``vllm.v1.engine.async_llm.AsyncLLM``:
``from_engine_args``, ``generate``, ``pause_generation`` / ``resume_generation``,
``collective_rpc``, and the RL weight-transfer API ``init_weight_transfer_engine`` /
``start_weight_update`` / ``update_weights`` / ``finish_weight_update`` with
``WeightTransferConfig(backend="nccl")``, vLLM >= 0.17). It has NOT been run against a real vLLM
here (no GPU, and vLLM cannot share this project's environment). What is tested on CPU is the
conversion of requests and results (:func:`vllm_sampling_kwargs`, :func:`derive_seed`,
:func:`sample_from_completion`, :func:`nccl_init_info`, :func:`nccl_update_info`) and the grpc
staging -> safetensors directory path (:func:`write_safetensors_dir`).

Running it on a GPU node (its own venv)::

    python -m venv /opt/vllm-env && /opt/vllm-env/bin/pip install "vllm>=0.17" grpcio protobuf safetensors
    /opt/vllm-env/bin/pip install --no-deps -e /path/to/r1jax     # r1jax's code, not its JAX deps
    /opt/vllm-env/bin/python -m r1jax.rollout.cli --engine vllm --model /shared/ckpt/step0 \
        --host 0.0.0.0 --port 50051 --allow-remote --token "$R1JAX_ROLLOUT_TOKEN"
    # (``python -m r1jax.rollout.cli`` avoids r1jax.cli, which imports the JAX trainer.)

Semantics and their limits:

* Version honesty: generation and weight swaps are serialised by a readers/writer lease in this
  process: every request records the live version when it starts; a weight swap waits for the
  running requests to finish and holds new ones until it is committed. So a group never mixes
  versions, at the cost of draining before each swap (what synchronous RL does anyway).
* Log-probs: the engine is started with ``logprobs_mode="processed_logprobs"`` and requests
  ``logprobs=0`` (only the sampled token's). vLLM applies temperature before computing them;
  whether its processed log-probs also include top-p / top-k truncation depends on the vLLM
  version, so they equal r1jax's trainer log-probs exactly only with ``top_p=1, top_k=0`` (the
  R1 recipe). ``ignore_eos=True``: only ``stop_token_ids`` end a sample, as in the JAX sampler.
* Seeds: with a seed, each sample is its own vLLM request (``n=1``) seeded by
  :func:`derive_seed` ``(seed, prompt index, sample index)``, so splitting a request across
  servers does not change the samples; the random streams differ from the JAX engine's.
* Weights: ``nccl`` uses vLLM's native NCCL transfer (the trainer, rank 0, broadcasts with
  ``NCCLWeightTransferEngine.trainer_send_weights``); ``safetensors`` and ``grpc`` reload
  Hugging Face-named tensors from a directory (grpc chunks are first written to a temporary
  safetensors directory) with the worker's ``update_config`` + ``reload_weights``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from typing import Any, Iterable, Mapping, Sequence

from r1jax.rollout.engine import Engine, ResultStream, VersionGate, validate_request
from r1jax.rollout.types import (EngineInfo, GenerateRequest, InvalidRequestError, NcclInit,
                                 PreconditionError, PromptResult, RolloutError, TensorSpec, WeightChunk)
from r1jax.rollout.weights import WeightStager
from r1jax.sampling.params import Sample, SamplingParams

__all__ = ["VLLMEngine", "vllm_sampling_kwargs", "derive_seed", "sample_from_completion",
           "nccl_init_info", "nccl_update_info", "write_safetensors_dir"]

_MASK64 = (1 << 64) - 1


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
    """``init_info`` of vLLM's ``WeightTransferInitRequest`` for the NCCL backend."""
    if n.world_size < 2 or not 0 <= n.master_port < 65536 or not n.master_address or n.rank_offset < 1:
        raise InvalidRequestError(f"nccl: need master_address, a port in [0, 65536), world_size >= 2 and "
                                  f"rank_offset >= 1 (the trainer is rank 0); got {n}")
    return {"master_address": n.master_address, "master_port": int(n.master_port),
            "rank_offset": int(n.rank_offset), "world_size": int(n.world_size)}


def nccl_update_info(tensors: Sequence[TensorSpec], packed: bool = False) -> dict[str, Any]:
    """``update_info`` of vLLM's ``WeightTransferUpdateRequest``: names, torch dtype names, shapes."""
    if not tensors:
        raise InvalidRequestError("tensors: the NCCL transport needs the list of tensors the trainer will "
                                  "broadcast (name, shape, dtype), in broadcast order")
    return {"names": [t.name for t in tensors], "dtype_names": [t.dtype for t in tensors],
            "shapes": [list(t.shape) for t in tensors], "packed": bool(packed)}


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


class VLLMEngine(Engine):
    """vLLM ``AsyncLLM`` served through the r1jax :class:`~r1jax.rollout.engine.Engine` interface.

    Args:
        llm: a started ``AsyncLLM`` (built on ``loop``).
        loop: the asyncio event loop ``llm`` runs on (a background thread drives it).
        model_name: display name / model path (config files are copied from it for grpc pushes).
        vocab_size: vocabulary size.
        max_length: ``max_model_len``.
        weight_version: version of the initial weights.
        has_weight_transfer: whether the engine was built with a ``WeightTransferConfig`` (NCCL).
    """

    TRANSPORTS = ("grpc", "safetensors", "nccl")

    def __init__(self, llm: Any, loop: asyncio.AbstractEventLoop, *, model_name: str, vocab_size: int,
                 max_length: int, weight_version: int = 0, has_weight_transfer: bool = True):
        self.llm, self.loop = llm, loop
        self.model_name, self.vocab_size, self.max_length = model_name, int(vocab_size), int(max_length)
        self.has_weight_transfer = has_weight_transfer
        self._version = int(weight_version)
        self._gate = VersionGate(weight_version)
        self._lease = _Lease()
        self._stager: WeightStager | None = None
        self._nccl_future = None
        self._nccl_ready: tuple | None = None
        self._active = 0
        self._lock = threading.Lock()

    @classmethod
    def from_model(cls, model: str, *, tensor_parallel_size: int = 1, dtype: str = "auto",
                   gpu_memory_utilization: float = 0.9, max_length: int | None = None,
                   weight_transfer: str | None = "nccl", weight_version: int = 0, **engine_kwargs) -> "VLLMEngine":
        """Starts ``AsyncLLM`` on a private event-loop thread (needs vLLM and a CUDA GPU)."""
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise RuntimeError("the vllm engine needs vLLM installed (its own environment, a CUDA GPU); "
                               f"import failed: {e}") from None
        kw = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                  gpu_memory_utilization=gpu_memory_utilization, logprobs_mode="processed_logprobs",
                  **engine_kwargs)
        if max_length is not None:
            kw["max_model_len"] = int(max_length)
        if weight_transfer:
            from vllm.config import WeightTransferConfig

            kw["weight_transfer_config"] = WeightTransferConfig(backend=weight_transfer)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True, name="vllm-loop").start()

        async def build():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kw))

        llm = asyncio.run_coroutine_threadsafe(build(), loop).result()
        mc = llm.model_config
        return cls(llm, loop, model_name=model, vocab_size=mc.get_vocab_size(), max_length=mc.max_model_len,
                   weight_version=weight_version, has_weight_transfer=bool(weight_transfer))

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- info --------------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        transports = self.TRANSPORTS if self.has_weight_transfer else ("grpc", "safetensors")
        return EngineInfo(model_name=self.model_name, engine="vllm", vocab_size=self.vocab_size,
                          max_length=self.max_length, weight_version=self._version, transports=transports)

    def health(self) -> dict[str, Any]:
        errored = bool(getattr(self.llm, "errored", False))
        return {"serving": not errored, "weight_version": self._version, "active_requests": self._active,
                "queued_rows": 0}

    # -- generation --------------------------------------------------------------------------------

    def generate_stream(self, request: GenerateRequest) -> ResultStream:
        prompts = validate_request(request, self.info())
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
            self._gate.begin(version, transport, self.info().transports)
            self._stager = WeightStager(version, None) if transport == "grpc" else None
            if transport == "nccl":
                if nccl is None:
                    raise InvalidRequestError("nccl: the NCCL transport needs master_address/port/world_size")
                init, update = nccl_init_info(nccl), nccl_update_info(tensors, nccl.packed)
                self._nccl_future = asyncio.run_coroutine_threadsafe(self._nccl_receive(init, update), self.loop)
            return ()

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
            if hasattr(self.llm, "start_weight_update"):
                await self.llm.start_weight_update()
            await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update))
            if hasattr(self.llm, "finish_weight_update"):
                await self.llm.finish_weight_update()
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
            if transport == "grpc":
                raw = self._stager.raw()  # raises PreconditionError naming missing tensors
                tmp = tempfile.mkdtemp(prefix=f"r1jax-weights-v{version}-")
                path = write_safetensors_dir(raw, tmp, copy_from=self.model_name)
            elif not path or not os.path.isdir(path):
                raise InvalidRequestError(f"path: the safetensors transport needs an existing directory, got {path!r}")
            self._lease.acquire_write()
            try:
                self._run(self._reload_from(path))
                self._finish_swap(version)
            except Exception as e:  # noqa: BLE001
                self._lease.release_write()
                raise RolloutError(f"vllm failed to load weights from {path!r}: {type(e).__name__}: {e}") from None
            finally:
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)
            return version

    async def _reload_from(self, path: str):
        await self.llm.collective_rpc("update_config", args=({"model_config": {"model": path}},))
        await self.llm.collective_rpc("reload_weights")
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
        try:
            self.llm.shutdown()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

