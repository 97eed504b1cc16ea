"""r1jax.data."""
