"""Static architecture description of a decoder-only transformer (Llama / Qwen2 / Qwen3).

:class:`ModelConfig` is a frozen, hashable dataclass: it can be a static argument of a jitted
function. Every field carries its allowed range (``r1jax.config.field``); cross-field rules live in
:meth:`ModelConfig.check`, which also runs on direct construction, so an impossible architecture
fails at once with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from r1jax.config import ConfigError, field, from_dict, validate_fields

__all__ = ["ModelConfig", "RopeScaling", "ARCHITECTURES", "PARAM_DTYPES"]

ARCHITECTURES = ("llama", "qwen2", "qwen3")
PARAM_DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling (Hugging Face ``rope_scaling`` / ``rope_parameters``).

    ``llama3`` is the Llama-3.1 recipe (low frequencies divided by ``factor``, high ones kept, a
    smooth interpolation between); ``linear`` divides every frequency by ``factor``.

    References:
      Llama 3 herd of models, arXiv 2407.21783, section 3.3 (long-context RoPE scaling);
      Chen et al., "Extending context window ... via positional interpolation", arXiv 2306.15595.
    """

    rope_type: str = field("llama3", choices=("llama3", "linear"), help="scaling recipe")
    factor: float = field(8.0, gt=0.0, help="frequency divisor for long wavelengths")
    low_freq_factor: float = field(1.0, gt=0.0, help="llama3: low-frequency band edge")
    high_freq_factor: float = field(4.0, gt=0.0, help="llama3: high-frequency band edge")
    original_max_position_embeddings: int = field(8192, gt=0, help="llama3: pre-training context length")

    def __post_init__(self):
        validate_fields(self, "rope_scaling.")
        self.check()

    def check(self) -> None:
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError(
                f"rope_scaling.high_freq_factor: must be > low_freq_factor "
                f"({self.high_freq_factor} vs {self.low_freq_factor})"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama / Qwen2 / Qwen3 decoder-only transformer.

    ``attention_bias`` and ``qk_norm`` default to ``None``, meaning "what the architecture
    does": Qwen2 always has q/k/v biases, Qwen3 always has per-head q/k RMSNorm; Llama and Qwen3
    may have attention biases (then on q, k, v and o, as in Hugging Face).
    """

    architecture: str = field("llama", choices=ARCHITECTURES, help="model family")
    vocab_size: int = field(128, gt=0, help="vocabulary size V")
    hidden_size: int = field(64, gt=0, help="model width D")
    intermediate_size: int = field(128, gt=0, help="SwiGLU hidden width F")
    num_layers: int = field(2, gt=0, help="number of decoder layers L")
    num_heads: int = field(4, gt=0, help="query heads H")
    num_kv_heads: int = field(2, gt=0, help="key/value heads K (grouped-query attention; H % K == 0)")
    head_dim: int | None = field(None, gt=0, help="per-head width; None -> hidden_size // num_heads")
    rope_theta: float = field(10000.0, gt=0.0, help="RoPE base θ")
    rope_scaling: RopeScaling | None = field(None, help="RoPE frequency scaling (llama3 / linear) or None")
    rms_norm_eps: float = field(1e-6, gt=0.0, help="RMSNorm epsilon")
    tie_word_embeddings: bool = field(False, help="output projection = embedding transposed")
    attention_bias: bool | None = field(None, help="q/k/v(/o) biases; None -> architecture default")
    qk_norm: bool | None = field(None, help="per-head RMSNorm on q and k (Qwen3); None -> architecture default")
    max_position_embeddings: int = field(4096, gt=0, help="longest position the model was trained for")
    param_dtype: str = field("float32", choices=PARAM_DTYPES, help="parameter (and activation) dtype")
    compute_dtype: str | None = field(None, choices=(None, *PARAM_DTYPES),
                                      help="input dtype of the weight matmuls (float32 accumulation); "
                                           "None -> param_dtype")
    initializer_range: float = field(0.02, gt=0.0, help="std of the normal init of weight matrices")
    remat: str = field("none", choices=("none", "full", "dots"), help="per-layer rematerialisation policy")
    scan_layers: bool = field(False, help="run the full-sequence forward's layers as one lax.scan (one layer "
                                          "compiled, whatever L: for deep models) instead of unrolled (faster "
                                          "on XLA:CPU: no stacked per-layer activations)")
    attention_blocks: int = field(1, ge=1, help="the full-sequence forward attends in up to this many query blocks "
                                                "(of >= 32 queries), each reading keys only up to its own end: the "
                                                "same result in (n+1)/2n of the T x T work, at a longer compile; "
                                                "1 = one block over all keys")
    attention_impl: str = field("xla", choices=ATTENTION_IMPLS,
                                help="the full-sequence forward's attention: 'xla' (scores materialised; any "
                                     "backend) or 'cudnn' (jax.nn.dot_product_attention's cuDNN flash attention: "
                                     "NVIDIA GPUs, bfloat16 compute); the sampler's decode is unchanged")
    bos_token_id: int | None = field(None, ge=0, help="kept for HF round trips")
    eos_token_ids: tuple[int, ...] = field((), ge=0, help="kept for HF round trips (stop tokens)")

    def __post_init__(self):
        if isinstance(self.rope_scaling, Mapping):  # accept a plain dict on direct construction
            try:
                scaling = from_dict(RopeScaling, dict(self.rope_scaling))
            except ConfigError as e:
                msg = str(e)
                key = msg.split(":")[0]
                raise ConfigError(f"rope_scaling.{msg}" if key.isidentifier() else f"rope_scaling: {msg}") from None
            object.__setattr__(self, "rope_scaling", scaling)
        if isinstance(self.eos_token_ids, list):
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        validate_fields(self, "")
        self.check()

    # ------------------------------------------------------------------ derived, static values
    @property
    def resolved_head_dim(self) -> int:
        """Per-head width Dh."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def qkv_bias(self) -> bool:
        """Whether q, k and v projections carry a bias."""
        if self.attention_bias is None:
            return self.architecture == "qwen2"
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        """Whether the output projection carries a bias (Llama/Qwen3 with attention_bias; never Qwen2)."""
        return self.qkv_bias and self.architecture != "qwen2"

    @property
    def use_qk_norm(self) -> bool:
        """Whether q and k get a per-head RMSNorm before RoPE (Qwen3)."""
        return self.architecture == "qwen3" if self.qk_norm is None else self.qk_norm

    @property
    def matmul_dtype(self):
        """The jnp dtype the weight matmuls read their inputs in (``compute_dtype``, else ``param_dtype``)."""
        import jax.numpy as jnp  # noqa: PLC0415

        return jnp.dtype(self.compute_dtype or self.param_dtype)

    @property
    def dtype(self):
        """The jnp dtype of parameters and activations."""
        import jax.numpy as jnp  # noqa: PLC0415

        return jnp.dtype(self.param_dtype)

    def num_params(self) -> int:
        """Number of parameters (without a value head)."""
        d, f, v, h, k = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_heads, self.num_kv_heads
        dh = self.resolved_head_dim
        per_layer = 2 * d + d * dh * (h + 2 * k) + h * dh * d + 3 * d * f
        per_layer += dh * (h + 2 * k) if self.qkv_bias else 0
        per_layer += d if self.o_bias else 0
        per_layer += 2 * dh if self.use_qk_norm else 0
        return v * d * (1 if self.tie_word_embeddings else 2) + d + self.num_layers * per_layer

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Cross-field validation; raises ConfigError naming the field at fault."""
        if self.attention_impl == "cudnn" and (self.compute_dtype or self.param_dtype) != "bfloat16":
            raise ConfigError(f"attention_impl: 'cudnn' needs bfloat16 compute, not "
                              f"{self.compute_dtype or self.param_dtype} (set compute_dtype or param_dtype)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads: {self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads} "
                "(grouped-query attention needs whole groups)"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size: {self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "set head_dim explicitly"
            )
        if self.resolved_head_dim % 2:
            raise ConfigError(f"head_dim: {self.resolved_head_dim} must be even for rotary embeddings")
        if self.architecture == "qwen2" and self.attention_bias is False:
            raise ConfigError("attention_bias: qwen2 always has q/k/v biases; leave it None (or True)")
        if self.architecture == "qwen3" and self.qk_norm is False:
            raise ConfigError("qk_norm: qwen3 always has q/k RMSNorm; leave it None (or True)")
        if self.architecture != "qwen3" and self.qk_norm:
            raise ConfigError(f"qk_norm: only qwen3 has q/k RMSNorm, not {self.architecture}")
        if not math.isfinite(self.rope_theta):
            raise ConfigError(f"rope_theta: {self.rope_theta} is not finite")
