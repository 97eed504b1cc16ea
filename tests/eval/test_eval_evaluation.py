"""evaluate(): grading, metric keys and values on a crafted set, error reporting."""

import re

import pytest

from r1jax.eval import evaluate, grade_samples


def boxed(text):
    """A tiny answer extractor for the tests: the content of the last \\boxed{...}."""
    found = re.findall(r"\\boxed\{([^}]*)\}", text)
    return found[-1].strip() if found else None


SAMPLES = [
    # problem 0, reference "4": 2 of 4 correct; majority "4" (2 votes vs 1).
    ["so \\boxed{4}", "Wait, \\boxed{5}", "\\boxed{4}", "no answer"],
    # problem 1, reference "7": 1 of 4 correct; majority "8".
    ["\\boxed{8}", "\\boxed{8}", "however \\boxed{7}", "\\boxed{8}"],
    # problem 2, reference "1": 0 of 4.
    ["none", "none", "none", "\\boxed{2}"],
]
REFS = ["4", "7", "1"]


def test_metrics_by_hand():
    m = evaluate(SAMPLES, REFS, boxed, ks=(1, 2, 4),
                 lengths_by_problem=[[10, 20, 30, 40], [8, 8, 8, 64], [1, 2, 3, 4]],
                 max_length=64)
    assert m["num_problems"] == 3.0 and m["num_samples"] == 12.0
    per_problem = [2 / 4, 1 / 4, 0.0]
    assert m["accuracy"] == pytest.approx(sum(per_problem) / 3)
    assert m["pass@1"] == pytest.approx(m["accuracy"])
    # pass@2 = 1 - C(n-c,2)/C(4,2): 1 - 1/6, 1 - 3/6, 0.
    assert m["pass@2"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert set(k for k in m if k.startswith("cons@")) == {"cons@4"}  # default: all samples
    assert m["cons@4"] == pytest.approx(1 / 3)
    assert m["answered"] == pytest.approx(8 / 12)
    # Student-t interval over the per-problem accuracies (0.5, 0.25, 0): se = 0.25/sqrt(3),
    # t_{0.975, 2} = 4.303 (table).
    assert m["accuracy/ci_high"] - m["accuracy"] == pytest.approx(4.303 * 0.25 / 3 ** 0.5,
                                                                  abs=1e-3)
    assert m["length/max"] == 64.0 and m["length/clip_frac"] == pytest.approx(1 / 12)
    assert m["reflection/word/wait"] == pytest.approx(1 / 12)
    assert m["reflection/word/however"] == pytest.approx(1 / 12)
    assert all(isinstance(v, float) for v in m.values())


def test_cons_ks_and_truncation_flags():
    m = evaluate(SAMPLES, REFS, boxed, ks=1, cons_ks=[1, 3],
                 lengths_by_problem=[[1] * 4] * 3,
                 truncated_by_problem=[[True, False, False, False]] + [[False] * 4] * 2)
    # cons@1 = correctness of the first sample: problem 0 only. cons@3: "4" (2-1) right,
    # "8" wrong, nothing for problem 2.
    assert m["cons@1"] == pytest.approx(1 / 3) and m["cons@3"] == pytest.approx(1 / 3)
    assert m["length/clip_frac"] == pytest.approx(1 / 12)
    assert "length/mean" in m and "accuracy/ci_low" in m


def test_no_lengths_no_length_metrics_and_single_problem_has_no_ci():
    m = evaluate(SAMPLES[:1], REFS[:1], boxed)
    assert not any(k.startswith("length/") for k in m)
    assert "accuracy/ci_low" not in m and m["accuracy"] == 0.5


def test_equiv_fn_called_once_per_distinct_answer():
    calls = []

    def equiv(answer, reference):
        calls.append((answer, reference))
        return answer == reference

    answers, correct = grade_samples(SAMPLES, REFS, boxed, equiv)
    assert sorted(calls) == sorted([("4", "4"), ("5", "4"), ("8", "7"), ("7", "7"), ("2", "1")])
    assert answers[0] == ["4", "5", "4", None]
    assert correct == [[True, False, True, False], [False, False, True, False],
                       [False, False, False, False]]
    calls.clear()
    evaluate(SAMPLES, REFS, boxed, equiv, ks=(1,), cons_ks=(2, 4))
    assert len(calls) == 5  # the votes reuse the verdicts


def test_custom_equivalence_with_non_string_references():
    m = evaluate([["\\boxed{0.50}", "\\boxed{1/2}"]], [0.5], boxed,
                 equiv_fn=lambda a, r: "/" not in a and float(a) == r)
    assert m["accuracy"] == 0.5


def test_ragged_problems_and_k_too_large():
    samples = [["\\boxed{1}"] * 3, ["\\boxed{1}"] * 2]
    m = evaluate(samples, ["1", "1"], boxed, ks=(1, 2))
    assert m["pass@2"] == 1.0 and "cons@2" in m
    with pytest.raises(ValueError, match=r"pass@3 needs at least k=3 .* index \(1,\) has only n=2"):
        evaluate(samples, ["1", "1"], boxed, ks=(3,))
    with pytest.raises(ValueError, match=r"cons@3 needs at least 3 .* problem 1 has only 2"):
        evaluate(samples, ["1", "1"], boxed, cons_ks=3)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: evaluate([], [], boxed), ValueError, "need at least one problem"),
    (lambda: evaluate([["a"]], ["1", "2"], boxed), ValueError, "got 2 references for 1 problems"),
    (lambda: evaluate([[]], ["1"], boxed), ValueError, r"samples_by_problem\[0\]: no samples"),
    (lambda: evaluate(["abc"], ["1"], boxed), TypeError, r"samples_by_problem\[0\]: expected"),
    (lambda: evaluate([["a", 5]], ["1"], boxed), TypeError, r"samples_by_problem\[0\]\[1\]"),
    (lambda: evaluate([["a"]], ["1"], lambda s: 1), TypeError,
     r"answer_fn: must return a normalised string or None, got int 1 for "
     r"samples_by_problem\[0\]\[0\]"),
    (lambda: evaluate([["a"]], ["1"], boxed, lengths_by_problem=[[1, 2]]), ValueError,
     r"lengths_by_problem\[0\]: got 2 values for 1 samples"),
    (lambda: evaluate([["a"]], ["1"], boxed, max_length=8), ValueError,
     "need lengths_by_problem as well"),
    (lambda: evaluate([["a"]], ["1"], boxed, ks=[]), ValueError, "ks: need at least one k"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
