"""Code reward: run the generated Python against test cases in the sandbox; score = share passed.

The program is the last fenced ```` ```python ```` block of the ``<answer>`` block, or the answer
block itself, or the last fenced python block of the completion
(:func:`r1jax.rewards.parsing.extract_code`). Each test case runs in its own sandboxed process
(:mod:`r1jax.rewards.sandbox`: fresh tmpfs work dir, no network, resource limits, ...).

**The verdict is decided outside the sandbox, from data.** Nothing the program prints, exits with
or tampers with inside its process can report a pass: the sandbox only computes values, the
parent (this process) compares them with expected values that never enter the sandbox.

- an **assert test** is a string of Python made of ``assert`` statements, optionally with other
  statements (imports, setup) between them, e.g. ``"assert add(2, 3) == 5"``. The parent splits
  every top-level ``assert`` into *checks*: ``and`` / ``or`` / ``not`` are applied in the parent;
  a comparison (``==``, ``<``, ``in``, chains such as ``0 <= f(x) < 10``, ...) is applied in the
  parent to its operands; an operand that is a Python literal (``5``, ``[1, 2]``, ``{"a": None}``,
  ``set()``) stays in the parent, and every other operand (``add(2, 3)``) is sent to the sandbox,
  where the program runs first (``__name__ == "__solution__"``, so a ``main()`` guard does not
  fire), then the setup statements and operands run in order. Each operand's value must be
  *plain data* - exactly ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``
  or a ``list`` / ``tuple`` / ``set`` / ``frozenset`` / ``dict`` of those, no subclasses - and
  comes back as its ``repr``, which the parent parses (never evaluates). The test passes when
  the run exits with status 0, reports every value, and every check holds in the parent.

  Consequences: an object whose ``__eq__`` is always true, an ``int`` subclass or any other
  non-plain value fails its check (it does not count as passing); operands are evaluated eagerly
  (``assert x is None or f(x) == 1`` evaluates ``f(x)`` even when ``x is None``), and an operand
  that raises fails the test; an ``assert`` nested in a function or loop runs inside the sandbox
  and cannot pass a test by itself, so a test needs at least one top-level ``assert``.
- a **stdin/stdout test** (a mapping ``{"input": str, "output": str}``) runs the program as
  ``__main__`` with that standard input; it passes when it exits with status 0 and its output
  equals ``output`` up to trailing whitespace on each line and trailing blank lines.

What a program can still do: choose the values it hands back, as any program does by returning
them. A check whose operands are *all* computed in the sandbox (``f(2) == f(1) + 1``, no literal
side) is therefore only as strong as the sandbox's own evaluation: a program that tampers with the
harness in its process (through ``gc`` or frames) can make both sides report the same text. A
literal side never enters the sandbox, so such tampering cannot supply it; setup statements do run
there (``expected = 5`` then ``assert f() == expected`` compares two sandbox values).

Reference: a list of tests, or a mapping ``{"tests": [...], "time_limit_s": float,
"memory_mb": int}`` (limits optional: per test, CPU seconds and address space; the wall clock is
``3 * time_limit_s + 2`` s to absorb interpreter start-up on a loaded machine).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import operator
from typing import Any, Mapping, Sequence

from r1jax.rewards.parsing import extract_code
from r1jax.rewards.sandbox import SandboxLimits, run_python

__all__ = ["code_tests", "run_test_cases", "DEFAULT_CODE_LIMITS"]

DEFAULT_CODE_LIMITS = SandboxLimits(cpu_time_s=2.0, wall_time_s=6.0, memory_mb=512)

# Runs in the sandbox: reads the plan before the program can touch it, runs the program, then the
# plan's setup statements and operands; prints the operands' reprs as one JSON line at the end.
_HARNESS = """\
import json, os, sys
_repr, _type = repr, type
_PLAIN = (type(None), bool, int, float, complex, str, bytes)

def _check_plain(value):
    kind = _type(value)
    if kind in (list, tuple, set, frozenset):
        for item in value:
            _check_plain(item)
    elif kind is dict:
        for key, item in value.items():
            _check_plain(key)
            _check_plain(item)
    elif kind not in _PLAIN:
        raise TypeError("a test operand's value is not plain data: %s" % kind.__name__)

def _main():
    with open("plan.json", encoding="utf-8") as f:
        plan = json.load(f)
    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    with open("solution.py", encoding="utf-8") as f:
        exec(compile(f.read(), "solution.py", "exec"), ns)
    values = []
    for kind, source in plan:
        if kind == "exec":
            exec(compile(source, "test.py", "exec"), ns)
        else:
            value = eval(compile(source, "test.py", "eval"), ns)
            _check_plain(value)
            values.append(_repr(value))
    return json.dumps(values)

_line = _main()
sys.stdout.flush()
os.write(1, b"\\n" + _line.encode() + b"\\n")
"""

_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


@dataclasses.dataclass(frozen=True)
class _AssertTest:
    """An assert test split into what runs in the sandbox (``plan``) and what the parent checks.

    ``plan``: ("exec", statement source) and ("eval", operand source) steps, in order. ``checks``:
    one tree per top-level ``assert``; nodes are ("const", value), ("value", index into the
    reported values), ("not", node), ("and" | "or", [nodes]) and ("compare", [operand nodes],
    [operator functions]).
    """

    plan: tuple
    checks: tuple


def _split_assert(node: ast.expr, plan: list) -> tuple:
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        return (kind, [_split_assert(v, plan) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ("not", _split_assert(node.operand, plan))
    if isinstance(node, ast.Compare):
        operands = [_operand(v, plan) for v in [node.left, *node.comparators]]
        return ("compare", operands, [_COMPARE[type(op)] for op in node.ops])
    return _operand(node, plan)


def _operand(node: ast.expr, plan: list) -> tuple:
    try:
        return ("const", ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    index = sum(1 for kind, _ in plan if kind == "eval")
    plan.append(("eval", ast.unparse(node)))
    return ("value", index)


def _compile_assert_test(index: int, source: str) -> _AssertTest:
    try:
        module = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"code test {index} is not valid Python ({e.msg}): {source!r:.200}") from None
    plan: list = []
    checks = []
    for statement in module.body:
        if isinstance(statement, ast.Assert):
            checks.append(_split_assert(statement.test, plan))
        else:
            plan.append(("exec", ast.unparse(statement)))
    if not checks:
        raise ValueError(f"code test {index} has no top-level assert statement: {source!r:.200}")
    return _AssertTest(plan=tuple(plan), checks=tuple(checks))


def _plain_value(node: ast.expr) -> Any:
    """The value of a plain-data repr's syntax tree (built, never evaluated); ValueError otherwise."""
    if isinstance(node, ast.Constant) and node.value is not Ellipsis:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_plain_value(v) for v in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_plain_value(k): _plain_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _plain_value(node.operand)
        if type(value) in (int, float, complex):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):  # complex: (1+2j)
        real, imag = _plain_value(node.left), _plain_value(node.right)
        if type(real) in (int, float) and type(imag) is complex:
            return real + imag if isinstance(node.op, ast.Add) else real - imag
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset")
            and not node.keywords and len(node.args) <= 1):
        items = _plain_value(node.args[0]) if node.args else ()
        if type(items) in (set, list, tuple):
            return (set if node.func.id == "set" else frozenset)(items)
    raise ValueError(f"not plain data: {ast.dump(node)[:80]}")


def _reported_values(stdout: bytes, count: int) -> list | None:
    """The values the harness reported on its last output line, parsed; None if malformed."""
    try:
        reprs = json.loads(stdout.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        if not isinstance(reprs, list) or len(reprs) != count or not all(isinstance(r, str) for r in reprs):
            return None
        return [_plain_value(ast.parse(r, mode="eval").body) for r in reprs]
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _holds(node: tuple, values: list) -> Any:
    kind = node[0]
    if kind == "const":
        return node[1]
    if kind == "value":
        return values[node[1]]
    if kind == "not":
        return not _holds(node[1], values)
    if kind == "and":
        return all(_holds(n, values) for n in node[1])
    if kind == "or":
        return any(_holds(n, values) for n in node[1])
    operands = [_holds(n, values) for n in node[1]]
    return all(op(a, b) for op, a, b in zip(node[2], operands, operands[1:]))


def _passes(test: _AssertTest, stdout: bytes) -> bool:
    values = _reported_values(stdout, sum(1 for kind, _ in test.plan if kind == "eval"))
    if values is None:
        return False
    try:
        return all(bool(_holds(check, values)) for check in test.checks)
    except (TypeError, ValueError, RecursionError, MemoryError):  # e.g. 1 < "a": the check fails
        return False


def _normalise_output(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _parse_reference(reference: Any, limits: SandboxLimits) -> tuple[list[Any], SandboxLimits]:
    """(compiled tests, limits) of a code reference; ValueError naming the test at fault."""
    if isinstance(reference, Mapping):
        if "tests" not in reference:
            raise ValueError(f"code reference mapping has no 'tests' key (keys: {sorted(reference)})")
        tests = reference["tests"]
        changes: dict[str, Any] = {}
        if reference.get("time_limit_s") is not None:
            t = float(reference["time_limit_s"])
            if not t > 0:
                raise ValueError(f"code reference 'time_limit_s' must be > 0, got {t}")
            changes.update(cpu_time_s=t, wall_time_s=3 * t + 2)
        if reference.get("memory_mb") is not None:
            changes["memory_mb"] = int(reference["memory_mb"])
        limits = dataclasses.replace(limits, **changes)
    else:
        tests = reference
    if isinstance(tests, (str, bytes)) or not isinstance(tests, Sequence) or not tests:
        raise ValueError(f"code reference needs a non-empty list of tests, got {tests!r:.200}")
    compiled: list[Any] = []
    for i, t in enumerate(tests):
        if isinstance(t, str):
            compiled.append(_compile_assert_test(i, t))
        elif isinstance(t, Mapping) and isinstance(t.get("input", ""), str) and isinstance(t.get("output"), str):
            compiled.append(t)
        else:
            raise ValueError(f"code test {i} must be an assert string or {{'input': str, 'output': str}}, got {t!r:.200}")
    return compiled, limits


def run_test_cases(code: str, tests: Sequence[Any], limits: SandboxLimits = DEFAULT_CODE_LIMITS) -> list[bool]:
    """Runs ``code`` against each test in its own sandboxed process.

    Args:
      code: the program's source.
      tests: assert strings and/or ``{"input": str, "output": str}`` mappings (module docstring).
      limits: sandbox limits of each run.

    Returns:
      One bool per test: passed.

    Raises:
      ValueError: a malformed test.
      r1jax.rewards.sandbox.SandboxError: the sandbox cannot run here (not the program's fault).
    """
    compiled, _ = _parse_reference(list(tests), limits)
    return _run_compiled(code, compiled, limits)


def _run_compiled(code: str, tests: list[Any], limits: SandboxLimits) -> list[bool]:
    results = []
    for test in tests:
        if isinstance(test, _AssertTest):
            plan = json.dumps([list(step) for step in test.plan])
            res = run_python(_HARNESS, limits=limits, files={"solution.py": code, "plan.json": plan}, main="harness.py")
            results.append(res.ok and _passes(test, res.stdout))
        else:
            res = run_python(code, stdin=test.get("input", ""), limits=limits, main="solution.py")
            got = res.stdout.decode("utf-8", errors="replace")
            results.append(res.ok and _normalise_output(got) == _normalise_output(test["output"]))
    return results


def code_tests(prompt: str, completion: str, reference: Any, *, limits: SandboxLimits | None = None) -> float:
    """Share of the reference's test cases that the completion's program passes.

    Args:
      prompt: the prompt (used only to restore a prefilled ``<think>``).
      completion: the generated text holding the program.
      reference: the tests (see the module docstring).
      limits: sandbox limits (default :data:`DEFAULT_CODE_LIMITS`; a reference's ``time_limit_s``
        and ``memory_mb`` override them). Bind with ``functools.partial`` to register a variant.

    Returns:
      passed / total in [0, 1]; 0.0 when the completion has no program.

    Raises:
      ValueError: a malformed reference. SandboxError: the sandbox cannot run here.
    """
    tests, limits = _parse_reference(reference, limits or DEFAULT_CODE_LIMITS)
    code = extract_code(prompt, completion)
    if code is None or not code.strip():
        return 0.0
    passed = _run_compiled(code, tests, limits)
    return sum(passed) / len(passed)
