"""Synthetic tasks: determinism, held-out disjointness, correct answers, solvable Countdown."""

import ast
import itertools
import re
from fractions import Fraction

import pytest

from r1jax.data.synthetic import ArithmeticTask, CountdownTask, SyntheticDataset

OPS = ("+", "-", "*")


def _arith(split="train", size=300, seed=0, digits=2, ops=OPS, frac=0.2):
    return SyntheticDataset(ArithmeticTask(digits=digits, operations=ops), split=split, size=size, seed=seed, heldout_fraction=frac)


def _countdown(split="train", size=60, seed=0, n=3, frac=0.2):
    return SyntheticDataset(CountdownTask(num_numbers=n), split=split, size=size, seed=seed, heldout_fraction=frac)


# ---------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("make", [_arith, _countdown], ids=["arithmetic", "countdown"])
def test_deterministic_given_seed_and_index(make):
    a, b = make(seed=3), make(seed=3)
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    assert forward == backward
    other = make(seed=4)
    assert [other[i]["prompt"] for i in range(20)] != [e["prompt"] for e in forward]
    assert [e["id"] for e in forward[:2]] == [f"{a.name}/train/0", f"{a.name}/train/1"]


def test_index_out_of_range():
    with pytest.raises(IndexError, match="index 5 out of range"):
        _arith(size=5)[5]


# ---------------------------------------------------------------------------------------- held-out split


def _arith_problem(prompt):
    a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", prompt).groups()
    a, b = int(a), int(b)
    return (op, a, b) if op == "-" else (op, min(a, b), max(a, b))


def test_arithmetic_heldout_disjoint():
    train = {_arith_problem(e["prompt"]) for e in _arith("train", size=1500).examples()}
    held = {_arith_problem(e["prompt"]) for e in _arith("eval", size=300, seed=7).examples()}
    assert len(held) > 100  # a real eval set, not a handful of repeats
    assert train.isdisjoint(held)


def test_countdown_heldout_disjoint():
    key = lambda e: (tuple(sorted(e["reference"]["numbers"])), e["reference"]["target"])  # noqa: E731
    train = {key(e) for e in _countdown("train", size=300).examples()}
    held = {key(e) for e in _countdown("eval", size=100, seed=1).examples()}
    assert len(held) > 20
    assert train.isdisjoint(held)


def test_eval_split_needs_a_fraction():
    with pytest.raises(ValueError, match="heldout_fraction > 0"):
        _arith("eval", frac=0.0)


# ---------------------------------------------------------------------------------------- arithmetic answers


def _check_addition_trace(a, b, trace):
    steps = trace.split(", ")
    da, db = str(a)[::-1], str(b)[::-1]
    assert len(steps) == max(len(da), len(db))
    carry, written = 0, []
    for i, step in enumerate(steps):
        m = re.fullmatch(r"(\d)\+(\d)(?:\+(\d))?=(\d+)( carry 1)?", step)
        assert m, step
        x, y, c, s = int(m[1]), int(m[2]), int(m[3] or 0), int(m[4])
        assert x == int(da[i]) if i < len(da) else x == 0
        assert y == int(db[i]) if i < len(db) else y == 0
        assert c == carry and s == x + y + c and bool(m[5]) == (s >= 10)
        written.append(s % 10)
        carry = s // 10
    digits = ([carry] if carry else []) + written[::-1]
    assert int("".join(map(str, digits))) == a + b


def _check_subtraction_trace(a, b, trace):
    steps = trace.split(", ")
    da, db = str(a)[::-1], str(b)[::-1].ljust(len(str(a)), "0")
    borrow, written = 0, []
    for i, step in enumerate(steps):
        m = re.fullmatch(r"(\d+)-(\d)(?:-(\d))?=(\d)( borrow 1)?", step)
        assert m, step
        top, y, bi, v = int(m[1]), int(m[2]), int(m[3] or 0), int(m[4])
        assert bi == borrow and y == int(db[i])
        assert top == int(da[i]) + (10 if m[5] else 0)
        assert v == top - y - bi and 0 <= v <= 9
        written.append(v)
        borrow = 1 if m[5] else 0
    assert borrow == 0
    assert int("".join(map(str, written[::-1]))) == a - b


def _check_multiplication_trace(a, b, trace):
    steps = trace.split(", ")
    partials = []
    for step in steps:
        m = re.fullmatch(r"(\d+)\*(\d+)=(\d+)", step)
        if m:
            assert int(m[1]) == a and int(m[3]) == int(m[1]) * int(m[2])
            partials.append(int(m[3]))
            m2 = int(m[2])
            assert str(m2).rstrip("0") in str(b)  # a digit of b times a power of ten
        else:
            lhs, rhs = step.split("=")
            assert [int(v) for v in lhs.split("+")] == partials and int(rhs) == sum(partials)
    assert sum(partials) == a * b


@pytest.mark.parametrize("digits", [1, 2, 4])
def test_arithmetic_answers_and_traces(digits):
    ds = _arith(size=120, digits=digits, seed=digits)
    seen_ops = set()
    for e in ds.examples():
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", e["prompt"]).groups()
        a, b = int(a), int(b)
        seen_ops.add(op)
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        assert lo <= a < 10**digits and lo <= b < 10**digits
        expected = {"+": a + b, "-": a - b, "*": a * b}[op]
        assert expected >= 0
        assert e["reference"] == e["answer"] == str(expected)
        assert e["task"] == "arithmetic"
        {"+": _check_addition_trace, "-": _check_subtraction_trace, "*": _check_multiplication_trace}[op](
            a, b, e["solution"]
        )
    assert seen_ops == set(OPS)


def test_known_traces():
    from r1jax.data.synthetic import addition_trace, multiplication_trace, subtraction_trace

    assert addition_trace(147, 285) == "7+5=12 carry 1, 4+8+1=13 carry 1, 1+2+1=4"
    assert addition_trace(95, 7) == "5+7=12 carry 1, 9+0+1=10 carry 1"
    assert subtraction_trace(432, 285) == "12-5=7 borrow 1, 13-8-1=4 borrow 1, 4-2-1=1"
    assert multiplication_trace(147, 285) == "147*5=735, 147*80=11760, 147*200=29400, 735+11760+29400=41895"
    assert multiplication_trace(12, 30) == "12*30=360"


# ---------------------------------------------------------------------------------------- countdown


def _solvable(numbers, target):
    """Brute force: can all the numbers, each used once, with + - * / reach target?"""
    def reach(vals):
        if len(vals) == 1:
            return vals[0] == target
        for i, j in itertools.permutations(range(len(vals)), 2):
            a, b = vals[i], vals[j]
            rest = [v for k, v in enumerate(vals) if k not in (i, j)]
            outs = [a + b, a - b, a * b] + ([a / b] if b != 0 else [])
            if any(reach(rest + [o]) for o in outs):
                return True
        return False

    return reach([Fraction(n) for n in numbers])


def _eval_expr(expr):
    """Exact value and number literals of an expression, via Python's own parser."""
    literals = []

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b, ast.Div: a / b if b else None}[type(node.op)]
        raise AssertionError(f"unexpected node {ast.dump(node)} in {expr!r}")

    return ev(ast.parse(expr, mode="eval")), literals


@pytest.mark.parametrize("n", [2, 3, 4])
def test_countdown_solvable_and_answer_correct(n):
    ds = _countdown(size=25 if n < 4 else 12, n=n, seed=n)
    for e in ds.examples():
        ref = e["reference"]
        numbers, target = ref["numbers"], ref["target"]
        assert set(ref) == {"target", "numbers"} and len(numbers) == n
        assert all(1 <= x <= 20 for x in numbers) and 1 <= target <= 100
        assert e["prompt"] == f"Use {' '.join(map(str, numbers))} to make {target}"
        value, literals = _eval_expr(e["answer"])
        assert value == target, e
        assert sorted(literals) == sorted(numbers), e
        assert _solvable(numbers, target)
        assert len(e["solution"].split(", ")) == n - 1


def test_task_validation():
    with pytest.raises(ValueError, match="digits must be in 1..18"):
        ArithmeticTask(digits=0)
    with pytest.raises(ValueError, match="subset of"):
        ArithmeticTask(operations=("/",))
    with pytest.raises(ValueError, match="num_numbers must be in 2..8"):
        CountdownTask(num_numbers=1)
