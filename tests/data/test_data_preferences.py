"""The toy preference data: deterministic, written only with the tiny tokenizer's characters, labels
balanced so that neither the prompt nor the response alone predicts a safety label."""

import collections
import json
import pathlib

import pytest

from r1jax.data.preferences import (ALPHABET, REJECTED_KINDS, general_prompts, helpfulness_pairs, safety_points,
                                    write_preferences)
from r1jax.data.tokenizer import load_tokenizer

TINY = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"


def test_generators_are_deterministic_and_seeded():
    for gen in (helpfulness_pairs, safety_points, general_prompts):
        assert gen(50, seed=3) == gen(50, seed=3)
        assert gen(50, seed=3) != gen(50, seed=4)


def test_every_text_round_trips_through_the_tiny_tokenizer():
    tok = load_tokenizer(TINY)
    vocab = {t for t in tok.backend.get_vocab() if len(t) == 1}
    assert ALPHABET <= vocab  # the alphabet is the tokenizer's
    unk = tok.token_to_id(tok.unk_token)
    rows = helpfulness_pairs(200) + safety_points(200) + general_prompts(200)
    texts = {v for r in rows for k, v in r.items() if k in ("prompt", "chosen", "rejected", "response")}
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert unk not in ids and tok.decode(ids) == text, text
    assert max(len(t) for t in texts) <= 60  # short: max_len 80 fits every example


def test_helpfulness_pairs_cover_every_rejected_kind():
    rows = helpfulness_pairs(400)
    kinds = collections.Counter(r["kind"] for r in rows)
    assert set(kinds) == set(REJECTED_KINDS) and min(kinds.values()) > 40
    assert all(r["chosen"] != r["rejected"] for r in rows)
    wrong = [r for r in rows if r["kind"] == "wrong"]
    assert all(r["prompt"].startswith("what is ") and r["prompt"][8:] in r["rejected"] for r in wrong)
    assert {r["kind"] for r in helpfulness_pairs(20, kinds=("rude",))} == {"rude"}
    with pytest.raises(ValueError, match="kinds"):
        helpfulness_pairs(2, kinds=("mean",))


def test_safety_labels_need_both_prompt_and_response():
    rows = safety_points(2000)
    kinds = collections.Counter(r["kind"] for r in rows)
    assert set(kinds) == {"unsafe_refusal", "unsafe_compliance", "safe_answer", "safe_refusal"}
    refusals = [r for r in rows if r["kind"] in ("unsafe_refusal", "safe_refusal")]
    share = sum(r["label"] for r in refusals) / len(refusals)
    assert 0.45 < share < 0.55  # a refusal is as often good as bad
    assert all(r["label"] == (r["kind"] in ("unsafe_refusal", "safe_answer")) for r in rows)


def test_write_preferences_writes_jsonl(tmp_path):
    p = write_preferences(tmp_path / "sub" / "prompts.jsonl", "prompts", 10, seed=2)
    rows = [json.loads(line) for line in p.read_text().splitlines()]
    assert rows == general_prompts(10, seed=2)
    assert {r["category"] for r in general_prompts(200)} == {"math", "general", "unsafe"}
    with pytest.raises(ValueError, match="which"):
        write_preferences(tmp_path / "x.jsonl", "nope", 1)
