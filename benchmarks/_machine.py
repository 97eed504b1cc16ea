"""Describe the machine a benchmark ran on, for the JSON written under ``benchmarks/results/``.

Every benchmark records where its numbers came from::

        from benchmarks._machine import describe_machine
        result = {"machine": describe_machine(), ...}
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def describe_machine() -> dict[str, Any]:
    """Returns a JSON-serialisable description of this machine and its JAX install.

    Returns:
        A dict with ``platform``, ``machine``, ``processor``, ``cpu_count`` (logical CPUs of the
        machine), ``cpu_affinity`` (CPUs this process may run on, where the OS says), ``python``,
        ``numpy``, ``jax``, ``jaxlib``, ``jax_backend`` and ``jax_devices`` (one string per device).
    """
    import jax  # Imported here so that describing the machine never decides when JAX initialises.
    import jaxlib
    import numpy as np

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "jax_backend": jax.default_backend(),
            "jax_devices": [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in jax.devices()],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(describe_machine(), indent=2))
