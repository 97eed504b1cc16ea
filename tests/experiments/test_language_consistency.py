"""The language-consistency experiment: its bilingual corpus, the vocabulary extension, and a quick run."""

import argparse
import importlib.util
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from r1jax.config import from_dict
from r1jax.data.tokenizer import load_tokenizer
from r1jax.models import ModelConfig, forward, init_params, lm_head_weight, load_pretrained
from r1jax.rewards.language import count_words_by_language, language_consistency_en

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_BASE = REPO / "r1jax" / "assets" / "tiny_base"
BILINGUAL_BASE = REPO / "r1jax" / "assets" / "tiny_bilingual_base"


def _load(name: str):
    sys.path[:0] = [str(REPO), str(REPO / "experiments")]
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb():
    return _load("pretrain_bilingual_base")


def test_bilingual_trace_names_and_swaps_words(pb):
    rng = np.random.default_rng(0)
    solution = "6+7=13 carry 1, 8+6+1=15 carry 1"
    assert pb.bilingual_trace(solution, 0.0, rng) == "add 6+7=13 carry 1, add 8+6+1=15 carry 1"
    assert pb.bilingual_trace(solution, 1.0, rng) == "加 6+7=13 进位 1, 加 8+6+1=15 进位 1"
    assert pb.bilingual_trace("0+0=0, 9+5=14 carry 1", 1.0, rng) == "加 0+0=0, 加 9+5=14 进位 1"


def _corpus(pb, n: int, max_mix: float) -> list[str]:
    from r1jax.data import DataConfig, make_dataset

    dataset = make_dataset(from_dict(DataConfig, pb.DATA), "train")
    rng = np.random.default_rng(123)
    docs = [pb.bilingual_document(dataset[i], rng, 1.0, 0.0, max_mix) for i in range(n)]
    assert all(d.startswith("<think>") for d in docs)
    return docs


def test_bilingual_corpus_mixes_languages_mid_thought(pb):
    docs = _corpus(pb, 400, 0.6)
    scores = np.array([language_consistency_en("", d) for d in docs])
    # uniform per-document rate in [0, 0.6]: the corpus is mostly, not wholly, English
    assert 0.4 < scores.mean() < 0.9
    assert (scores == 1.0).mean() < 0.7
    mixed = [d for d in docs if {"en", "zh"} <= set(count_words_by_language(d.split("</think>")[0]))]
    assert len(mixed) > 0.25 * len(docs)  # both scripts inside one chain of thought
    # the knob works: no mixing, no Chinese
    assert all(language_consistency_en("", d) == 1.0 for d in _corpus(pb, 50, 0.0))


def test_extended_tokenizer_keeps_every_old_id(pb):
    old, new = load_tokenizer(TINY_BASE), pb.extend_tokenizer()
    old_vocab = old.backend.get_vocab(with_added_tokens=True)
    new_vocab = new.backend.get_vocab(with_added_tokens=True)
    assert len(new_vocab) == len(old_vocab) + 3
    for token, i in old_vocab.items():
        assert new_vocab[token] == i, token
    assert sorted(new_vocab[c] for c in "加进位") == [len(old_vocab), len(old_vocab) + 1, len(old_vocab) + 2]
    text = "<think> add 6+7=13 carry 1 </think> <answer> 13 </answer>"
    assert new.encode(text) == old.encode(text)
    assert new.decode(new.encode("加 1+2=3 进位 1", add_special_tokens=False)) == "加 1+2=3 进位 1"
    # the shipped base uses exactly this tokenizer
    assert load_tokenizer(BILINGUAL_BASE).backend.get_vocab(with_added_tokens=True) == new_vocab


@pytest.mark.parametrize("tied", [True, False])
def test_grow_vocab_keeps_old_rows_and_old_logits(pb, tied):
    if tied:
        params, cfg = load_pretrained(TINY_BASE, param_dtype="float32")
    else:
        cfg = from_dict(ModelConfig, dict(vocab_size=20, hidden_size=16, intermediate_size=32, num_layers=1,
                                          num_heads=2, num_kv_heads=1, tie_word_embeddings=False))
        params = init_params(cfg, jax.random.PRNGKey(0))
    grown, grown_cfg = pb.grow_vocab(params, cfg, cfg.vocab_size + 3, jax.random.PRNGKey(1))
    assert grown_cfg.vocab_size == cfg.vocab_size + 3 and grown_cfg.hidden_size == cfg.hidden_size
    assert np.array_equal(np.asarray(grown["embed"][:cfg.vocab_size]), np.asarray(params["embed"]))
    new_rows = np.asarray(grown["embed"][cfg.vocab_size:])
    assert new_rows.shape == (3, cfg.hidden_size) and np.all(np.isfinite(new_rows)) and 0 < new_rows.std() < 0.1
    for k in params:
        if k not in ("embed", "lm_head"):
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[k]), jax.tree.leaves(grown[k])))
    tokens = jax.numpy.asarray([[1, 8, 18, 9, 21, 10]]) % cfg.vocab_size
    old_logits = forward(params, cfg, tokens) @ lm_head_weight(params, cfg)
    new_logits = forward(grown, grown_cfg, tokens) @ lm_head_weight(grown, grown_cfg)
    assert new_logits.shape[-1] == cfg.vocab_size + 3
    np.testing.assert_allclose(np.asarray(new_logits[..., :cfg.vocab_size]), np.asarray(old_logits), atol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        pb.grow_vocab(params, cfg, cfg.vocab_size - 1, jax.random.PRNGKey(1))


def test_quick_run_writes_both_arms(tmp_path):
    lc = _load("language_consistency")
    out = tmp_path / "lc.json"
    assert lc.main(["--quick", "--seeds", "0", "--out", str(out), "--work-dir", str(tmp_path / "runs")]) == 0
    result = json.loads(out.read_text())
    assert result["rewards"]["without"][lc.LANG] == 0.0 and result["rewards"]["with"][lc.LANG] == 1.0
    seed = result["per_seed"]["0"]
    for arm in ("base", "without", "with"):
        for m in ("accuracy", "format_rate", "consistency"):
            assert 0.0 <= seed[arm][m] <= 1.0
            assert result["summary"][arm][m]["values"] == [seed[arm][m]]
    for arm in ("without", "with"):
        assert len(seed[arm]["curves"]["reward/" + lc.LANG]) == result["steps"] == 2
    assert result["summary"]["with_minus_without"]["consistency"]["mean"] == pytest.approx(
        seed["with"]["consistency"] - seed["without"]["consistency"])
    assert result["machine"]["nproc"] >= 1 and result["wall_minutes"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").is_file()
    assert result["seeds_from_earlier_runs"] == []
    # a finished seed is read back, not trained again; other settings train again
    again = tmp_path / "again.json"
    assert lc.main(["--quick", "--seeds", "0", "--out", str(again), "--work-dir", str(tmp_path / "runs")]) == 0
    second = json.loads(again.read_text())
    assert second["seeds_from_earlier_runs"] == [0]
    assert second["summary"] == result["summary"]
    assert lc.seed_key(0, argparse.Namespace(steps=2, lang_weight=0.5, eval_prompts=8, eval_samples=2, quick=True)) \
        != lc.seed_key(0, argparse.Namespace(steps=2, lang_weight=1.0, eval_prompts=8, eval_samples=2, quick=True))
