"""``token_logprobs``: one log-prob function, three backends tested equal.

Backends:

* ``"reference"`` — materialises ``[..., V]`` float32 logits and applies ``log_softmax``
  (:mod:`r1jax_kernels.reference`). The definition; memory ``O(tokens * V)``.
* ``"chunked"`` — XLA, vocabulary chunks with an online logsumexp and a ``custom_vjp`` backward
  that recomputes each chunk (:mod:`r1jax_kernels.chunked`). Memory ``O(tokens * chunk)``; runs
  everywhere; deterministic.
* ``"pallas"`` — a Pallas kernel, one pass over vocabulary tiles forward and a tiled backward
  (:mod:`r1jax_kernels.pallas_logprobs`). GPU (Triton lowering, compute capability >= 8.0), or
  any platform with ``interpret=True`` (slow; for tests).
* ``"auto"`` — ``"chunked"`` everywhere. Measured on an H200 (``benchmarks/results/kernels_gpu_h200.json``,
  seq 8192 x vocab 151,936 x hidden 2048, bfloat16) the Pallas kernel is correct but slower: forward
  32.4 vs 12.8 ms, forward + backward 401.5 vs 40.9 ms (286 ms at its best swept tiles; the backward
  accumulates with atomic adds). ``"pallas"`` stays a choice, for its memory profile and for work on it.

The choice is made in one place, :func:`resolve_backend`.
"""

from __future__ import annotations

from typing import Any

import jax

from r1jax_kernels import _common
from r1jax_kernels.chunked import token_logprobs_chunked
from r1jax_kernels.reference import token_logprobs_reference

Array = jax.Array

BACKENDS = ("auto", "reference", "chunked", "pallas")
#: Lowest CUDA compute capability the Triton lowering of the Pallas kernel targets (bf16 dots).
MIN_CUDA_CAPABILITY = (8, 0)


def _cuda_capability(device) -> tuple[int, int] | None:
    cap = getattr(device, "compute_capability", None)
    if not cap:
        return None
    try:
        major, minor = str(cap).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def pallas_available() -> tuple[bool, str]:
    """Whether the default JAX device can run the Pallas kernel natively, and why not if not."""
    platform = jax.default_backend()
    if platform != "gpu":
        return False, f"the default JAX backend is {platform!r}, not a CUDA GPU"
    device = jax.devices()[0]
    cap = _cuda_capability(device)
    if cap is None:
        return False, f"device {device} reports no CUDA compute capability (ROCm is not supported)"
    if cap < MIN_CUDA_CAPABILITY:
        return False, (f"device {device} has compute capability {cap[0]}.{cap[1]} < "
                       f"{MIN_CUDA_CAPABILITY[0]}.{MIN_CUDA_CAPABILITY[1]}")
    try:
        from jax.experimental.pallas import triton as _plgpu  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the jaxlib build
        return False, f"the Pallas Triton backend cannot be imported ({e})"
    return True, ""


def resolve_backend(backend: str, *, interpret: bool = False) -> str:
    """The backend that will run: the single place where ``"auto"`` is decided.

    Args:
        backend: one of :data:`BACKENDS`.
        interpret: run the Pallas kernel in the interpreter (only with ``backend="pallas"``).

    Returns:
        ``"reference"``, ``"chunked"`` or ``"pallas"``.

    Raises:
        ValueError: an unknown backend, ``interpret=True`` with a backend other than
            ``"pallas"``, or ``"pallas"`` forced where it cannot run natively without
            ``interpret=True``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if interpret and backend != "pallas":
        raise ValueError(f"interpret=True only applies to backend='pallas', got backend={backend!r}")
    if backend == "auto":  # chunked wherever it runs: faster than Pallas on an H200 too (module docstring)
        return "chunked"
    if backend == "pallas" and not interpret:
        ok, why = pallas_available()
        if not ok:
            raise ValueError(
                f"backend='pallas' cannot run here: {why}. Use backend='chunked' (or 'auto'), "
                "or pass interpret=True to run the kernel in the (slow) Pallas interpreter.")
    return backend


def token_logprobs(hidden: Any, lm_head: Any, targets: Any, *, temperature: Any = 1.0,
                   return_entropy: bool = False, backend: str = "auto",
                   chunk_size: int | None = None, interpret: bool = False,
                   pallas_blocks: Any = None) -> Array | tuple[Array, Array]:
    """Per-token log-probabilities of ``targets`` under ``softmax((hidden @ lm_head) / temperature)``.

    Never needs the ``[..., V]`` logits in memory except with ``backend="reference"``. The
    result is float32 whatever the input dtype; it equals
    ``logprobs_from_logits(hidden @ lm_head, targets, temperature)`` (the "processed" log-probs
    the sampler reports: temperature applied, before top-p/top-k).

    Args:
        hidden: ``[..., D]`` final hidden states (after the final norm), any float dtype.
        lm_head: ``[D, V]`` output projection (``r1jax.models.lm_head_weight``).
        targets: ``[...]`` integer token ids. Ids outside ``[0, V)`` raise ValueError when
            concrete and give NaN log-probs under ``jit``.
        temperature: positive scalar, or an array broadcastable to ``targets.shape``. Traced:
            changing it never recompiles. Differentiable (all backends).
        return_entropy: also return the per-token entropy of the same distribution.
        backend: ``"auto"`` | ``"reference"`` | ``"chunked"`` | ``"pallas"`` (static; see the
            module docstring and :func:`resolve_backend`).
        chunk_size: vocabulary columns per step of the ``"chunked"`` backend (None: automatic,
            ~64 MiB of float32 per ``[tokens, chunk]`` buffer). Not used by the Pallas kernel,
            whose tiles are ``pallas_blocks``; passing it together with ``backend="pallas"`` is
            an error.
        interpret: with ``backend="pallas"``: run the kernel in the Pallas interpreter (CPU).
        pallas_blocks: optional :class:`r1jax_kernels.pallas_logprobs.PallasBlocks` (tile sizes
            of the Pallas kernel).

    Returns:
        ``logp[...]`` float32, or ``(logp, entropy)``, both float32 ``[...]``.

    References:
        DeepSeekMath (arXiv 2402.03300) eq. 3: the per-token log-probs of GRPO's ratio;
        Wijmans et al. 2024 (arXiv 2411.09009): blockwise log-probs without materialised logits.
    """
    hidden, lm_head, targets = _common.check_logprob_inputs(hidden, lm_head, targets)
    which = resolve_backend(backend, interpret=interpret)
    if which == "reference":
        return token_logprobs_reference(hidden, lm_head, targets, temperature=temperature,
                                        return_entropy=return_entropy)
    if which == "chunked":
        return token_logprobs_chunked(hidden, lm_head, targets, temperature=temperature,
                                      return_entropy=return_entropy, chunk_size=chunk_size)
    from r1jax_kernels import pallas_logprobs as _pallas
    blocks = _pallas_blocks(pallas_blocks, chunk_size, backend)
    return _pallas.token_logprobs_pallas(hidden, lm_head, targets, temperature=temperature,
                                         return_entropy=return_entropy, blocks=blocks,
                                         interpret=interpret)


def _pallas_blocks(pallas_blocks, chunk_size, backend):
    from r1jax_kernels.pallas_logprobs import PallasBlocks
    if backend == "pallas" and chunk_size is not None:
        raise ValueError("chunk_size: applies to the chunked backend only; set the Pallas "
                         "kernel's tiles with pallas_blocks=PallasBlocks(...)")
    blocks = PallasBlocks() if pallas_blocks is None else pallas_blocks
    if not isinstance(blocks, PallasBlocks):
        raise TypeError(f"pallas_blocks: expected a PallasBlocks, got {type(blocks).__name__}")
    return blocks


def grpo_token_terms(hidden: Any, lm_head: Any, targets: Any, old_logp: Any, ref_logp: Any,
                     advantages: Any, *, temperature: Any = 1.0, eps_low: Any = 0.2,
                     eps_high: Any = None, dual_clip: Any = None,
                     log_ratio_clamp: Any = 20.0, kl_clamp: Any = None, backend: str = "auto",
                     chunk_size: int | None = None, interpret: bool = False,
                     pallas_blocks: Any = None):
    """Per-token log-prob, entropy and GRPO quantities straight from hidden states.

    With ``backend="pallas"`` everything comes out of ONE pass of the fused kernel over the
    vocabulary tiles of ``hidden @ lm_head``; the other backends compute :func:`token_logprobs`
    and then the same elementwise maths (:func:`r1jax_kernels.grpo_terms.grpo_terms_from_logprobs`).
    The GRPO maths mirrors ``r1jax.algos`` (its one home), with which it is tested equal.

    Args:
        hidden, lm_head, targets, temperature, backend, chunk_size, interpret, pallas_blocks:
            as :func:`token_logprobs`.
        old_logp: ``[...]`` behaviour-policy log-probs of ``targets`` (constant).
        ref_logp: ``[...]`` reference-policy log-probs of ``targets``.
        advantages: broadcastable to ``targets.shape`` (constant).
        eps_low, eps_high, dual_clip, log_ratio_clamp: as
            ``r1jax.algos.losses.clipped_surrogate_loss`` (traced; ``eps_high=None`` means
            ``eps_low``; ``dual_clip=None`` is off).
        kl_clamp: as ``r1jax.algos.kl.kl_estimate``'s ``clamp`` (traced; None is off).

    Returns:
        :class:`r1jax_kernels.grpo_terms.TokenTerms` of float32 ``[...]`` arrays, unmasked:
        ``logp``, ``entropy``, ``ratio`` (constant-valued), ``policy_loss`` (negated clipped
        surrogate), ``k1``, ``k2``, ``k3``. Aggregate with ``r1jax.algos.aggregation``.

    References:
        Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), eq. 3-4; Schulman 2020,
        "Approximating KL Divergence"; Yu et al. 2025, DAPO (arXiv 2503.14476), eq. 10.
    """
    import jax.numpy as jnp

    from r1jax_kernels import grpo_terms as _terms

    hidden, lm_head, targets = _common.check_logprob_inputs(hidden, lm_head, targets)
    shape = tuple(targets.shape)
    arrays = {}
    for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("advantages", advantages)):
        x = jnp.asarray(x)
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise TypeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
        try:
            x = jnp.broadcast_to(x.astype(jnp.float32), shape)
        except ValueError:
            raise ValueError(f"{name}: shape {tuple(x.shape)} does not broadcast to the token "
                             f"shape {shape}") from None
        arrays[name] = x
    _common.check_positive("log_ratio_clamp", log_ratio_clamp)
    hp = _terms.pack_hparams(eps_low, eps_high, dual_clip, log_ratio_clamp, kl_clamp)
    which = resolve_backend(backend, interpret=interpret)
    if which == "pallas":
        from r1jax_kernels import pallas_logprobs as _pallas
        return _pallas.grpo_token_terms_pallas(
            hidden, lm_head, targets, arrays["old_logp"], arrays["ref_logp"],
            arrays["advantages"], hp, temperature=temperature,
            blocks=_pallas_blocks(pallas_blocks, chunk_size, backend), interpret=interpret)
    logp, entropy = token_logprobs(hidden, lm_head, targets, temperature=temperature,
                                   return_entropy=True, backend=which, chunk_size=chunk_size)
    terms = _terms.grpo_terms_from_logprobs(logp, arrays["old_logp"], arrays["ref_logp"], arrays["advantages"],
                                            eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip,
                                            log_ratio_clamp=log_ratio_clamp, kl_clamp=kl_clamp)
    return _terms.TokenTerms(logp, entropy, *terms)
