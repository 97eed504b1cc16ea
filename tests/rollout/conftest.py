"""Tiny model, engines and real loopback gRPC servers for the rollout tests."""

import jax
import numpy as np
import pytest

from r1jax.models import ModelConfig, init_params

CFG = ModelConfig(architecture="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_position_embeddings=64, initializer_range=0.3)
# Every batch pads to 8 rows / 8 prompt slots / 8 new tokens: a couple of compiled shapes in all.
ENGINE_KW = dict(max_batch_rows=8, min_batch_bucket=8, decode_chunk=4)
PROMPTS = [[3, 17, 5], [9, 1, 44, 2, 60, 7], [12], [8, 8, 30, 2]]


@pytest.fixture(scope="session")
def cfg():
    """The tiny architecture (a fixture: test modules must not import a conftest by name)."""
    return CFG


@pytest.fixture(scope="session")
def make_engine(weights):
    """``make_engine(version=0)`` -> a new JaxEngine with the test bucketing (close it after use)."""
    from r1jax.rollout.jax_engine import JaxEngine

    return lambda version=0: JaxEngine(weights[version], CFG, **ENGINE_KW)


@pytest.fixture(scope="session")
def weights():
    """Three weight versions whose greedy outputs differ."""
    init = jax.jit(init_params, static_argnums=0)  # one compile for the three
    return [init(CFG, jax.random.PRNGKey(i)) for i in range(3)]


@pytest.fixture(scope="session")
def reference(weights):
    """``reference(version, prompts, sampling)`` -> list of token lists per prompt, in-process."""
    from r1jax.sampling import Sampler

    sampler = Sampler(CFG, max_batch_rows=8, min_batch_bucket=8)
    cache = {}

    def run(version, prompts, sampling, first_prompt_index=0):
        key = (version, tuple(map(tuple, prompts)), sampling, first_prompt_index)
        if key not in cache:
            out = sampler.generate(weights[version], prompts, sampling, first_prompt_index=first_prompt_index)
            cache[key] = [[s.token_ids.tolist() for s in g] for g in out]
        return cache[key]

    return run


@pytest.fixture
def engine(weights):
    from r1jax.rollout.jax_engine import JaxEngine

    e = JaxEngine(weights[0], CFG, **ENGINE_KW)
    yield e
    e.close()


@pytest.fixture
def served(engine):
    """(engine, "127.0.0.1:port") of a real gRPC server on an ephemeral loopback port."""
    from r1jax.rollout.server import make_server

    server, port = make_server(engine, "127.0.0.1", 0)
    yield engine, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="session")
def tokens():
    """``tokens(results)`` -> per prompt group, the token lists of its samples."""
    return lambda results: [[s.token_ids.tolist() for s in r.samples] for r in results]


@pytest.fixture
def prompts():
    return [np.asarray(p, np.int32) for p in PROMPTS]
