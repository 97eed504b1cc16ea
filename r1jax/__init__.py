"""r1jax: the reinforcement-learning recipe of DeepSeek-R1 in pure-functional JAX."""

__version__ = "0.1.0"
