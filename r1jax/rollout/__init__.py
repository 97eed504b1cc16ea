"""r1jax.rollout."""
