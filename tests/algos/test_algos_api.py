"""Every public function of r1jax.algos: same result eager and under jit; float32 out; exported."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import algos

rng = np.random.default_rng(0)
N, G, B, T = 2, 3, 6, 5
REWARDS = np.float32(rng.normal(size=(N, G)))
GROUP_MASK = np.array([[True, True, False], [True, True, True]])
LOGP = np.float32(rng.normal(size=(B, T)) - 2)
OLD = np.float32(LOGP + rng.normal(size=(B, T)) * 0.3)
ADV = np.float32(rng.normal(size=(B, T)))
MASK = np.arange(T)[None] < np.array([[5], [3], [1], [4], [5], [2]])
STEP_MASK = rng.random((N, G, T)) > 0.5

# name -> function of the traced arrays/numbers only (string options closed over = static).
CASES = {
    "grpo_advantages": (lambda r, m, e: algos.grpo_advantages(r, m, std_scaling="batch", eps=e),
                        (REWARDS, GROUP_MASK, 1e-4)),
    "drgrpo_advantages": (algos.drgrpo_advantages, (REWARDS, GROUP_MASK)),
    "rloo_advantages": (algos.rloo_advantages, (REWARDS, GROUP_MASK)),
    "process_advantages": (lambda r, s, e: algos.process_advantages(r, s, eps=e),
                           (np.float32(rng.normal(size=(N, G, T))), STEP_MASK, 1e-3)),
    "reinforce_pp_advantages": (lambda r, m, g: algos.reinforce_pp_advantages(r, m, gamma=g),
                                (ADV, MASK, 0.9)),
    "gae_advantages": (lambda r, v, m, g, l: algos.gae_advantages(r, v, m, gamma=g, lam=l),
                       (ADV, LOGP, MASK, 0.99, 0.95)),
    "discounted_returns": (lambda r, m, g: algos.discounted_returns(r, m, gamma=g), (ADV, MASK, 0.9)),
    "broadcast_to_tokens": (algos.broadcast_to_tokens, (ADV[:, 0], MASK)),
    "last_token_values": (algos.last_token_values, (ADV[:, 0], MASK)),
    "clipped_surrogate_loss": (
        lambda lp, o, a, m, el, eh, c: algos.clipped_surrogate_loss(
            lp, o, a, m, eps_low=el, eps_high=eh, dual_clip=c),
        (LOGP, OLD, ADV, MASK, 0.2, 0.28, 3.0)),
    "gspo_loss": (lambda lp, o, a, m, e: algos.gspo_loss(lp, o, a, m, eps_low=e, eps_high=e),
                  (LOGP, OLD, ADV[:, 0], MASK, 0.05)),
    "policy_gradient_loss": (algos.policy_gradient_loss, (LOGP, OLD, ADV, MASK)),
    "cispo_loss": (lambda lp, o, a, m, el, eh: algos.cispo_loss(lp, o, a, m, eps_low=el, eps_high=eh),
                   (LOGP, OLD, ADV, MASK, 1.0, 0.3)),
    "nll_loss": (lambda lp, m: algos.nll_loss(lp, None, None, m), (LOGP, MASK)),
    "whiten": (lambda x, m, e: algos.whiten(x, m, eps=e), (ADV, MASK, 1e-8)),
    "clipped_value_loss": (lambda v, o, r, m, c: algos.clipped_value_loss(v, o, r, m, clip=c),
                           (LOGP, OLD, ADV, MASK, 0.2)),
    "entropy_from_logits": (algos.entropy_from_logits, (np.float32(rng.normal(size=(B, T, 7))), 0.7)),
    "truncated_is_weights": (
        lambda t, r, m, c: algos.truncated_is_weights(t, r, m, cap=c, level="sequence", mode="mask"),
        (LOGP, OLD, MASK, 1.5)),
    "kl_estimate": (lambda lp, r, m, c: algos.kl_estimate(lp, r, m, kind="k3", clamp=c),
                    (LOGP, OLD, MASK, 10.0)),
    "kl_penalty_rewards": (lambda s, k, m, b: algos.kl_penalty_rewards(s, k, m, beta=b),
                           (ADV[:, 0], OLD, MASK, 0.05)),
    "aggregate_loss": (
        lambda x, m, d: algos.aggregate_loss(x, m, "seq_mean_token_sum_norm", denominator=d),
        (LOGP, MASK, 40.0)),
    "loss_numerator": (lambda x, m: algos.loss_numerator(x, m, "seq_mean_token_mean"), (LOGP, MASK)),
    "token_weights": (lambda m: algos.token_weights(m, "seq_mean_token_mean"), (MASK,)),
    "loss_denominator": (lambda m, L: algos.loss_denominator(m, "seq_mean_token_sum_norm", max_len=L),
                         (MASK, 16.0)),
    "overlong_penalty": (lambda n, L, c: algos.overlong_penalty(n, max_len=L, cache_len=c),
                         (np.array([3, 14, 17, 30]), 20.0, 8.0)),
    "apply_overlong_penalty": (
        lambda r, n, L, c: algos.apply_overlong_penalty(r, n, max_len=L, cache_len=c),
        (np.ones(4, np.float32), np.array([3, 14, 17, 30]), 20.0, 8.0)),
    "dynamic_sampling_mask": (algos.dynamic_sampling_mask, (REWARDS, GROUP_MASK)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_equals_eager(name):
    fn, args = CASES[name]
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert e.dtype in (jnp.float32, jnp.bool_), (name, e.dtype)
        np.testing.assert_allclose(np.asarray(j, np.float64), np.asarray(e, np.float64),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_every_public_function_is_covered_and_exported():
    functions = {n for n in algos.__all__ if callable(getattr(algos, n))
                 and not isinstance(getattr(algos, n), type) and not n.isupper()
                 and n not in ("k1", "k2", "k3") and not n.startswith("register_")}
    assert functions == set(CASES)
    for name in algos.__all__:
        assert hasattr(algos, name), name


def test_every_public_function_documents_args_returns_references():
    import inspect

    for name in algos.__all__:
        obj = getattr(algos, name)
        if callable(obj) and not isinstance(obj, type) and not name.startswith("register_"):
            doc = inspect.getdoc(obj) or ""
            for section in ("Args:", "Returns:", "References:"):
                assert section in doc, f"{name}: docstring lacks {section}"
