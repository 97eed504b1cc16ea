"""Policy losses, value loss and entropy against float64 NumPy references (values and gradients)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.algos import (POLICY_LOSSES, cispo_loss, nll_loss, aggregate_loss, clipped_surrogate_loss, clipped_value_loss,
                         entropy_from_logits, gspo_loss, policy_gradient_loss)

SETTINGS = settings(max_examples=15, deadline=None)
B, T = 4, 6


# ----------------------------------------------------------------------------- references


def np_clip_loss(logp, old_logp, adv, mask, eps_low, eps_high, dual_clip=None):
    """Per-token loss and d loss / d logp, float64, straight from PPO's min / dual-clip max."""
    loss, grad = np.zeros(logp.shape), np.zeros(logp.shape)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            a = adv[i, t]
            rho = np.exp(np.float64(logp[i, t]) - old_logp[i, t])
            clipped_rho = min(max(rho, 1 - eps_low), 1 + eps_high)
            obj, d_obj = (rho * a, rho * a) if rho * a <= clipped_rho * a else (clipped_rho * a, 0.0)
            if dual_clip is not None and a < 0 and dual_clip * a > obj:
                obj, d_obj = dual_clip * a, 0.0
            loss[i, t], grad[i, t] = -obj, -d_obj
    return loss, grad


def np_gspo_sequence_objective(logp, old_logp, adv, mask, eps_low, eps_high):
    """GSPO's sequence-level loss -(1/N) sum_i min(s_i A_i, clip(s_i) A_i) and its gradient."""
    n = mask.any(axis=1).sum()
    loss, grad = 0.0, np.zeros(logp.shape)
    for i in range(logp.shape[0]):
        length = mask[i].sum()
        if length == 0:
            continue
        s = np.exp(sum(np.float64(logp[i, t]) - old_logp[i, t] for t in range(logp.shape[1])
                       if mask[i, t]) / length)
        clipped_s = min(max(s, 1 - eps_low), 1 + eps_high)
        if s * adv[i] <= clipped_s * adv[i]:
            loss -= s * adv[i] / n
            grad[i] = np.where(mask[i], -adv[i] * s / length / n, 0.0)
        else:
            loss -= clipped_s * adv[i] / n
    return loss, grad


def np_value_loss(values, old_values, returns, mask, clip):
    loss, grad = np.zeros(values.shape), np.zeros(values.shape)
    for idx in np.ndindex(values.shape):
        if not mask[idx]:
            continue
        v, old, r = float(values[idx]), float(old_values[idx]), float(returns[idx])
        v_clip = old + min(max(v - old, -clip), clip)
        if (v_clip - r) ** 2 > (v - r) ** 2:
            loss[idx], grad[idx] = 0.5 * (v_clip - r) ** 2, 0.0
        else:
            loss[idx], grad[idx] = 0.5 * (v - r) ** 2, v - r
    return loss, grad


def np_entropy(logits, temperature):
    out = np.zeros(logits.shape[:-1])
    for idx in np.ndindex(out.shape):
        z = np.asarray(logits[idx], np.float64) / temperature
        finite = np.isfinite(z)
        p = np.exp(z[finite] - z[finite].max())
        p /= p.sum()
        out[idx] = -sum(pi * np.log(pi) for pi in p if pi > 0)
    return out


def make_inputs(seed, spread=0.4):
    rng = np.random.default_rng(seed)
    logp = rng.normal(size=(B, T)) - 2.0
    old_logp = logp + rng.normal(size=(B, T)) * spread
    adv = rng.normal(size=(B, T))
    mask = np.arange(T)[None] < rng.integers(1, T + 1, size=(B, 1))
    return (np.float32(logp), np.float32(old_logp), np.float32(adv), mask)


def per_token_grad(fn, logp, *args, **kw):
    """d(sum of per-token losses)/d logp: each token's own derivative (losses are per token)."""
    grad = jax.jit(jax.grad(lambda lp, *a: jnp.sum(fn(lp, *a, **kw).loss)))
    return grad(jnp.asarray(logp), *args)


# ----------------------------------------------------------------------------- clipped surrogate


@pytest.mark.parametrize("eps_low,eps_high,dual_clip", [(0.2, None, None), (0.2, 0.28, None),
                                                        (0.1, 0.3, 3.0), (0.2, 0.2, 1.5)])
def test_clipped_surrogate_matches_numpy(eps_low, eps_high, dual_clip):
    logp, old_logp, adv, mask = make_inputs(0, spread=0.6)
    kw = dict(eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    out = jax.jit(clipped_surrogate_loss)(logp, old_logp, adv, mask, **kw)
    want_loss, want_grad = np_clip_loss(logp, old_logp, adv, mask, eps_low,
                                        eps_low if eps_high is None else eps_high, dual_clip)
    assert out.loss.dtype == jnp.float32
    np.testing.assert_allclose(out.loss, want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_token_grad(clipped_surrogate_loss, logp, old_logp, adv, mask,
                                              **kw), want_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.ratio, np.where(mask, np.exp(logp - old_logp), 0), rtol=1e-5)
    # The diagnostics mark exactly the tokens whose gradient was cut.
    cut = (want_grad == 0) & mask & (adv != 0)
    np.testing.assert_array_equal(out.clipped_low + out.clipped_high + out.dual_clipped, cut)


def f32_exp(x):
    return np.float32(jnp.exp(jnp.float32(x)))


def just_beyond(log_ratio, direction):
    """The nearest float32 log-ratio whose float32 ratio lies strictly beyond exp(log_ratio)."""
    x = np.float32(log_ratio)
    while f32_exp(x) == f32_exp(log_ratio):
        x = np.nextafter(x, np.float32(direction))
    return x


def test_clip_boundaries_are_exact():
    """A ratio exactly on 1 - eps_low / 1 + eps_high keeps its gradient; one ulp beyond loses it."""
    lr_high, lr_low = np.float32(0.15), np.float32(-0.25)
    r_high, r_low = f32_exp(lr_high), f32_exp(lr_low)  # the float32 ratios the loss computes
    eps_high, eps_low = r_high - np.float32(1), np.float32(1) - r_low  # exact in float32
    assert np.float32(1) + eps_high == r_high and np.float32(1) - eps_low == r_low
    beyond_high, beyond_low = just_beyond(lr_high, 1.0), just_beyond(lr_low, -1.0)
    old = np.zeros((1, 8), np.float32)
    logp = np.array([[lr_high, beyond_high, lr_low, beyond_low,
                      lr_high, beyond_high, lr_low, beyond_low]], np.float32)
    adv = np.array([[1.0, 1.0, -1.0, -1.0,   # clipped side
                     -1.0, -1.0, 1.0, 1.0]], np.float32)  # unclipped side: always a gradient
    out = jax.jit(clipped_surrogate_loss)(logp, old, adv, eps_low=eps_low, eps_high=eps_high)
    grad = per_token_grad(clipped_surrogate_loss, logp, old, adv, eps_low=eps_low, eps_high=eps_high)
    ratio = np.exp(logp.astype(np.float64))
    np.testing.assert_array_equal(out.clipped_high[0], [0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.clipped_low[0], [0, 0, 0, 1, 0, 0, 0, 0])
    want_grad = -adv[0] * ratio[0] * np.array([1, 0, 1, 0, 1, 1, 1, 1])
    np.testing.assert_allclose(grad[0], want_grad, rtol=1e-6)
    # Loss value: at the boundary ratio * A == clip * A; beyond it, the clip value.
    np.testing.assert_allclose(out.loss[0, :4], [-r_high, -(1 + eps_high), r_low, 1 - eps_low],
                               rtol=1e-6)


def test_dual_clip_boundary_and_gradient():
    lr = np.float32(np.log(3.0))
    c = at = f32_exp(lr)  # the boundary, exact in float32
    logp = np.array([[lr, just_beyond(lr, 2.0), np.float32(2.0)]], np.float32)
    adv = -np.ones((1, 3), np.float32)
    out = jax.jit(clipped_surrogate_loss)(logp, np.zeros_like(logp), adv, dual_clip=c)
    grad = per_token_grad(clipped_surrogate_loss, logp, np.zeros_like(logp), adv, dual_clip=c)
    np.testing.assert_array_equal(out.dual_clipped[0], [0, 1, 1])
    np.testing.assert_allclose(grad[0], [at, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out.loss[0], [c, c, c], rtol=1e-6)  # loss bounded by c * |A|


@jax.jit
@jax.grad
def clip_grad(logp, old_logp, adv, mask, eps_low, eps_high):
    """Per-token d loss / d logp with traced clip ranges: compiled once for every example."""
    return jnp.sum(clipped_surrogate_loss(logp, old_logp, adv, mask, eps_low=eps_low,
                                          eps_high=eps_high).loss)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 0.5), st.floats(0.01, 0.5))
def test_gradient_zero_outside_trust_region_on_clipped_side(seed, eps_low, eps_high):
    logp, old_logp, adv, mask = make_inputs(seed, spread=0.8)
    grad = np.asarray(clip_grad(logp, old_logp, adv, mask, eps_low, eps_high))
    ratio = np.exp(np.asarray(jnp.asarray(logp) - jnp.asarray(old_logp)))
    outside = mask & (((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low)))
    inside = mask & ~outside & (adv != 0)
    np.testing.assert_array_equal(grad[outside], 0.0)
    np.testing.assert_allclose(grad[inside], (-adv * ratio)[inside], rtol=1e-5)
    np.testing.assert_array_equal(grad[~mask], 0.0)


def test_vmap_over_eps_equals_python_loop_and_does_not_retrace():
    logp, old_logp, adv, mask = make_inputs(3, spread=0.6)

    def total(eps):
        out = clipped_surrogate_loss(logp, old_logp, adv, mask, eps_low=eps, eps_high=eps)
        return aggregate_loss(out.loss, mask, "token_mean")

    eps = jnp.array([0.05, 0.1, 0.2, 0.3])
    swept = jax.jit(jax.vmap(total))(eps)
    for k, e in enumerate([0.05, 0.1, 0.2, 0.3]):
        np.testing.assert_allclose(swept[k], jax.jit(total)(e), rtol=1e-6)
        want = np_clip_loss(logp, old_logp, adv, mask, e, e)[0].sum() / mask.sum()
        np.testing.assert_allclose(swept[k], want, rtol=1e-5)

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(eps_low, eps_high, dual_clip):
        return clipped_surrogate_loss(logp, old_logp, adv, mask, eps_low=eps_low,
                                      eps_high=eps_high, dual_clip=dual_clip).loss

    for eps_low, eps_high, c in [(0.2, 0.28, 3.0), (0.1, 0.1, 2.0), (0.3, 0.5, 10.0)]:
        np.testing.assert_allclose(run(eps_low, eps_high, c),
                                   np_clip_loss(logp, old_logp, adv, mask, eps_low, eps_high, c)[0],
                                   rtol=1e-5, atol=1e-6)


def test_log_ratio_is_clamped_and_padding_never_leaks():
    logp = np.array([[-1.0, 50.0, -np.inf, np.nan]], np.float32)
    old = np.array([[-1.0, 0.0, -np.inf, 0.0]], np.float32)
    adv = np.ones((1, 4), np.float32)
    mask = np.array([[True, True, False, False]])
    for name, fn in POLICY_LOSSES.items():
        out = jax.jit(fn)(logp, old, adv, mask)
        grad = per_token_grad(fn, logp, old, adv, mask)
        assert np.all(np.isfinite(out.loss)) and np.all(np.isfinite(grad)), name
        np.testing.assert_array_equal(np.asarray(grad)[0, 2:], 0.0, err_msg=name)
        np.testing.assert_array_equal(np.asarray(out.loss)[0, 2:], 0.0, err_msg=name)
        if name != "nll":  # supervised: no ratio
            np.testing.assert_allclose(out.ratio[0, 1], np.exp(np.float32(20.0)), rtol=1e-6, err_msg=name)
    small = jax.jit(clipped_surrogate_loss)(logp, old, adv, mask, log_ratio_clamp=1.0)
    np.testing.assert_allclose(small.ratio[0, 1], np.e, rtol=1e-6)


# ----------------------------------------------------------------------------- GSPO and PG


@pytest.mark.parametrize("eps_low,eps_high", [(3e-4, 4e-4), (0.05, 0.08)])
def test_gspo_equals_sequence_level_objective(eps_low, eps_high):
    logp, old_logp, _, mask = make_inputs(4, spread=0.05)
    adv_seq = np.float32(np.random.default_rng(5).normal(size=B))

    def loss(lp):
        out = gspo_loss(lp, old_logp, adv_seq, mask, eps_low=eps_low, eps_high=eps_high)
        return aggregate_loss(out.loss, mask, "seq_mean_token_mean")

    want_loss, want_grad = np_gspo_sequence_objective(logp, old_logp, adv_seq, mask, eps_low,
                                                      eps_high)
    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(logp))
    np.testing.assert_allclose(value, want_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    out = jax.jit(gspo_loss)(logp, old_logp, adv_seq, mask, eps_low=eps_low, eps_high=eps_high)
    seq_ratio = np.exp(np.where(mask, logp - old_logp, 0).sum(1) / mask.sum(1))
    np.testing.assert_allclose(out.ratio, np.where(mask, seq_ratio[:, None], 0), rtol=1e-5)
    # Some sequences are clipped in the first case and the clip indicator says which.
    clipped = ((adv_seq > 0) & (seq_ratio > 1 + eps_high)) | ((adv_seq < 0) & (seq_ratio < 1 - eps_low))
    np.testing.assert_array_equal((out.clipped_low + out.clipped_high).max(1), clipped)


def test_gspo_token_form_with_token_advantages():
    """GSPO-token (eq. 13-14): value s_i, gradient s_i * grad logp_t per token."""
    logp, old_logp, adv, mask = make_inputs(6, spread=0.01)
    eps = 0.5  # wide: nothing clipped
    grad = per_token_grad(gspo_loss, logp, old_logp, adv, mask, eps_low=eps, eps_high=eps)
    s = np.exp(np.where(mask, logp.astype(np.float64) - old_logp, 0).sum(1) / mask.sum(1))
    np.testing.assert_allclose(grad, np.where(mask, -adv * s[:, None], 0), rtol=1e-5, atol=1e-7)


def test_policy_gradient_matches_numpy():
    logp, old_logp, adv, mask = make_inputs(7)
    out = jax.jit(policy_gradient_loss)(logp, old_logp, adv, mask)
    np.testing.assert_allclose(out.loss, np.where(mask, -adv * logp.astype(np.float64), 0),
                               rtol=1e-6)
    np.testing.assert_allclose(per_token_grad(policy_gradient_loss, logp, old_logp, adv, mask),
                               np.where(mask, -adv, 0), rtol=1e-6)
    # One advantage per sequence broadcasts over its tokens; old_logp None gives ratio 1.
    per_seq = jax.jit(policy_gradient_loss)(logp, None, adv[:, 0], mask)
    np.testing.assert_allclose(per_seq.loss, np.where(mask, -adv[:, :1] * logp, 0), rtol=1e-6)
    np.testing.assert_array_equal(per_seq.ratio, mask.astype(np.float32))
    assert dict(POLICY_LOSSES) == {"clip": clipped_surrogate_loss, "gspo": gspo_loss, "pg": policy_gradient_loss,
                                   "cispo": cispo_loss, "nll": nll_loss}


# ----------------------------------------------------------------------------- value, entropy


@pytest.mark.parametrize("clip", [0.2, 0.0, 1.0])
def test_clipped_value_loss_matches_numpy(clip):
    rng = np.random.default_rng(8)
    values = np.float32(rng.normal(size=(B, T)))
    old_values = np.float32(values + rng.normal(size=(B, T)) * 0.5)
    returns = np.float32(rng.normal(size=(B, T)))
    mask = rng.random((B, T)) > 0.2
    out = jax.jit(clipped_value_loss)(values, old_values, returns, mask, clip=clip)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(clipped_value_loss(v, old_values, returns, mask,
                                                         clip=clip).loss)))(jnp.asarray(values))
    want_loss, want_grad = np_value_loss(values, old_values, returns, mask, clip)
    np.testing.assert_allclose(out.loss, want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.clipped, (want_grad == 0) & mask & (values != returns))
    unclipped = jax.jit(clipped_value_loss)(values, old_values, returns, mask, clip=None)
    np.testing.assert_allclose(unclipped.loss, np.where(mask, 0.5 * (values - returns) ** 2, 0),
                               rtol=1e-6)


def test_entropy_matches_numpy_and_is_stable():
    rng = np.random.default_rng(9)
    logits = np.float32(rng.normal(size=(3, 4, 11)) * 3)
    logits[0, 0, :5] = -np.inf  # banned tokens
    for temperature in (1.0, 0.7):
        got = jax.jit(entropy_from_logits)(logits, temperature)
        assert got.shape == (3, 4) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, np_entropy(logits, temperature), rtol=1e-5, atol=1e-5)
    # Huge logits (naive exp overflows; logsumexp(z) - E[z] would cancel to ~1e-3 in float32).
    # At temperature 1 the float32 logits are exact, so the answer is known to float32 accuracy.
    logits[1, 1] = 1e4 + np.arange(11)
    got = jax.jit(entropy_from_logits)(logits, 1.0)
    np.testing.assert_allclose(got, np_entropy(logits, 1.0), rtol=1e-5, atol=1e-5)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(entropy_from_logits(x))))(jnp.asarray(logits))
    assert np.all(np.isfinite(grad))
    uniform = jax.jit(entropy_from_logits)(np.zeros((2, 8), np.float32))
    np.testing.assert_allclose(uniform, np.log(8.0), rtol=1e-6)
    bf16 = jax.jit(entropy_from_logits)(jnp.asarray(logits[2], jnp.bfloat16))
    assert bf16.dtype == jnp.float32


def test_bad_inputs_name_the_field():
    logp, old_logp, adv, mask = make_inputs(10)
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate_loss(logp, old_logp, adv[:, :2], mask)
    with pytest.raises(ValueError, match="old_logp"):
        clipped_surrogate_loss(logp, old_logp[:, :2], adv, mask)
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate_loss(logp, old_logp, adv, mask[:2])
    with pytest.raises(ValueError, match="eps_low"):
        clipped_surrogate_loss(logp, old_logp, adv, eps_low=1.5)
    with pytest.raises(ValueError, match="eps_high"):
        gspo_loss(logp, old_logp, adv, eps_high=-0.1)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate_loss(logp, old_logp, adv, dual_clip=0.5)
    with pytest.raises(ValueError, match="logp"):
        clipped_surrogate_loss(logp[0], old_logp[0], adv[0])
    with pytest.raises(ValueError, match="returns"):
        clipped_value_loss(logp, logp, logp[:, :2])
    with pytest.raises(ValueError, match="clip"):
        clipped_value_loss(logp, logp, logp, clip=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        entropy_from_logits(logp, 0.0)


# ----------------------------------------------------------------------------- CISPO


def test_cispo_equals_a_float64_reference_in_value_and_gradient():
    rng = np.random.default_rng(5)
    logp = (rng.normal(size=(3, 6)) - 1.5).astype(np.float32)
    old = (logp + rng.normal(size=(3, 6)) * 0.4).astype(np.float32)
    adv = rng.normal(size=(3,)).astype(np.float32)
    mask = rng.random((3, 6)) > 0.2
    eps_low, eps_high = 0.9, 0.25
    ratio = np.exp(logp.astype(np.float64) - old)
    weight = np.clip(ratio, 1 - eps_low, 1 + eps_high)
    expected_loss = np.where(mask, -weight * adv[:, None] * logp, 0.0)
    expected_grad = np.where(mask, -weight * adv[:, None], 0.0)  # the weight is a constant: d/dlogp = -w A
    out = jax.jit(lambda *a: cispo_loss(*a, eps_low=eps_low, eps_high=eps_high))(logp, old, adv, mask)
    np.testing.assert_allclose(out.loss, expected_loss, rtol=1e-5, atol=1e-6)
    grad = per_token_grad(lambda *a: cispo_loss(*a, eps_low=eps_low, eps_high=eps_high), logp, old, adv, mask)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.clipped_high, (ratio > 1 + eps_high) & mask)
    assert out.clipped_high.sum() > 0  # the case exercises the clip, and clipped tokens keep their gradient
    assert np.all(np.asarray(grad)[np.asarray(out.clipped_high, bool)] != 0)
