"""r1jax.algos."""
