"""r1jax.data: tasks (synthetic + file datasets), prompt templates, tokenizers, batching.

- :mod:`~r1jax.data.tokenizer`: ``load_tokenizer(dir)``, ``Tokenizer``, ``build_char_tokenizer``.
- :mod:`~r1jax.data.templates`: the R1-Zero template, chat templates, completion formats.
- :mod:`~r1jax.data.synthetic`: arithmetic and Countdown generators with held-out splits.
- :mod:`~r1jax.data.domains`: tiny logic, STEM multiple-choice, code and general tasks (one per domain).
- :mod:`~r1jax.data.mixture`: weighted task mixtures with domain / verifier tags, ``domain_metrics``.
- :mod:`~r1jax.data.files`: JSONL / Parquet question-answer files (GSM8K, MATH).
- :mod:`~r1jax.data.factory`: ``DataConfig``, ``make_dataset``, ``register_task``.
- :mod:`~r1jax.data.iterator`: ``PromptIterator`` with ``state()`` / ``restore()``.
- :mod:`~r1jax.data.batching`: left-padded prompts, padded or packed training rows.
"""

from r1jax.data.batching import (
    PromptBatch,
    TokenBatch,
    expand_groups,
    microbatch_slices,
    pack_sequences,
    pad_prompts,
    pad_sequences,
)
from r1jax.data.domains import CodeTask, GeneralTask, LogicTask, StemChoiceTask
from r1jax.data.factory import TASK_REWARDS, TASKS, DataConfig, make_dataset, register_task
from r1jax.data.files import FieldMap, FileDataset, load_jsonl, load_parquet, split_gsm8k_answer
from r1jax.data.iterator import PromptIterator
from r1jax.data.mixture import MixtureDataset, MixtureEntry, domain_metrics
from r1jax.data.synthetic import ArithmeticTask, CountdownTask, SyntheticDataset, is_heldout
from r1jax.data.templates import (
    PROMPT_TEMPLATES,
    R1_ZERO_TEMPLATE,
    encode_prompt,
    encode_prompts,
    encode_sft,
    format_cold_start,
    format_r1_zero,
    render_prompt,
    sft_completion,
)
from r1jax.data.tokenizer import Tokenizer, build_char_tokenizer, load_tokenizer, render_chat_template

__all__ = [
    "ArithmeticTask",
    "CodeTask",
    "CountdownTask",
    "DataConfig",
    "FieldMap",
    "FileDataset",
    "GeneralTask",
    "LogicTask",
    "MixtureDataset",
    "MixtureEntry",
    "PROMPT_TEMPLATES",
    "PromptBatch",
    "PromptIterator",
    "R1_ZERO_TEMPLATE",
    "StemChoiceTask",
    "SyntheticDataset",
    "TASKS",
    "TASK_REWARDS",
    "TokenBatch",
    "Tokenizer",
    "build_char_tokenizer",
    "domain_metrics",
    "encode_prompt",
    "encode_prompts",
    "encode_sft",
    "expand_groups",
    "format_cold_start",
    "format_r1_zero",
    "is_heldout",
    "load_jsonl",
    "load_parquet",
    "load_tokenizer",
    "make_dataset",
    "microbatch_slices",
    "pack_sequences",
    "pad_prompts",
    "pad_sequences",
    "register_task",
    "render_chat_template",
    "render_prompt",
    "sft_completion",
    "split_gsm8k_answer",
]
