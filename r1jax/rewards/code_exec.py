"""Code reward: run the generated Python against test cases in the sandbox; score = share passed.

The program is the last fenced ```` ```python ```` block of the ``<answer>`` block, or the answer
block itself, or the last fenced python block of the completion
(:func:`r1jax.rewards.parsing.extract_code`). Each test case runs in its own sandboxed process
(:mod:`r1jax.rewards.sandbox`: fresh tmpfs work dir, no network, resource limits, ...):

- an **assert test** (a string of Python, e.g. ``"assert add(2, 3) == 5"``) runs after the program
  in the same namespace (``__name__ == "__solution__"``, so a ``main()`` guard does not fire). It
  passes when the whole script exits with status 0 *and* the harness afterwards prints a one-time
  token that it read from a private pipe before the program started: ``sys.exit(0)`` /
  ``os._exit(0)`` inside the program ends the run before the token is printed, so an early exit
  does not pass the asserts that never ran.
- a **stdin/stdout test** (a mapping ``{"input": str, "output": str}``) runs the program as
  ``__main__`` with that standard input; it passes when it exits with status 0 and its output
  equals ``output`` up to trailing whitespace on each line and trailing blank lines.

Reference: a list of tests, or a mapping ``{"tests": [...], "time_limit_s": float,
"memory_mb": int}`` (limits optional: per test, CPU seconds and address space; the wall clock is
``3 * time_limit_s + 2`` s to absorb interpreter start-up on a loaded machine).

Limits of the defence: a program that deliberately inspects the harness's frames (``sys._getframe``)
could find the token and fake completion. The sandbox still contains such a program; it only
defeats the reward signal, which a policy would have to discover.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any, Mapping, Sequence

from r1jax.rewards.parsing import extract_code
from r1jax.rewards.sandbox import SandboxLimits, run_python

__all__ = ["code_tests", "run_test_cases", "DEFAULT_CODE_LIMITS"]

DEFAULT_CODE_LIMITS = SandboxLimits(cpu_time_s=2.0, wall_time_s=6.0, memory_mb=512)

_ASSERT_HARNESS = """\
import os, sys
_r1jax_token = os.read(3, 4096)
os.close(3)
def _r1jax_run():
    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    for name in ("solution.py", "test.py"):
        with open(name, encoding="utf-8") as f:
            src = f.read()
        exec(compile(src, name, "exec"), ns)
_r1jax_run()
sys.stdout.flush()
os.write(1, b"\\n" + _r1jax_token + b"\\n")
"""


def _normalise_output(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _parse_reference(reference: Any, limits: SandboxLimits) -> tuple[list[Any], SandboxLimits]:
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
    for i, t in enumerate(tests):
        if isinstance(t, str):
            continue
        if isinstance(t, Mapping) and isinstance(t.get("input", ""), str) and isinstance(t.get("output"), str):
            continue
        raise ValueError(f"code test {i} must be an assert string or {{'input': str, 'output': str}}, got {t!r:.200}")
    return list(tests), limits


def run_test_cases(code: str, tests: Sequence[Any], limits: SandboxLimits = DEFAULT_CODE_LIMITS) -> list[bool]:
    """Runs ``code`` against each test in its own sandboxed process.

    Args:
      code: the program's source.
      tests: assert strings and/or ``{"input": str, "output": str}`` mappings (module docstring).
      limits: sandbox limits of each run.

    Returns:
      One bool per test: passed.

    Raises:
      r1jax.rewards.sandbox.SandboxError: the sandbox cannot run here (not the program's fault).
    """
    results = []
    for test in tests:
        if isinstance(test, str):
            token = secrets.token_hex(16)
            res = run_python(
                _ASSERT_HARNESS, limits=limits, files={"solution.py": code, "test.py": test},
                secret=token, main="harness.py",
            )
            results.append(res.ok and res.stdout.endswith(b"\n" + token.encode() + b"\n"))
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
    passed = run_test_cases(code, tests, limits)
    return sum(passed) / len(passed)
