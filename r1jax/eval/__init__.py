"""r1jax.eval."""
