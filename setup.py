"""Package discovery only (metadata lives in pyproject.toml).

`kernels/` is mapped to the import name `r1jax_kernels` (with its sub-packages), so the
distribution never installs a bare top-level `kernels` package.
"""

from setuptools import find_packages, setup

kernel_packages = ["r1jax_kernels"] + [f"r1jax_kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages(include=["r1jax", "r1jax.*"]) + kernel_packages,
    package_dir={"r1jax_kernels": "kernels"},
)
