"""r1jax.train."""
