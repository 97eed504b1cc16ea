"""r1jax.eval: evaluation maths and statistics (host-side NumPy, no JAX).

* pass@k, the unbiased estimator of Chen et al. (2021): :func:`pass_at_k`, :func:`mean_pass_at_k`.
* Majority voting and cons@k (DeepSeek-R1 reports cons@64): :func:`majority_vote`,
  :func:`majority_correct`, :func:`cons_at_k`.
* Confidence intervals for accuracies over seeds and problems: :func:`t_interval`,
  :func:`welch_interval`, :func:`wilson_interval` (Student-t quantiles from scipy.stats:
  :func:`t_quantile`, :func:`t_cdf`).
* Response length and reflection-word statistics: :func:`length_stats`,
  :func:`reflection_counts`, :func:`reflection_stats`, :data:`REFLECTION_WORDS`.
* :func:`evaluate`: completions + references -> dict of metrics (used by ``r1jax eval``).
"""

from r1jax.eval.completions import (REFLECTION_WORDS, length_stats, reflection_counts,
                                    reflection_stats)
from r1jax.eval.evaluation import evaluate, grade_samples
from r1jax.eval.passk import mean_pass_at_k, pass_at_k
from r1jax.eval.stats import (Interval, normal_quantile, t_cdf, t_interval, t_quantile,
                              welch_interval, wilson_interval)
from r1jax.eval.voting import cons_at_k, majority_correct, majority_vote, string_equal

__all__ = [
    "REFLECTION_WORDS", "length_stats", "reflection_counts", "reflection_stats",
    "evaluate", "grade_samples",
    "mean_pass_at_k", "pass_at_k",
    "Interval", "normal_quantile", "t_cdf", "t_interval", "t_quantile", "welch_interval",
    "wilson_interval",
    "cons_at_k", "majority_correct", "majority_vote", "string_equal",
]
