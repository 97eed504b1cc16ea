"""r1jax.rollout: the rollout service (rollout.proto, gRPC server, pluggable engines, client).

Public API (imported lazily, so that ``r1jax.rollout.server`` / ``vllm_engine`` never pull in JAX)::

    GenerateRequest, PromptResult, EngineInfo, TensorSpec, WeightChunk, NcclInit    (types)
    SamplingParams, Sample                                                          (r1jax.sampling.params)
    Engine, make_engine                                                             (engine)
    JaxEngine                                                                       (jax_engine; imports JAX)
    VLLMEngine                                                                      (vllm_engine; needs vLLM)
    RolloutClient                                                                   (client)
    make_server                                                                     (server)
    ServedRewardModel, load_served_reward_models      (reward_models; the Score RPC; imports JAX on load)
    RolloutError, InvalidRequestError, PreconditionError, UnavailableError          (errors)

Regenerating ``rollout_pb2.py`` / ``rollout_pb2_grpc.py`` after editing ``rollout.proto``
(from the repository root, so the generated imports resolve inside this package)::

    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. r1jax/rollout/rollout.proto
"""

_HOME = {
    "GenerateRequest": "types", "PromptResult": "types", "EngineInfo": "types", "TensorSpec": "types",
    "WeightChunk": "types", "NcclInit": "types", "RolloutError": "types", "InvalidRequestError": "types",
    "PreconditionError": "types", "UnavailableError": "types", "SamplingParams": "types", "Sample": "types",
    "Engine": "engine", "ResultStream": "engine", "make_engine": "engine", "validate_request": "engine",
    "JaxEngine": "jax_engine", "VLLMEngine": "vllm_engine", "RolloutClient": "client",
    "make_server": "server", "flatten_params": "weights", "ServedRewardModel": "reward_models",
    "load_served_reward_models": "reward_models",
}

__all__ = sorted(_HOME)


def __getattr__(name):
    mod = _HOME.get(name)
    if mod is None:
        raise AttributeError(f"module 'r1jax.rollout' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"r1jax.rollout.{mod}"), name)
