"""Test set-up shared by the whole suite.

Multi-device behaviour is tested on 8 fake CPU devices: the flag must be set before JAX
initialises its backend, so it is set here, at collection time, before any test imports jax.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests are tiny: keep the two CI cores for pytest-xdist workers instead of intra-op threads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
