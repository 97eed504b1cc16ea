"""Test set-up shared by the whole suite.

Multi-device behaviour is tested on 8 fake CPU devices: the flag must be set before JAX
initialises its backend, so it is set here, at collection time, before any test imports jax.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# The suite's programs are tiny and compiled once each: compile time, not run time, is most of the suite.
# LLVM's optimisation level 0 halves it (measured: 59 s -> 31 s of CPU for two update tests). LLVM keeps
# IEEE semantics at every level when fast-math is off (XLA CPU's default), and matmuls are library calls
# either way. Benchmarks never run under this file.
_opt = "--xla_backend_optimization_level"
if _opt not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {_opt}=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests are tiny: keep the two CI cores for pytest-xdist workers instead of intra-op threads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Many tests compile the same small programs (the same tiny trainer in-process and in `r1jax train`
# subprocesses): JAX's persistent compilation cache, shared by the xdist workers and inherited by
# subprocesses, compiles each once per suite run. It is keyed by the program and the flags, so a hit
# is the same executable.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_root, ".pytest_cache", "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (a minute or more: whole runs in subprocesses, SIGKILL and resume) go first,
    so the xdist workers do not finish the suite with one long test running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order


import pytest  # noqa: E402 - after the environment above, which must be set before anything imports jax


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory):
    """A reward-model directory (as `r1jax rm` saves one): the tiny base's trunk and a random value head.
    Its scores are what they are: tests that use it check the plumbing, not the preferences."""
    import jax

    from r1jax.data.tokenizer import load_tokenizer
    from r1jax.models import init_value_head, load_pretrained
    from r1jax.pipeline.rm import RewardModelInfo, save_reward_model

    base = os.path.join(_root, "r1jax", "assets", "tiny_base")
    params, cfg = load_pretrained(base, param_dtype="float32")
    params = {**params, **init_value_head(cfg, jax.random.PRNGKey(0))}
    return save_reward_model(params, cfg, load_tokenizer(base), tmp_path_factory.mktemp("rm") / "rm",
                             RewardModelInfo(objective="pairwise", max_len=96))
