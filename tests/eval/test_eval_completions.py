"""Reflection-word counts on crafted text; response-length statistics."""

import numpy as np
import pytest

from r1jax.eval import REFLECTION_WORDS, length_stats, reflection_counts, reflection_stats

AHA = ("Wait, wait. Wait. That's an aha moment I can flag here. Let's re-evaluate this step. "
       "BUT the sum is 3; however, I should verify: recheck the sign. Check   again,\n"
       "check\nagain. A mistake? Retry.")

DECOYS = ("I await the result while waiting; verified, rechecked, re-evaluated, reevaluate, "
          "butter, mistakes, retrying, checking again, recheck-again is one, Wait_now, wait2.")


def test_default_word_list_is_documented():
    assert REFLECTION_WORDS == ("wait", "recheck", "verify", "re-evaluate", "however", "but",
                                "retry", "mistake", "check again")


def test_counts_on_crafted_text():
    assert reflection_counts(AHA) == {
        "wait": 3, "recheck": 1, "verify": 1, "re-evaluate": 1, "however": 1, "but": 1,
        "retry": 1, "mistake": 1, "check again": 2,
    }


def test_whole_words_only():
    counts = reflection_counts(DECOYS)
    # Only "recheck" in "recheck-again" (the hyphen ends a word) is a whole-word match.
    assert counts == {w: (1 if w == "recheck" else 0) for w in REFLECTION_WORDS}


def test_custom_words_and_case():
    text = "Hmm. HMM, hmmm; let me think. Let  me think"
    assert reflection_counts(text, ["hmm", "let me think"]) == {"hmm": 2, "let me think": 2}
    with pytest.raises(ValueError, match=r"words\[1\]: duplicate word 'WAIT'"):
        reflection_counts("x", ["wait", "WAIT"])
    with pytest.raises(ValueError, match=r"words\[0\]: expected a non-empty string"):
        reflection_counts("x", [" "])
    with pytest.raises(TypeError, match="text: expected a string"):
        reflection_counts(None)


def test_reflection_stats_over_completions():
    stats = reflection_stats([AHA, "no reflection here", "wait"])
    assert stats["mean"] == pytest.approx((12 + 0 + 1) / 3)
    assert stats["max"] == 12.0
    assert stats["frac_any"] == pytest.approx(2 / 3)
    assert stats["word/wait"] == pytest.approx(4 / 3)
    assert stats["word/check again"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="need at least one completion"):
        reflection_stats([])
    with pytest.raises(TypeError, match=r"completions\[1\]: expected a string"):
        reflection_stats(["a", 3])


def test_length_stats_known_values():
    stats = length_stats([1, 2, 3, 4, 100], max_length=100)
    assert stats["mean"] == 22.0
    assert stats["std"] == pytest.approx(np.sqrt(((1 - 22) ** 2 + 400 + 361 + 324 + 78 ** 2) / 5))
    assert (stats["min"], stats["max"], stats["p50"]) == (1.0, 100.0, 3.0)
    assert stats["p90"] == pytest.approx(4 + 0.6 * 96)  # linear interpolation, rank 3.6
    assert stats["clip_frac"] == 0.2


def test_length_stats_truncation_flags_and_percentiles():
    stats = length_stats([5, 7, 9, 11], truncated=np.array([False, True, False, False]),
                         max_length=11, percentiles=(25, 99.9))
    assert stats["clip_frac"] == 0.25  # the flags win over length >= max_length
    assert set(stats) == {"mean", "std", "min", "max", "p25", "p99.9", "clip_frac"}
    assert "clip_frac" not in length_stats([5, 7])


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(lengths=[]), ValueError, "lengths: expected a non-empty 1-D"),
    (dict(lengths=[3, -1]), ValueError, r"lengths: negative length -1 at index 1"),
    (dict(lengths=[3.0, 1.0]), TypeError, "lengths: expected integer token counts"),
    (dict(lengths=[3, 12], max_length=10), ValueError,
     r"length 12 at index 1 exceeds max_length=10"),
    (dict(lengths=[3], max_length=0), ValueError, "max_length: must be >= 1"),
    (dict(lengths=[3, 4], truncated=[True]), ValueError, r"truncated: expected shape \(2,\)"),
    (dict(lengths=[3, 4], truncated=[1, 0]), TypeError, "truncated: expected bools"),
    (dict(lengths=[3, 4], percentiles=(101,)), ValueError, "percentiles: each must be in"),
])
def test_length_stats_bad_input(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        length_stats(**kwargs)
