"""Fused GRPO token terms equal r1jax.algos (the one home of that maths) on reference log-probs.

The Pallas kernel computes ratio / clipped-surrogate loss / k1, k2, k3 inside the kernel; the
other backends apply the same elementwise function to their log-probs. Both are checked,
in values and in gradients w.r.t. hidden and lm_head, against ``r1jax.algos`` functions applied
to the reference backend's log-probs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_testutil import assert_close, make_inputs
from r1jax.algos.kl import kl_estimate
from r1jax.algos.losses import clipped_surrogate_loss
from r1jax_kernels import grpo_terms_from_logprobs, grpo_token_terms, token_logprobs
from r1jax_kernels.pallas_logprobs import PallasBlocks

SHAPE, D, V = (3, 7), 24, 37
HP = dict(eps_low=0.2, eps_high=0.28, dual_clip=1.3, log_ratio_clamp=20.0, kl_clamp=0.04)
FIELDS = ("logp", "entropy", "ratio", "policy_loss", "k1", "k2", "k3")


def _setup():
    h, w, y = make_inputs(20, SHAPE, D, V)
    rng = np.random.default_rng(21)
    logp = token_logprobs(h, w, y, temperature=0.9, backend="reference")
    # Behaviour / reference log-probs near the current ones: ratios in ~[0.5, 2] so that the low,
    # high and dual clips and the KL clamp are all active somewhere.
    old = logp + jnp.asarray(rng.uniform(-0.7, 0.7, SHAPE), jnp.float32)
    ref = logp + jnp.asarray(rng.uniform(-0.5, 0.5, SHAPE), jnp.float32)
    adv = jnp.asarray(rng.choice([-1.5, -0.5, 0.5, 1.5], (SHAPE[0], 1)), jnp.float32)
    coef = {f: jnp.asarray(rng.uniform(-1, 1, SHAPE), jnp.float32) for f in FIELDS}
    return h, w, y, old, ref, adv, coef


def _algos_terms(h, w, y, old, ref, adv):
    """The expected values: r1jax.algos on the reference backend's log-probs."""
    logp, ent = token_logprobs(h, w, y, temperature=0.9, return_entropy=True, backend="reference")
    pl = clipped_surrogate_loss(logp, old, jnp.broadcast_to(adv, SHAPE), eps_low=HP["eps_low"],
                                eps_high=HP["eps_high"], dual_clip=HP["dual_clip"],
                                log_ratio_clamp=HP["log_ratio_clamp"])
    kls = [kl_estimate(logp, ref, kind=k, log_ratio_clamp=HP["log_ratio_clamp"],
                       clamp=HP["kl_clamp"]) for k in ("k1", "k2", "k3")]
    return dict(zip(FIELDS, (logp, ent, pl.ratio, pl.loss, *kls))), pl


def _loss(terms, coef):
    return sum(jnp.sum(coef[f] * terms[f]) for f in FIELDS)


@pytest.mark.parametrize("backend", ["chunked", "pallas"])
def test_fused_terms_equal_algos_in_values_and_gradients(backend):
    h, w, y, old, ref, adv, coef = _setup()
    kw = dict(interpret=True, pallas_blocks=PallasBlocks(16, 16, 16)) if backend == "pallas" else {}

    def fused(h, w):
        t = grpo_token_terms(h, w, y, old, ref, adv, temperature=0.9, backend=backend, **kw, **HP)
        return t._asdict()

    def expected(h, w):
        return _algos_terms(h, w, y, old, ref, adv)[0]

    run = lambda f: jax.jit(lambda h, w: (f(h, w), jax.grad(lambda h, w: _loss(f(h, w), coef),
                                                            argnums=(0, 1))(h, w)))
    (got, g_got), (want, g_want) = run(fused)(h, w), run(expected)(h, w)
    for f in FIELDS:
        assert_close(got[f], want[f], 1e-5, f)
    for name, a, b in zip(("d hidden", "d lm_head"), g_got, g_want):
        assert_close(a, b, 1e-5, name)

    # The test data really exercises every branch of the clipped objective and the KL clamp.
    pl = _algos_terms(h, w, y, old, ref, adv)[1]
    assert pl.clipped_low.sum() > 0 and pl.clipped_high.sum() > 0 and pl.dual_clipped.sum() > 0
    assert np.any(np.abs(np.asarray(want["k3"])) == HP["kl_clamp"])


def test_elementwise_terms_default_hyperparameters_equal_algos():
    rng = np.random.default_rng(3)
    logp = jnp.asarray(rng.uniform(-4, 0, (4, 5)), jnp.float32)
    old = logp + jnp.asarray(rng.uniform(-0.6, 0.6, (4, 5)), jnp.float32)
    ref = logp + jnp.asarray(rng.uniform(-30, 30, (4, 5)), jnp.float32)  # hits the log-ratio clamp
    adv = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)

    @jax.jit
    def both(logp):
        got = grpo_terms_from_logprobs(logp, old, ref, adv)
        pl = clipped_surrogate_loss(logp, old, adv)
        kls = [kl_estimate(logp, ref, kind=k) for k in ("k1", "k2", "k3")]
        g = jax.grad(lambda lp: jnp.sum(grpo_terms_from_logprobs(lp, old, ref, adv)[1]))(logp)
        g_want = jax.grad(lambda lp: jnp.sum(clipped_surrogate_loss(lp, old, adv).loss))(logp)
        return got, (pl.ratio, pl.loss, *kls), g, g_want

    got, want, g, g_want = both(logp)
    for name, a, b in zip(("ratio", "policy_loss", "k1", "k2", "k3"), got, want):
        assert_close(a, b, 1e-6, name)
    assert_close(g, g_want, 1e-6)


def test_bad_terms_inputs_name_the_field():
    h, w, y, old, ref, adv, _ = _setup()
    with pytest.raises(ValueError, match="old_logp: shape"):
        grpo_token_terms(h, w, y, old[:, :3], ref, adv, backend="chunked")
    with pytest.raises(TypeError, match="advantages"):
        grpo_token_terms(h, w, y, old, ref, jnp.zeros(SHAPE, bool), backend="chunked")
    with pytest.raises(ValueError, match="log_ratio_clamp"):
        grpo_token_terms(h, w, y, old, ref, adv, backend="chunked", log_ratio_clamp=0.0)
