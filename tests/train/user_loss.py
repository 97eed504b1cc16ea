"""A policy loss registered from outside r1jax (imported through the config key run.imports)."""

from r1jax.algos import clipped_surrogate_loss, register_policy_loss


@register_policy_loss("tripled_clip")
def tripled_clip(logp, old_logp, advantages, mask, *, eps_low, eps_high, log_ratio_clamp):
    """Three times the clipped surrogate: a loss whose effect a test can recognise."""
    out = clipped_surrogate_loss(logp, old_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high,
                                 log_ratio_clamp=log_ratio_clamp)
    return out._replace(loss=3.0 * out.loss)
