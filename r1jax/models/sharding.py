"""Logical-axis sharding: parameters and activations onto a data × fsdp × tensor mesh.

Every parameter leaf has logical axis names (``r1jax.models.transformer.PARAM_AXES``: vocab,
embed, heads, kv_heads, head_dim, mlp, layers) and the main activations are constrained with
(batch, seq, embed, heads, kv_heads, mlp). ONE table, :data:`LOGICAL_AXIS_RULES`, maps logical
names to mesh axes. Changing the parallelism is a change of :class:`MeshConfig` (or of the rules
passed in), never of the model code.

Rule semantics (those of Flax's logical partitioning): for each dimension of a tensor, the rules
for its logical name are tried in order and the first whose mesh axes are not already used by an
earlier dimension of the same tensor wins; if none fits the dimension is replicated. So the
activation ``(batch, seq, embed)`` puts batch on (data, fsdp) and leaves embed replicated, while
the weight ``(embed, mlp)`` puts embed on fsdp (ZeRO-3 style) and mlp on tensor.

Meshes are built with ``jax.sharding.AxisType.Auto`` axes: the compiler propagates shardings
from the parameter placement and the constraints here (no sharding-in-types).

Multi-host: call :func:`maybe_initialize_distributed` once per process before anything touches
devices; the mesh then spans every process's devices and the same code runs unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from r1jax.config import ConfigError, field

__all__ = [
    "MESH_AXES",
    "LOGICAL_AXIS_RULES",
    "MeshConfig",
    "make_mesh",
    "axis_rules",
    "logical_to_spec",
    "constrain",
    "param_logical_axes",
    "param_shardings",
    "shard_params",
    "cache_shardings",
    "maybe_initialize_distributed",
]

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]

# The one logical -> mesh table. Several rules for a name are tried in order (see module doc).
LOGICAL_AXIS_RULES: Rules = (
    ("batch", ("data", "fsdp")),  # activations: data parallel over data and fsdp
    ("seq", None),
    ("embed", "fsdp"),  # weights: FSDP shards the model dimension (activations: already used by batch)
    ("heads", "tensor"),  # Megatron: attention heads split over tensor
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),  # Megatron: MLP columns / rows split over tensor
    ("vocab", "tensor"),  # embedding rows and output projection columns over tensor
    ("layers", None),  # stacked layer axis: scanned, never split
)

_RULES_VAR: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("r1jax_axis_rules", default=None)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device-mesh shape. The product must equal the device count; one size may be -1 (the rest)."""

    data: int = field(-1, help="data-parallel replicas (-1: all remaining devices)")
    fsdp: int = field(1, help="fully-sharded data parallel (parameters split over it)")
    tensor: int = field(1, help="tensor (Megatron) parallel")
    coordinator: str | None = field(None, help="multi-host: host:port of process 0 (jax.distributed); "
                                              "None: R1JAX_COORDINATOR or single host")
    num_processes: int | None = field(None, ge=1, help="multi-host: number of processes (R1JAX_NUM_PROCESSES)")
    process_id: int | None = field(None, ge=0, help="multi-host: this process's rank (R1JAX_PROCESS_ID)")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        sizes = self.sizes
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ConfigError(f"mesh.{name}: {size} is not a positive size (or -1 for the rest)")
        if sum(s == -1 for s in sizes) > 1:
            raise ConfigError(f"mesh: at most one size may be -1, got data={self.data} fsdp={self.fsdp} tensor={self.tensor}")

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete (data, fsdp, tensor) sizes for ``num_devices`` devices."""
        sizes = list(self.sizes)
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"mesh: {num_devices} devices are not divisible by the fixed sizes "
                    f"(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}; product {known})"
                )
            sizes[sizes.index(-1)] = num_devices // known
        elif known != num_devices:
            raise ConfigError(
                f"mesh: data*fsdp*tensor = {self.data}*{self.fsdp}*{self.tensor} = {known} "
                f"but there are {num_devices} devices"
            )
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ("data", "fsdp", "tensor"), all of type ``AxisType.Auto``.

    Args:
      mesh_config: the sizes.
      devices: the devices to use; default ``jax.devices()`` (all processes' devices).

    Returns:
      The mesh (use it with ``jax.set_mesh(mesh)`` so activation constraints apply).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_config.resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@contextlib.contextmanager
def axis_rules(rules: Rules):
    """Context in which :func:`constrain` (activations) uses ``rules`` instead of the default table."""
    token = _RULES_VAR.set(tuple(rules))
    try:
        yield
    finally:
        _RULES_VAR.reset(token)


def _current_rules(rules: Rules | None) -> Rules:
    if rules is not None:
        return tuple(rules)
    ctx = _RULES_VAR.get()
    return LOGICAL_AXIS_RULES if ctx is None else ctx


def _as_tuple(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(
    axes: Sequence[str | None],
    *,
    rules: Rules | None = None,
    shape: Sequence[int] | None = None,
    mesh_shape: dict[str, int] | None = None,
    strict: bool = True,
    name: str = "tensor",
) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec`` with the rules table.

    Args:
      axes: one logical name (or None) per dimension.
      rules: the (logical, mesh axes) rules; default :data:`LOGICAL_AXIS_RULES`.
      shape: the tensor shape, to check divisibility (with ``mesh_shape``).
      mesh_shape: {mesh axis: size}; mesh axes absent from it are skipped.
      strict: if True a dimension not divisible by its mesh axes raises; if False it is replicated.
      name: the tensor's name for error messages.

    Returns:
      The PartitionSpec.

    Raises:
      ValueError: a dimension not divisible by its mesh axes (strict), naming tensor, dimension and axis.
    """
    rules = _current_rules(rules)
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"{name}: {len(axes)} logical axes {tuple(axes)} for a tensor of shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[Any] = []
    for dim, logical in enumerate(axes):
        chosen: tuple[str, ...] = ()
        for rule_name, target in rules:
            if rule_name != logical:
                continue
            mesh_axes = _as_tuple(target)
            if mesh_shape is not None:
                mesh_axes = tuple(a for a in mesh_axes if a in mesh_shape)
            if any(a in used for a in mesh_axes):
                continue
            chosen = mesh_axes
            break
        if chosen and shape is not None and mesh_shape is not None:
            total = math.prod(mesh_shape[a] for a in chosen)
            if shape[dim] % total:
                if strict:
                    sizes = ", ".join(f"'{a}' (size {mesh_shape[a]})" for a in chosen)
                    raise ValueError(
                        f"{name}: dimension {dim} ('{logical}', size {shape[dim]}) is not divisible by "
                        f"mesh axis {sizes}; change the mesh or the sharding rules"
                    )
                chosen = ()
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation from its logical axes; a no-op outside a mesh.

    Inside ``jax.set_mesh(mesh)`` the logical axes are mapped with the current rules; a dimension
    not divisible by its mesh axes is left unconstrained (activations are hints, not contracts).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    mesh_shape = dict(mesh.shape)
    spec = logical_to_spec(axes, shape=x.shape, mesh_shape=mesh_shape, strict=False)
    return jax.lax.with_sharding_constraint(x, spec)


def _path_str(path) -> list[str]:
    out = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            out.append(str(p.key))
        elif isinstance(p, jax.tree_util.GetAttrKey):
            out.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            out.append(str(p.idx))
        else:
            out.append(str(p))
    return out


def _leaf_axes(path: list[str], ndim: int) -> tuple[str, ...]:
    from r1jax.models.transformer import PARAM_AXES  # noqa: PLC0415 - avoids an import cycle

    # The longest trailing run of keys that names a parameter: works on params and on any tree
    # that embeds params-shaped subtrees (optimizer moments, gradients).
    for start in range(len(path)):
        key = "/".join(path[start:])
        if key in PARAM_AXES:
            axes = PARAM_AXES[key]
            if len(axes) != ndim:
                raise ValueError(f"{'/'.join(path)}: has {ndim} dimensions but parameter '{key}' has axes {axes}")
            return axes
    if ndim == 0:
        return ()
    raise ValueError(f"{'/'.join(path) or '<root>'}: not a known parameter (no logical axes); known: {sorted(PARAM_AXES)}")


def param_logical_axes(params: Any) -> Any:
    """The logical axis names of every leaf of ``params`` (a tree of tuples, same structure).

    Leaves are matched by the trailing keys of their path (so optimizer states that embed
    params-shaped subtrees work too); scalar leaves get ``()``; anything else raises naming it.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _leaf_axes(_path_str(path), np.ndim(x)), params
    )


def _shapes(params_or_config: Any) -> Any:
    from r1jax.models.config import ModelConfig  # noqa: PLC0415
    from r1jax.models.transformer import init_params  # noqa: PLC0415

    if isinstance(params_or_config, ModelConfig):
        return jax.eval_shape(lambda: init_params(params_or_config, jax.random.key(0)))
    return params_or_config


def param_shardings(params_or_config: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """``NamedSharding`` of every parameter (or of any params-shaped tree, e.g. optimizer state).

    Args:
      params_or_config: a parameter pytree (arrays or ShapeDtypeStructs), or a ModelConfig.
      mesh: the device mesh.
      rules: logical -> mesh rules; default :data:`LOGICAL_AXIS_RULES`.

    Returns:
      A pytree of ``NamedSharding`` with the structure of the parameters.

    Raises:
      ValueError: a dimension not divisible by its mesh axes, naming the parameter, the
        dimension, its logical axis and the mesh axis.
    """
    tree = _shapes(params_or_config)
    mesh_shape = dict(mesh.shape)

    def one(path, x):
        p = _path_str(path)
        axes = _leaf_axes(p, np.ndim(x))
        spec = logical_to_spec(axes, rules=rules, shape=np.shape(x), mesh_shape=mesh_shape, name="/".join(p))
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def shard_params(params: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """Places ``params`` on ``mesh`` with :func:`param_shardings` (``jax.device_put``)."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def cache_shardings(cache: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """``NamedSharding`` of a ``KVCache``: every layer's k (batch, kv_heads, head_dim, seq) and
    v (batch, kv_heads, seq, head_dim), mask (batch, seq).

    Dimensions not divisible by their mesh axes are replicated (the batch of a sampler may be small).
    """
    from r1jax.models.transformer import CACHE_K_AXES, CACHE_V_AXES, KVCache  # noqa: PLC0415

    mesh_shape = dict(mesh.shape)

    def spec(x, axes):
        return NamedSharding(mesh, logical_to_spec(axes, rules=rules, shape=np.shape(x), mesh_shape=mesh_shape, strict=False))

    return KVCache(
        k=tuple(spec(k, CACHE_K_AXES) for k in cache.k),
        v=tuple(spec(v, CACHE_V_AXES) for v in cache.v),
        mask=spec(cache.mask, ("batch", "seq")),
        index=NamedSharding(mesh, PartitionSpec()),
    )


def maybe_initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Initialises JAX's multi-controller runtime when running on several hosts.

    Arguments default to the environment variables ``R1JAX_COORDINATOR`` (host:port),
    ``R1JAX_NUM_PROCESSES`` and ``R1JAX_PROCESS_ID``. With no coordinator and at most one
    process nothing happens (single host). On managed clusters (SLURM, TPU pods) where JAX
    auto-detects the topology, set ``R1JAX_DISTRIBUTED=auto`` to call
    ``jax.distributed.initialize()`` with no arguments. Must run before any device is used.

    Args:
      coordinator: address of process 0, "host:port".
      num_processes: total number of processes.
      process_id: this process's rank.

    Returns:
      True if ``jax.distributed.initialize`` was called.
    """
    if os.environ.get("R1JAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return True
    coordinator = coordinator or os.environ.get("R1JAX_COORDINATOR")
    if num_processes is None and "R1JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["R1JAX_NUM_PROCESSES"])
    if process_id is None and "R1JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["R1JAX_PROCESS_ID"])
    if coordinator is None or (num_processes is not None and num_processes <= 1):
        return False
    if num_processes is None or process_id is None:
        raise ValueError(
            "maybe_initialize_distributed: a coordinator was given but num_processes/process_id are missing "
            "(pass them or set R1JAX_NUM_PROCESSES / R1JAX_PROCESS_ID)"
        )
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True
