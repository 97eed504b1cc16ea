"""Prompt templates and completion formats."""

import pytest

from r1jax.data.templates import (
    R1_ZERO_TEMPLATE,
    encode_prompt,
    encode_prompts,
    encode_sft,
    format_cold_start,
    format_r1_zero,
    render_prompt,
    sft_completion,
)
from r1jax.data.tokenizer import build_char_tokenizer

# DeepSeek-R1 (arXiv 2501.12948) Table 1, typed in from the paper.
PAPER_TABLE_1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: prompt. Assistant:"
)


def test_r1_zero_template_is_the_paper_text():
    assert R1_ZERO_TEMPLATE.replace("{prompt}", "prompt") == PAPER_TABLE_1
    assert render_prompt("prompt", "r1_zero") == PAPER_TABLE_1
    assert render_prompt({"prompt": "What is 2+2?"}, "r1_zero").endswith("User: What is 2+2?. Assistant:")


def test_braces_in_questions_are_safe():
    q = r"Compute $\frac{1}{2}+{prompt}$"
    assert render_prompt(q, "plain") == q
    assert render_prompt(q, "r1_zero").endswith(f"User: {q}. Assistant:")


def test_chat_template_prompt():
    tok = build_char_tokenizer()
    assert render_prompt("2+2", "chat", tokenizer=tok) == "<bos>user: 2+2\nassistant: "
    assert render_prompt("2+2", "chat", tokenizer=tok, system_prompt="S") == "<bos>system: S\nuser: 2+2\nassistant: "
    with pytest.raises(ValueError, match="needs a tokenizer"):
        render_prompt("2+2", "chat")
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        render_prompt("2+2", "nope")
    with pytest.raises(ValueError, match="system_prompt is only used by the 'chat' template"):
        render_prompt("2+2", "plain", system_prompt="S")


def test_encode_prompt_bos_once():
    tok = build_char_tokenizer()
    plain = encode_prompt("12+3", tok, "plain")
    assert plain == [tok.bos_id] + tok.encode("12+3", add_special_tokens=False)
    chat = encode_prompt("12+3", tok, "chat")
    assert chat.count(tok.bos_id) == 1 and chat[0] == tok.bos_id
    assert tok.decode(chat) == "user: 12+3\nassistant: "
    assert encode_prompts(["1", "22"], tok, "plain") == [encode_prompt("1", tok, "plain"), encode_prompt("22", tok, "plain")]
    with pytest.raises(ValueError, match="example 'ex/7' is .* tokens with template 'r1_zero'; max_length is 16"):
        encode_prompt({"id": "ex/7", "prompt": "1+1"}, tok, "r1_zero", max_length=16)


def test_completion_formats():
    assert format_r1_zero("r", "a") == "<think> r </think> <answer> a </answer>"
    assert format_cold_start("r", "s") == "<think>\nr\n</think>\n\ns"
    assert format_cold_start("r", "s", open_token="|special_token|", close_token="|special_token|") == (
        "|special_token|\nr\n|special_token|\n\ns"
    )
    ex = {"id": "x", "solution": "2+2=4", "answer": "4"}
    assert sft_completion(ex) == "<think> 2+2=4 </think> <answer> 4 </answer>"
    assert sft_completion(ex, "cold_start") == "<think>\n2+2=4\n</think>\n\n<answer> 4 </answer>"
    with pytest.raises(ValueError, match="example 'y' has no 'solution'"):
        sft_completion({"id": "y", "answer": "4"})
    with pytest.raises(ValueError, match="unknown SFT style"):
        sft_completion(ex, "nope")


def test_encode_sft_ends_with_eos():
    tok = build_char_tokenizer()
    ex = {"id": "x", "prompt": "2+2", "solution": "2+2=4", "answer": "4"}
    prompts, completions = encode_sft([ex], tok, "plain")
    assert prompts == [encode_prompt("2+2", tok, "plain")]
    assert completions[0][-1] == tok.eos_id
    assert tok.decode(completions[0]) == "<think> 2+2=4 </think> <answer> 4 </answer>"
    assert completions[0][0] == tok.token_to_id("<think>")


def test_encode_prompts_batch_equals_single():
    tok = build_char_tokenizer()
    exs = [{"id": f"e{i}", "prompt": "9" * i + "+1"} for i in range(1, 5)]
    for template in ("plain", "r1_zero", "chat"):
        assert encode_prompts(exs, tok, template) == [encode_prompt(e, tok, template) for e in exs]
    with pytest.raises(ValueError, match="example 'e4' is 7 tokens with template 'plain'; max_length is 6"):
        encode_prompts(exs, tok, "plain", max_length=6)
