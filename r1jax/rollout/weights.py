"""Weight naming and staging for versioned weight updates (no JAX: the vLLM server uses it too).

Names: a parameter pytree (nested dicts / lists / tuples of arrays, as :mod:`r1jax.models` builds
it) is flattened to ``{"embed.embedding": array, "layers.0.attn.q.kernel": array, ...}`` by
:func:`flatten_params`; keys are joined with ``"."``. The JAX engine expects exactly the names of
its own parameter tree (listed by ``Info``); the vLLM engine expects Hugging Face names.

Staging: :class:`WeightStager` receives byte chunks (grpc transport), validates every chunk
against the expected :class:`~r1jax.rollout.types.TensorSpec` (unknown name, wrong shape or
dtype, out-of-range offset all raise :class:`~r1jax.rollout.types.InvalidRequestError` naming the
tensor) and tracks which bytes of which tensor have arrived, so a commit with missing tensors is
refused (:class:`~r1jax.rollout.types.PreconditionError`) before anything goes live, and so is a
commit whose tensors hold NaN or inf values (:class:`~r1jax.rollout.types.InvalidRequestError`).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from r1jax.rollout.types import InvalidRequestError, PreconditionError, TensorSpec, WeightChunk

__all__ = ["flatten_params", "unflatten_params", "tensor_specs", "iter_chunks", "WeightStager",
           "numpy_dtype", "count_nonfinite"]

# A float is NaN or +-inf exactly when all its exponent bits are set (float8_e4m3fn has no
# infinities; its NaN is S.1111.111). Read from the raw bits, so bfloat16 and float8 need no
# ml_dtypes (the vLLM process lacks it): {dtype: (unsigned view, mask)}, non-finite iff bits & mask == mask.
_NONFINITE_BITS = {
    "float64": (np.uint64, 0x7FF0_0000_0000_0000), "float32": (np.uint32, 0x7F80_0000),
    "float16": (np.uint16, 0x7C00), "bfloat16": (np.uint16, 0x7F80),
    "float8_e5m2": (np.uint8, 0x7C), "float8_e4m3fn": (np.uint8, 0x7F),
}
_SCAN_ELEMENTS = 1 << 22  # bounds the temporary memory of a scan


def flatten_params(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts / lists / tuples of arrays to ``{"a.b.0.c": leaf}`` (sorted dict keys)."""
    out: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        for k in sorted(tree, key=str):
            out.update(flatten_params(tree[k], f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        for i, v in enumerate(tree):
            out.update(flatten_params(v, f"{prefix}{i}."))
    elif tree is None:
        pass
    else:
        if not prefix:
            raise TypeError("flatten_params: expected a nested dict/list of arrays, got a bare leaf")
        out[prefix[:-1]] = tree
    return out


def unflatten_params(template: Any, flat: Mapping[str, Any], prefix: str = "") -> Any:
    """Rebuilds ``template``'s structure with leaves taken from ``flat`` (names as in flatten_params)."""
    if isinstance(template, Mapping):
        return {k: unflatten_params(v, flat, f"{prefix}{k}.") for k, v in template.items()}
    if isinstance(template, (list, tuple)) and not hasattr(template, "_fields"):
        return type(template)(unflatten_params(v, flat, f"{prefix}{i}.") for i, v in enumerate(template))
    if template is None:
        return None
    return flat[prefix[:-1]]


def _dtype_name(a) -> str:
    return np.dtype(a.dtype).name if not hasattr(a.dtype, "name") else str(a.dtype.name)


def tensor_specs(flat: Mapping[str, Any]) -> dict[str, TensorSpec]:
    """``{name: TensorSpec}`` of flat arrays (numpy, JAX or anything with shape and dtype)."""
    return {k: TensorSpec(k, tuple(int(d) for d in v.shape), _dtype_name(v)) for k, v in flat.items()}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a wire dtype name (``bfloat16`` and float8 through ml_dtypes)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # installed with JAX; only the JAX side needs non-numpy dtypes

        return np.dtype(getattr(ml_dtypes, name))


def iter_chunks(name: str, array: Any, version: int, chunk_bytes: int) -> Iterator[WeightChunk]:
    """Splits one tensor's C-order bytes into :class:`WeightChunk` slices of at most ``chunk_bytes``."""
    a = np.ascontiguousarray(np.asarray(array))
    data = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
    shape = tuple(int(d) for d in a.shape)
    dtype = _dtype_name(a)
    if len(data) == 0:
        yield WeightChunk(version, name, shape, dtype, 0, b"")
        return
    for off in range(0, len(data), chunk_bytes):
        yield WeightChunk(version, name, shape, dtype, off, bytes(data[off:off + chunk_bytes]))


def count_nonfinite(data: bytes | bytearray | memoryview, dtype: str) -> tuple[int, int]:
    """Counts the NaN / inf values of a tensor given as its C-order bytes (native byte order).

    Args:
        data: the tensor's bytes.
        dtype: its wire dtype name; non-float dtypes hold no non-finite values.
    Returns:
        ``(count, flat index of the first one)``; ``(0, -1)`` when every value is finite.
    """
    kind = _NONFINITE_BITS.get(dtype)
    if kind is None:
        return 0, -1
    uint, mask = kind[0], kind[0](kind[1])
    bits = np.frombuffer(data, dtype=uint)
    count, first = 0, -1
    for lo in range(0, bits.size, _SCAN_ELEMENTS):
        bad = np.flatnonzero((bits[lo:lo + _SCAN_ELEMENTS] & mask) == mask)
        if bad.size and first < 0:
            first = lo + int(bad[0])
        count += int(bad.size)
    return count, first


class WeightStager:
    """Receives the chunks of one weight version and says when every tensor is complete.

    Args:
        version: the version being staged; chunks of any other version are refused.
        expected: ``{name: TensorSpec}`` the update must cover exactly, or ``None`` when the engine
            cannot list its tensors (vLLM): then the first chunk of a tensor defines its spec.
    """

    def __init__(self, version: int, expected: Mapping[str, TensorSpec] | None):
        self.version = int(version)
        self.expected = dict(expected) if expected is not None else None
        self._specs: dict[str, TensorSpec] = {}
        self._buffers: dict[str, bytearray] = {}
        self._covered: dict[str, list[tuple[int, int]]] = {}
        self.chunks = 0
        self.bytes = 0

    def add(self, chunk: WeightChunk) -> list[str]:
        """Validates and stores one chunk; returns the names it completed (0 or 1).

        Raises:
            PreconditionError: the chunk belongs to another version.
            InvalidRequestError: unknown tensor, wrong shape or dtype, bytes out of range.
        """
        if int(chunk.version) != self.version:
            raise PreconditionError(f"weight chunk for tensor {chunk.name!r} has version {chunk.version}, "
                                    f"but the update in progress is version {self.version}")
        shape = tuple(int(d) for d in chunk.shape)
        spec = TensorSpec(chunk.name, shape, chunk.dtype)
        if self.expected is not None:
            want = self.expected.get(chunk.name)
            if want is None:
                close = [n for n in self.expected if n.split(".")[-1] == chunk.name.split(".")[-1]][:3]
                raise InvalidRequestError(f"weight chunk names unknown tensor {chunk.name!r}"
                                          + (f" (similar: {close})" if close else ""))
            if want.shape != shape:
                raise InvalidRequestError(f"tensor {chunk.name!r}: shape {list(shape)} does not match the "
                                          f"model's {list(want.shape)}")
            if want.dtype != chunk.dtype:
                raise InvalidRequestError(f"tensor {chunk.name!r}: dtype {chunk.dtype} does not match the "
                                          f"model's {want.dtype}")
        else:
            prev = self._specs.get(chunk.name)
            if prev is not None and prev != spec:
                raise InvalidRequestError(f"tensor {chunk.name!r}: chunk says shape {list(shape)} dtype "
                                          f"{chunk.dtype}, earlier chunks said {list(prev.shape)} {prev.dtype}")
        nbytes = spec.nbytes  # also validates the dtype name
        off, n = int(chunk.offset), len(chunk.data)
        if off < 0 or off + n > nbytes or (n == 0 and nbytes != 0):
            raise InvalidRequestError(f"tensor {chunk.name!r}: chunk bytes [{off}, {off + n}) outside the "
                                      f"tensor's {nbytes} bytes")
        was_complete = chunk.name in self._buffers and self._complete(chunk.name)
        if chunk.name not in self._buffers:
            self._specs[chunk.name] = spec
            self._buffers[chunk.name] = bytearray(nbytes)
            self._covered[chunk.name] = []
        self._buffers[chunk.name][off:off + n] = chunk.data
        self._covered[chunk.name] = _merge(self._covered[chunk.name], (off, off + n))
        self.chunks += 1
        self.bytes += n
        return [chunk.name] if (not was_complete and self._complete(chunk.name)) else []

    def _complete(self, name: str) -> bool:
        nbytes = self._specs[name].nbytes
        cov = self._covered[name]
        return nbytes == 0 or (len(cov) == 1 and cov[0] == (0, nbytes))

    def complete(self) -> list[str]:
        """Names of the fully received tensors."""
        return [n for n in self._buffers if self._complete(n)]

    def missing(self) -> list[str]:
        """Expected tensors not (fully) received yet, sorted; with no expectation, partial ones."""
        names = self.expected if self.expected is not None else self._buffers
        return sorted(n for n in names if n not in self._buffers or not self._complete(n))

    def check_complete(self) -> None:
        """Raises PreconditionError naming the missing tensors (at most 8 listed) if any."""
        missing = self.missing()
        if missing:
            shown = ", ".join(repr(m) for m in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            raise PreconditionError(f"commit of weight version {self.version} refused: {len(missing)} tensor(s) "
                                    f"missing or incomplete: {shown}{more}; the previous weights stay live")
        if self.expected is None and not self._buffers:
            raise PreconditionError(f"commit of weight version {self.version} refused: no tensors were pushed")

    def check_finite(self) -> None:
        """Raises InvalidRequestError naming the first staged tensor that holds NaN or inf values."""
        for name, spec in self._specs.items():
            count, first = count_nonfinite(self._buffers[name], spec.dtype)
            if count:
                raise InvalidRequestError(f"commit of weight version {self.version} refused: tensor {name!r} "
                                          f"holds {count} NaN / inf value(s) (the first at flat index {first}); "
                                          "the previous weights stay live")

    def arrays(self) -> dict[str, np.ndarray]:
        """The staged tensors as numpy arrays (zero-copy views of the staging buffers).

        Raises:
            PreconditionError: tensors missing (see :meth:`check_complete`).
            InvalidRequestError: a tensor holds NaN or inf values (see :meth:`check_finite`).
        """
        self.check_complete()
        self.check_finite()
        return {n: np.frombuffer(self._buffers[n], dtype=numpy_dtype(s.dtype)).reshape(s.shape)
                for n, s in self._specs.items()}

    def raw(self) -> dict[str, tuple[TensorSpec, bytearray]]:
        """``{name: (spec, bytes)}`` of the staged tensors (for engines that decode bytes themselves).

        Raises:
            PreconditionError / InvalidRequestError: as :meth:`arrays`.
        """
        self.check_complete()
        self.check_finite()
        return {n: (self._specs[n], self._buffers[n]) for n in self._specs}


def _merge(intervals: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    lo, hi = new
    for a, b in sorted(intervals + [(lo, hi)]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
