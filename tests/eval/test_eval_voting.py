"""Majority voting and cons@k: ties, None handling, the first-k window, equivalence functions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.eval import cons_at_k, majority_correct, majority_vote


def reference_vote(answers):
    """Independent rule: highest count; among ties the earliest first occurrence; None never."""
    valid = [a for a in answers if a is not None]
    if not valid:
        return None
    top = max(valid.count(a) for a in valid)
    tied = {a for a in valid if valid.count(a) == top}
    return min(tied, key=answers.index)


def test_majority_vote_basic_counts():
    assert majority_vote(["1", "2", "2", "3"]) == "2"
    assert majority_vote(["x"]) == "x"


def test_ties_go_to_the_first_occurrence():
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["c", "a", "b"]) == "c"
    assert majority_vote([None, "y", "x", "x", "y"]) == "y"
    # "b" reaches the top count first at position 3, but "a" appeared first: "a" wins.
    assert majority_vote(["a", "b", "b", "a"]) == "a"


def test_none_does_not_vote():
    assert majority_vote([None, None, None, "7"]) == "7"
    assert majority_vote([None, "x", None, "y", None]) == "x"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])), max_size=12))
def test_vote_matches_independent_rule(answers):
    assert majority_vote(answers) == reference_vote(answers)


def test_vote_rejects_non_string_answers():
    with pytest.raises(TypeError, match=r"answers\[1\]: answers must be normalised strings"):
        majority_vote(["1", 2])
    with pytest.raises(TypeError, match="single string"):
        majority_vote("abc")


def test_cons_at_k_uses_only_the_first_k_samples():
    answers = [["a", "b", "b", "b"]]
    assert majority_correct(answers, ["a"], 1).tolist() == [True]
    assert majority_correct(answers, ["a"], 2).tolist() == [True]   # tie a/b -> first: "a"
    assert majority_correct(answers, ["a"], 3).tolist() == [False]  # "b" wins 2-1
    assert cons_at_k(answers, ["b"], 4) == 1.0


def test_cons_at_k_mean_over_problems():
    answers = [
        ["5", "5", "6"],        # majority "5" == ref
        ["1", "2", "2"],        # majority "2" != ref "1"
        [None, None, "9"],      # only "9" votes; matches
        [None, None, None],     # nothing parsed: wrong
    ]
    refs = ["5", "1", "9", "0"]
    assert majority_correct(answers, refs, 3).tolist() == [True, False, True, False]
    assert cons_at_k(answers, refs, 3) == 0.5


def test_custom_equivalence_and_it_never_sees_none():
    def equiv(answer, reference):
        assert answer is not None
        return abs(float(answer) - reference) < 1e-9

    assert majority_correct([["0.5", "0.25"], [None, None]], [0.5, 3.0], 2,
                            equiv_fn=equiv).tolist() == [True, False]
    # Votes group by string identity, not by equiv_fn: "0.5" and "0.50" vote apart, so the
    # three-way tie goes to the first answer, "0.25", which is wrong.
    assert majority_correct([["0.25", "0.5", "0.50"]], [0.5], 3,
                            equiv_fn=equiv).tolist() == [False]


def test_default_equivalence_needs_string_references():
    with pytest.raises(TypeError, match="reference: the default equiv_fn compares strings"):
        cons_at_k([["4"]], [4], 1)


@pytest.mark.parametrize("k,exc,msg", [
    (5, ValueError, r"cons@5 needs at least 5 samples per problem, but problem 1 has only 3"),
    (0, ValueError, r"k: must be >= 1"),
    (1.0, TypeError, r"k: expected an integer"),
])
def test_bad_k(k, exc, msg):
    with pytest.raises(exc, match=msg):
        cons_at_k([["a"] * 6, ["a"] * 3], ["a", "a"], k)


def test_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="references: got 1 references for 2 problems"):
        cons_at_k([["a"], ["b"]], ["a"], 1)
    with pytest.raises(ValueError, match="need at least one problem"):
        cons_at_k([], [], 1)
    with pytest.raises(TypeError, match=r"answers_by_problem\[0\]\[0\]"):
        cons_at_k([[3]], ["3"], 1)


def test_returns_numpy_bools():
    out = majority_correct([["a"], ["b"]], ["a", "a"], 1)
    assert out.dtype == np.bool_ and out.shape == (2,)
