"""Package discovery only (metadata lives in pyproject.toml).

The fused kernels live in the top-level folder ``r1jax_kernels/`` (not ``kernels/``): a folder named
``kernels`` at the repository root is importable as the ``kernels`` package that transformers and
vLLM probe for, and breaks them when a program is started from the root.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["r1jax", "r1jax.*", "r1jax_kernels", "r1jax_kernels.*"]))
