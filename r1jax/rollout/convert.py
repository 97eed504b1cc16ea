"""Conversions between the rollout dataclasses and ``rollout.proto`` messages (no JAX)."""

from __future__ import annotations

import numpy as np

from r1jax.rollout import rollout_pb2 as pb
from r1jax.rollout.types import (EngineInfo, GenerateRequest, InvalidRequestError, NcclInit,
                                 PromptResult, TensorSpec, WeightChunk)
from r1jax.sampling.params import Sample, SamplingParams

_FINISH_TO_PB = {"stop": pb.STOP, "length": pb.LENGTH}
_FINISH_FROM_PB = {pb.STOP: "stop", pb.LENGTH: "length"}
TRANSPORT_TO_PB = {"grpc": pb.GRPC_CHUNKS, "safetensors": pb.SAFETENSORS_DIR, "nccl": pb.NCCL}
TRANSPORT_FROM_PB = {v: k for k, v in TRANSPORT_TO_PB.items()}


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            max_new_tokens=s.max_new_tokens, stop_token_ids=list(s.stop_token_ids), n=s.n)
    if s.seed is not None:
        msg.seed = s.seed
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Raises InvalidRequestError naming the field for out-of-range values (e.g. ``n = 0``)."""
    try:
        return SamplingParams(
            temperature=float(msg.temperature), top_p=float(msg.top_p),
            top_k=int(msg.top_k), max_new_tokens=int(msg.max_new_tokens),
            stop_token_ids=tuple(int(t) for t in msg.stop_token_ids), n=int(msg.n),
            seed=int(msg.seed) if msg.HasField("seed") else None)
    except (ValueError, TypeError) as e:
        raise InvalidRequestError(str(e)) from None


def request_to_pb(r: GenerateRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompts=[pb.Prompt(token_ids=[int(t) for t in p]) for p in r.prompts],
                              sampling=sampling_to_pb(r.sampling), first_prompt_index=r.first_prompt_index,
                              request_id=r.request_id)


def request_from_pb(msg: pb.GenerateRequest) -> GenerateRequest:
    if not msg.HasField("sampling"):
        raise InvalidRequestError("sampling: missing; every GenerateRequest needs sampling parameters")
    return GenerateRequest(prompts=[np.asarray(p.token_ids, dtype=np.int64) for p in msg.prompts],
                           sampling=sampling_from_pb(msg.sampling),
                           first_prompt_index=int(msg.first_prompt_index), request_id=msg.request_id)


def result_to_pb(r: PromptResult) -> pb.PromptResult:
    return pb.PromptResult(
        prompt_index=r.prompt_index, weight_version=r.weight_version,
        samples=[pb.Sample(token_ids=s.token_ids.tolist(), logprobs=s.logprobs.tolist(),
                           finish_reason=_FINISH_TO_PB[s.finish_reason]) for s in r.samples])


def result_from_pb(msg: pb.PromptResult) -> PromptResult:
    return PromptResult(
        prompt_index=int(msg.prompt_index), weight_version=int(msg.weight_version),
        samples=tuple(Sample(np.asarray(s.token_ids, np.int32), np.asarray(s.logprobs, np.float32),
                             _FINISH_FROM_PB[s.finish_reason]) for s in msg.samples))


def spec_to_pb(s: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=s.name, shape=list(s.shape), dtype=s.dtype)


def spec_from_pb(msg: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(msg.name, tuple(int(d) for d in msg.shape), msg.dtype)


def chunk_to_pb(c: WeightChunk) -> pb.WeightChunk:
    return pb.WeightChunk(version=c.version, name=c.name, shape=list(c.shape), dtype=c.dtype,
                          offset=c.offset, data=c.data)


def chunk_from_pb(msg: pb.WeightChunk) -> WeightChunk:
    return WeightChunk(int(msg.version), msg.name, tuple(int(d) for d in msg.shape), msg.dtype,
                       int(msg.offset), msg.data)


def nccl_to_pb(n: NcclInit) -> pb.NcclInit:
    return pb.NcclInit(master_address=n.master_address, master_port=n.master_port, world_size=n.world_size,
                       rank_offset=n.rank_offset, packed=n.packed)


def nccl_from_pb(msg: pb.NcclInit) -> NcclInit:
    return NcclInit(msg.master_address, int(msg.master_port), int(msg.world_size), int(msg.rank_offset),
                    bool(msg.packed))


def info_to_pb(i: EngineInfo) -> pb.InfoResponse:
    return pb.InfoResponse(model_name=i.model_name, engine=i.engine, vocab_size=i.vocab_size,
                           max_length=i.max_length, weight_version=i.weight_version,
                           transports=[TRANSPORT_TO_PB[t] for t in i.transports],
                           tensors=[spec_to_pb(s) for s in i.tensors], max_batch_rows=i.max_batch_rows,
                           reward_models=list(i.reward_models))


def info_from_pb(msg: pb.InfoResponse) -> EngineInfo:
    return EngineInfo(model_name=msg.model_name, engine=msg.engine, vocab_size=int(msg.vocab_size),
                      max_length=int(msg.max_length), weight_version=int(msg.weight_version),
                      transports=tuple(TRANSPORT_FROM_PB[t] for t in msg.transports),
                      tensors=tuple(spec_from_pb(s) for s in msg.tensors),
                      max_batch_rows=int(msg.max_batch_rows), reward_models=tuple(msg.reward_models))
