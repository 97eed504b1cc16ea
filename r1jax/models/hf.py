"""Hugging Face checkpoints in and out: ``config.json`` + ``model.safetensors`` (or sharded).

One table, :data:`HF_NAME_TABLE`, maps every parameter to its Hugging Face tensor name and
layout, and is read in both directions. Tensors are read with ``safetensors`` into numpy (never
torch); a checkpoint written by :func:`save_pretrained` loads with
``transformers.AutoModelForCausalLM.from_pretrained``.

Supported architectures: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM (full attention,
SiLU MLP without bias, RoPE default / llama3 / linear).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from r1jax.config import ConfigError, from_dict
from r1jax.models.config import ModelConfig
from r1jax.models.transformer import Params, _nest, param_specs

__all__ = [
    "HF_NAME_TABLE",
    "SUPPORTED_ARCHITECTURES",
    "load_pretrained",
    "save_pretrained",
    "hf_state_dict",
    "config_from_hf",
    "config_to_hf",
]

# r1jax architecture <-> (HF architectures[0], HF model_type)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}
_HF_TO_ARCH = {hf: ours for ours, (hf, _) in SUPPORTED_ARCHITECTURES.items()}
_MODEL_TYPE_TO_ARCH = {mt: ours for ours, (_, mt) in SUPPORTED_ARCHITECTURES.items()}


# --------------------------------------------------------------------------------------------
# Layouts: how one of our (per-layer) arrays maps to an HF tensor, both ways and for shapes.
# ours -> hf, hf -> ours (given our shape), our shape -> hf shape.
_Layout = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, tuple], np.ndarray], Callable[[tuple], tuple]]

_LAYOUTS: dict[str, _Layout] = {
    # identical
    "same": (lambda a: a, lambda a, s: a, lambda s: tuple(s)),
    # ours [in, out] <-> torch Linear weight [out, in]
    "transpose": (lambda a: a.T, lambda a, s: a.T, lambda s: tuple(s[::-1])),
    # ours [D, N, Dh] <-> [N*Dh, D]   (q/k/v projections)
    "in_heads": (
        lambda a: a.reshape(a.shape[0], -1).T,
        lambda a, s: a.T.reshape(s),
        lambda s: (s[1] * s[2], s[0]),
    ),
    # ours [N, Dh, D] <-> [D, N*Dh]   (output projection)
    "out_heads": (
        lambda a: a.reshape(-1, a.shape[-1]).T,
        lambda a, s: a.T.reshape(s),
        lambda s: (s[2], s[0] * s[1]),
    ),
    # ours [N, Dh] <-> [N*Dh]         (q/k/v biases)
    "flat_heads": (lambda a: a.reshape(-1), lambda a, s: a.reshape(s), lambda s: (s[0] * s[1],)),
}

# (our parameter path, HF tensor name ({i}: layer index), layout). The one name table.
HF_NAME_TABLE: tuple[tuple[str, str, str], ...] = (
    ("embed", "model.embed_tokens.weight", "same"),
    ("final_norm", "model.norm.weight", "same"),
    ("lm_head", "lm_head.weight", "transpose"),
    ("layers/attn_norm", "model.layers.{i}.input_layernorm.weight", "same"),
    ("layers/mlp_norm", "model.layers.{i}.post_attention_layernorm.weight", "same"),
    ("layers/q_proj", "model.layers.{i}.self_attn.q_proj.weight", "in_heads"),
    ("layers/k_proj", "model.layers.{i}.self_attn.k_proj.weight", "in_heads"),
    ("layers/v_proj", "model.layers.{i}.self_attn.v_proj.weight", "in_heads"),
    ("layers/o_proj", "model.layers.{i}.self_attn.o_proj.weight", "out_heads"),
    ("layers/q_bias", "model.layers.{i}.self_attn.q_proj.bias", "flat_heads"),
    ("layers/k_bias", "model.layers.{i}.self_attn.k_proj.bias", "flat_heads"),
    ("layers/v_bias", "model.layers.{i}.self_attn.v_proj.bias", "flat_heads"),
    ("layers/o_bias", "model.layers.{i}.self_attn.o_proj.bias", "same"),
    ("layers/q_norm", "model.layers.{i}.self_attn.q_norm.weight", "same"),
    ("layers/k_norm", "model.layers.{i}.self_attn.k_norm.weight", "same"),
    ("layers/gate_proj", "model.layers.{i}.mlp.gate_proj.weight", "transpose"),
    ("layers/up_proj", "model.layers.{i}.mlp.up_proj.weight", "transpose"),
    ("layers/down_proj", "model.layers.{i}.mlp.down_proj.weight", "transpose"),
)

_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# Tensors that some checkpoints carry and that hold nothing we need.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


# --------------------------------------------------------------------------------------------
# config.json


def _rope_from_hf(d: dict[str, Any], path: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling dict or None) from either the 4.x or the 5.x config format."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    theta = d.get("rope_theta")
    rope: dict[str, Any] = {}
    if isinstance(params, dict) and params:
        if any(isinstance(v, dict) for v in params.values()):
            raise ConfigError(f"{path}: rope_parameters: per-layer-type RoPE is not supported: {params}")
        rope.update(params)
    if isinstance(scaling, dict) and scaling:
        rope.update(scaling)
    theta = rope.pop("rope_theta", theta)
    theta = 10000.0 if theta is None else float(theta)
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) == 1.0:
        rope.pop("partial_rotary_factor", None)
    if rope_type == "default":
        return theta, None
    if rope_type not in ("llama3", "linear"):
        raise ConfigError(f"{path}: rope_type {rope_type!r} is not supported; supported: default, llama3, linear")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    unknown = sorted(set(rope) - set(keys))
    if unknown:
        raise ConfigError(f"{path}: rope parameters {unknown} are not supported")
    out: dict[str, Any] = {"rope_type": rope_type}
    for k in keys:
        if k in rope and rope[k] is not None:
            out[k] = int(rope[k]) if k == "original_max_position_embeddings" else float(rope[k])
    if rope_type == "llama3" and "original_max_position_embeddings" not in out:
        out["original_max_position_embeddings"] = int(d.get("max_position_embeddings", 8192))
    return theta, out


def config_from_hf(d: dict[str, Any], *, param_dtype: str | None = None, path: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from a Hugging Face ``config.json`` dict.

    Args:
      d: the parsed config.json.
      param_dtype: "float32" or "bfloat16"; default the checkpoint's dtype (float16 and unknown
        dtypes load as float32).
      path: the file name for error messages.

    Returns:
      The config.

    Raises:
      ConfigError: unsupported architecture (named, with the supported list) or feature.
    """
    archs = d.get("architectures") or []
    arch = None
    for a in archs:
        arch = _HF_TO_ARCH.get(a)
        if arch is not None:
            break
    if arch is None and not archs:
        arch = _MODEL_TYPE_TO_ARCH.get(d.get("model_type", ""))
    if arch is None:
        found = ", ".join(archs) if archs else f"model_type={d.get('model_type')!r}"
        supported = ", ".join(hf for hf, _ in SUPPORTED_ARCHITECTURES.values())
        raise ConfigError(f"{path}: unsupported architecture {found}; supported: {supported}")
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"{path}: hidden_act {act!r} is not supported (only silu)")
    if d.get("mlp_bias"):
        raise ConfigError(f"{path}: mlp_bias=true is not supported")
    if d.get("use_sliding_window"):
        raise ConfigError(f"{path}: use_sliding_window=true (sliding-window attention) is not supported")
    if any(t != "full_attention" for t in d.get("layer_types") or []):
        raise ConfigError(f"{path}: layer_types other than full_attention are not supported")
    if (d.get("pretraining_tp") or 1) != 1:
        raise ConfigError(f"{path}: pretraining_tp != 1 is not supported")
    theta, scaling = _rope_from_hf(d, path)
    if param_dtype is None:
        file_dtype = d.get("dtype") or d.get("torch_dtype") or "float32"
        param_dtype = file_dtype if file_dtype in _NP_DTYPES else "float32"
    eos = d.get("eos_token_id")
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim * heads == d["hidden_size"]:
        head_dim = None  # the default: keeps ModelConfig canonical across round trips
    values: dict[str, Any] = dict(
        architecture=arch,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=None if arch == "qwen2" else bool(d.get("attention_bias", False)),
        max_position_embeddings=d.get("max_position_embeddings", 4096),
        param_dtype=param_dtype,
        initializer_range=d.get("initializer_range", 0.02),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos,
    )
    try:
        return from_dict(ModelConfig, values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of ``config`` (readable by transformers 4.x and 5.x)."""
    c = config
    hf_arch, model_type = SUPPORTED_ARCHITECTURES[c.architecture]
    scaling = None
    if c.rope_scaling is not None:
        s = c.rope_scaling
        scaling = {"rope_type": s.rope_type, "factor": s.factor}
        if s.rope_type == "llama3":
            scaling.update(
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
    eos: Any = list(c.eos_token_ids) if len(c.eos_token_ids) != 1 else c.eos_token_ids[0]
    d: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta} | (scaling or {}),
        "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": c.initializer_range,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos if c.eos_token_ids else None,
        "dtype": c.param_dtype,
        "torch_dtype": c.param_dtype,
    }
    if c.architecture == "llama":
        d.update(attention_bias=c.qkv_bias, mlp_bias=False, pretraining_tp=1)
    else:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
    if c.architecture == "qwen3":
        d["attention_bias"] = c.qkv_bias
    return d


# --------------------------------------------------------------------------------------------
# Loading


class _Reader:
    """Name -> tensor over one safetensors file or a sharded index (numpy, lazily opened)."""

    def __init__(self, directory: pathlib.Path):
        single = directory / "model.safetensors"
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
            self.files = {name: directory / fname for name, fname in weight_map.items()}
            for f in sorted(set(self.files.values())):
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: shard listed in {index.name} does not exist")
        elif single.is_file():
            with safe_open(str(single), framework="numpy") as f:
                self.files = {name: single for name in f.keys()}
        else:
            raise FileNotFoundError(f"{directory}: no weights: neither model.safetensors nor model.safetensors.index.json")
        self._open: dict[pathlib.Path, Any] = {}

    def _handle(self, name: str):
        path = self.files[name]
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="numpy")
        return self._open[path]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._handle(name).get_tensor(name)


def load_pretrained(
    directory: str | os.PathLike,
    *,
    param_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Params, ModelConfig]:
    """Reads a Hugging Face Llama / Qwen2 / Qwen3 checkpoint directory.

    Args:
      directory: holds ``config.json`` and ``model.safetensors`` (or ``model.safetensors.index.json``
        and its shards).
      param_dtype: "float32" or "bfloat16"; default the checkpoint's dtype (float16 -> float32).
      mesh: if given, each parameter is placed directly with ``sharding.param_shardings``.

    Returns:
      (params, config).

    Raises:
      FileNotFoundError: the directory, config.json or the weights are missing (named).
      ConfigError: unsupported architecture (named, with the supported list) or feature.
      ValueError: a tensor is missing, has the wrong shape (named, expected vs found), or is
        not used by the architecture.
    """
    d = pathlib.Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: checkpoint directory does not exist")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: config.json not found")
    try:
        hf_config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    config = config_from_hf(hf_config, param_dtype=param_dtype, path=str(cfg_path))
    reader = _Reader(d)
    np_dtype = _NP_DTYPES[config.param_dtype]
    specs = param_specs(config)
    table = {ours: (name, layout) for ours, name, layout in HF_NAME_TABLE}
    shardings = None
    if mesh is not None:
        from r1jax.models.sharding import param_shardings  # noqa: PLC0415

        shardings = _flatten(param_shardings(config, mesh))

    used: set[str] = set()
    flat: dict[str, Any] = {}
    for path, (shape, _) in specs.items():
        name, layout = table[path]
        _, from_hf, hf_shape_of = _LAYOUTS[layout]
        stacked = path.startswith("layers/")
        one_shape = tuple(shape[1:]) if stacked else tuple(shape)
        expected = hf_shape_of(one_shape)
        pieces = []
        for i in range(config.num_layers if stacked else 1):
            tname = name.format(i=i)
            if tname not in reader.files:
                raise ValueError(f"{d}: tensor {tname!r} is missing from the checkpoint (needed for {path})")
            found = reader.shape(tname)
            if found != expected:
                raise ValueError(f"{d}: tensor {tname!r} has shape {found}, expected {expected} for this config.json")
            pieces.append(np.asarray(from_hf(reader.get(tname), one_shape), dtype=np_dtype))
            used.add(tname)
        array = np.stack(pieces) if stacked else pieces[0]
        flat[path] = jnp.asarray(array) if shardings is None else jax.device_put(array, shardings[path])
        del pieces, array

    unused = sorted(
        n
        for n in reader.files
        if n not in used
        and not n.endswith(_IGNORED_SUFFIXES)
        and not (config.tie_word_embeddings and n == "lm_head.weight")
    )
    if unused:
        more = f" (and {len(unused) - 5} more)" if len(unused) > 5 else ""
        raise ValueError(
            f"{d}: tensors not used by a {SUPPORTED_ARCHITECTURES[config.architecture][0]} with this "
            f"config.json: {unused[:5]}{more}"
        )
    return _nest(flat), config


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------
# Saving


def _to_host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def hf_state_dict(params: Params, config: ModelConfig, *, dtype: str | None = None) -> dict[str, np.ndarray]:
    """The Hugging Face tensors (names, layouts) of ``params``, on the host: what
    :func:`save_pretrained` writes, or what a rollout engine serving the HF checkpoint takes.

    Args:
      params: parameter pytree matching ``config`` (a ``value_head`` is left out).
      config: the architecture.
      dtype: "float32" or "bfloat16"; default ``config.param_dtype``.

    Raises:
      ValueError: a parameter missing or of the wrong shape (named, expected vs found).
    """
    flat = _flatten({k: v for k, v in params.items() if k != "value_head"})
    specs = param_specs(config)
    for path, (shape, _) in specs.items():
        if path not in flat:
            raise ValueError(f"params: '{path}' is missing for this config")
        if tuple(np.shape(flat[path])) != tuple(shape):
            raise ValueError(f"params: '{path}' has shape {tuple(np.shape(flat[path]))}, expected {tuple(shape)}")
    extra = sorted(set(flat) - set(specs))
    if extra:
        raise ValueError(f"params: {extra} are not parameters of this config")
    if dtype is not None and dtype not in _NP_DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not supported; supported: {', '.join(_NP_DTYPES)}")
    np_dtype = _NP_DTYPES[dtype or config.param_dtype]
    tensors: dict[str, np.ndarray] = {}
    for ours, name, layout in HF_NAME_TABLE:
        if ours not in specs:
            continue
        to_hf = _LAYOUTS[layout][0]
        array = _to_host(flat[ours]).astype(np_dtype)
        if ours.startswith("layers/"):
            for i in range(config.num_layers):
                tensors[name.format(i=i)] = np.ascontiguousarray(to_hf(array[i]))
        else:
            tensors[name] = np.ascontiguousarray(to_hf(array))
    return tensors


def save_pretrained(
    params: Params,
    config: ModelConfig,
    directory: str | os.PathLike,
    *,
    max_shard_bytes: int | None = None,
    dtype: str | None = None,
) -> None:
    """Writes ``config.json`` and ``model.safetensors`` that ``transformers`` loads.

    A ``value_head`` (critic) is not part of a causal LM and is not written; checkpoint critics
    with the trainer's orbax checkpoints. With several processes, every process must call this
    (sharded arrays are gathered) and only process 0 writes.

    Args:
      params: parameter pytree matching ``config``.
      config: the architecture.
      directory: output directory (created).
      max_shard_bytes: if set, split the weights into ``model-0000k-of-0000n.safetensors`` shards
        of at most about this size plus ``model.safetensors.index.json``.
      dtype: "float32" or "bfloat16" to write; default ``config.param_dtype`` (e.g. write
        float32 training weights as bfloat16 for a rollout engine).

    Raises:
      ValueError: a parameter missing or of the wrong shape (named, expected vs found).
    """
    tensors = hf_state_dict(params, config, dtype=dtype)
    if dtype is not None and dtype != config.param_dtype:
        config = dataclasses.replace(config, param_dtype=dtype)
    if jax.process_index() != 0:
        return
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
    metadata = {"format": "pt"}
    total = sum(t.nbytes for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map = {}
    n = len(shards)
    width = max(5, int(math.log10(n)) + 1)
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:0{width}d}-of-{n:0{width}d}.safetensors"
        save_file(shard, str(out / fname), metadata=metadata)
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
