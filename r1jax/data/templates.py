"""Prompt templates and completion formats.

Prompt templates (by name, see :data:`PROMPT_TEMPLATES`):

- ``"r1_zero"``: the DeepSeek-R1-Zero template, verbatim from the paper (Table 1), with the question
  in place of ``prompt``.
- ``"plain"``: the question text alone (the tiny CPU models: a character-level model pays for every
  character of the ~400-character R1-Zero preamble in context length).
- ``"chat"``: the question as a user message (after an optional system message) rendered with the
  tokenizer's own Jinja chat template, ending with the assistant header.

Completion formats (what a policy is trained to write, and what SFT targets look like):

- R1-Zero: ``<think> reasoning </think> <answer> answer </answer>`` (Table 1).
- Cold start (§2.3.1): the paper writes it as ``|special_token|<reasoning_process>|special_token|<summary>``
  without naming the token. r1jax realises the two ``|special_token|`` marks as the pair
  ``<think>`` / ``</think>`` (single tokens in the char tokenizer, and the delimiters DeepSeek's released
  R1 models use): ``<think>\\n{reasoning}\\n</think>\\n\\n{summary}``. The delimiters are arguments.
  :func:`sft_completion` fills the summary with ``<answer> answer </answer>`` so the same rule-based
  rewards score both formats.

References:
  DeepSeek-AI, "DeepSeek-R1: Incentivizing Reasoning Capability in LLMs via Reinforcement Learning",
  arXiv 2501.12948, Table 1 and §2.3.1.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from r1jax.data.tokenizer import Tokenizer

__all__ = [
    "R1_ZERO_TEMPLATE",
    "PROMPT_TEMPLATES",
    "render_prompt",
    "encode_prompt",
    "encode_prompts",
    "format_r1_zero",
    "format_cold_start",
    "sft_completion",
    "encode_sft",
]

# DeepSeek-R1 paper, Table 1 (verbatim; "{prompt}" stands for the paper's "prompt").
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)

# Text templates: "{prompt}" is replaced by the question (str.replace, so braces in LaTeX questions are safe).
PROMPT_TEMPLATES: dict[str, str | None] = {
    "r1_zero": R1_ZERO_TEMPLATE,
    "plain": "{prompt}",
    "chat": None,  # the tokenizer's chat template
}


def _check_template(template: str) -> None:
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(PROMPT_TEMPLATES)}")


def _question(example_or_question: Mapping[str, Any] | str) -> str:
    if isinstance(example_or_question, str):
        return example_or_question
    if isinstance(example_or_question, Mapping) and isinstance(example_or_question.get("prompt"), str):
        return example_or_question["prompt"]
    raise TypeError(f"expected a question string or an example dict with a 'prompt' string, got {example_or_question!r}")


def render_prompt(
    question: Mapping[str, Any] | str,
    template: str = "r1_zero",
    *,
    tokenizer: Tokenizer | None = None,
    system_prompt: str | None = None,
) -> str:
    """The prompt text of a question under a named template.

    Args:
      question: the question text, or an example dict (its ``"prompt"``).
      template: a name in :data:`PROMPT_TEMPLATES`.
      tokenizer: required for ``"chat"`` (its chat template).
      system_prompt: an optional system message (``"chat"`` only).

    Returns:
      The text the policy continues.

    References:
      DeepSeek-R1 (arXiv 2501.12948), Table 1.
    """
    _check_template(template)
    q = _question(question)
    if template == "chat":
        if tokenizer is None:
            raise ValueError("prompt template 'chat' needs a tokenizer (its chat_template)")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
            {"role": "user", "content": q}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if system_prompt is not None:
        raise ValueError(f"system_prompt is only used by the 'chat' template, not {template!r}")
    return PROMPT_TEMPLATES[template].replace("{prompt}", q)


def encode_prompt(
    question: Mapping[str, Any] | str,
    tokenizer: Tokenizer,
    template: str = "r1_zero",
    *,
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> list[int]:
    """Token ids of a rendered prompt.

    Text templates are encoded with the tokenizer's special tokens (a BOS where the tokenizer adds
    one); a rendered chat template already contains them and is encoded without.

    Args:
      question: question text or example dict.
      tokenizer: the policy's tokenizer.
      template: a name in :data:`PROMPT_TEMPLATES`.
      system_prompt: optional system message (``"chat"``).
      max_length: if given, a longer prompt raises ValueError (naming the example id when known).

    Returns:
      A list of ids.
    """
    text = render_prompt(question, template, tokenizer=tokenizer, system_prompt=system_prompt)
    ids = tokenizer.encode(text, add_special_tokens=template != "chat")
    if max_length is not None and len(ids) > max_length:
        _too_long(question, len(ids), template, max_length)
    return ids


def encode_prompts(
    examples: Sequence[Mapping[str, Any] | str],
    tokenizer: Tokenizer,
    template: str = "r1_zero",
    *,
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> list[list[int]]:
    """:func:`encode_prompt` over a batch of examples (one batched call to the tokenizer)."""
    texts = [render_prompt(e, template, tokenizer=tokenizer, system_prompt=system_prompt) for e in examples]
    ids = tokenizer.encode_batch(texts, add_special_tokens=template != "chat") if texts else []
    if max_length is not None:
        for e, row in zip(examples, ids):
            if len(row) > max_length:
                _too_long(e, len(row), template, max_length)
    return ids


def _too_long(question: Mapping[str, Any] | str, n: int, template: str, max_length: int):
    name = question.get("id", "") if isinstance(question, Mapping) else ""
    label = f"example {name!r}" if name else f"prompt {_question(question)[:40]!r}"
    raise ValueError(f"{label} is {n} tokens with template {template!r}; max_length is {max_length}")


def format_r1_zero(reasoning: str, answer: str) -> str:
    """The R1-Zero completion ``<think> reasoning </think> <answer> answer </answer>`` (Table 1)."""
    return f"<think> {reasoning} </think> <answer> {answer} </answer>"


def format_cold_start(
    reasoning: str, summary: str, *, open_token: str = "<think>", close_token: str = "</think>"
) -> str:
    """The cold-start output format ``|special_token|<reasoning_process>|special_token|<summary>``.

    Args:
      reasoning: the chain of thought.
      summary: the reader-facing summary of the result.
      open_token, close_token: the two ``|special_token|`` marks (see the module docstring).

    Returns:
      ``f"{open_token}\\n{reasoning}\\n{close_token}\\n\\n{summary}"``.

    References:
      DeepSeek-R1 (arXiv 2501.12948), §2.3.1.
    """
    return f"{open_token}\n{reasoning}\n{close_token}\n\n{summary}"


def sft_completion(example: Mapping[str, Any], style: str = "r1_zero") -> str:
    """The supervised target of an example that carries a ``solution`` (CoT) and an ``answer``.

    Args:
      example: a task example (``solution`` and ``answer`` keys).
      style: ``"r1_zero"`` (:func:`format_r1_zero`) or ``"cold_start"`` (:func:`format_cold_start`
        with the summary ``<answer> answer </answer>``).

    Returns:
      The completion text (without EOS; :func:`encode_sft` appends it).
    """
    solution, answer = example.get("solution"), example.get("answer")
    if not isinstance(solution, str) or not isinstance(answer, str):
        raise ValueError(
            f"example {example.get('id', '?')!r} has no 'solution' and 'answer' strings for SFT "
            f"(solution={solution!r}, answer={answer!r})"
        )
    if style == "r1_zero":
        return format_r1_zero(solution, answer)
    if style == "cold_start":
        return format_cold_start(solution, f"<answer> {answer} </answer>")
    raise ValueError(f"unknown SFT style {style!r}; known: 'r1_zero', 'cold_start'")


def encode_sft(
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    template: str = "r1_zero",
    *,
    style: str = "r1_zero",
    system_prompt: str | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and completion ids of SFT examples; each completion ends with the EOS id.

    Returns:
      ``(prompts, completions)``, ready for :func:`r1jax.data.batching.pad_sequences` or
      :func:`r1jax.data.batching.pack_sequences` (loss on the completion tokens).
    """
    if tokenizer.eos_id is None:
        raise ValueError("encode_sft needs a tokenizer with an eos_token")
    prompts = encode_prompts(examples, tokenizer, template, system_prompt=system_prompt)
    completions = [
        tokenizer.encode(sft_completion(e, style), add_special_tokens=False) + [tokenizer.eos_id] for e in examples
    ]
    return prompts, completions
