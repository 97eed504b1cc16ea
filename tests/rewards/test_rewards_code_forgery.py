"""The code reward's verdict cannot be forged from inside the sandbox.

Every program here gets ``add`` wrong (or never defines it) and tries to make the harness report
success anyway: printing success markers, finding a token through ``__main__``, frames, ``gc`` or
``/proc``, writing to inherited file descriptors, exiting early, patching builtins, rewriting the
harness's files, or returning objects that compare equal to anything. Each must score 0.
"""

import importlib
import textwrap

import pytest

from r1jax.rewards import code_tests
from r1jax.rewards.code_exec import run_test_cases
from r1jax.rewards.sandbox import SandboxLimits

TESTS = ["assert add(1, 2) == 3", "assert add(20, 22) == 42", "assert not add(1, 1) - 2"]
LIMITS = SandboxLimits(cpu_time_s=2.0, wall_time_s=20.0, memory_mb=512)

_FIND_SECRETS = """
import os, re, sys
HEX = re.compile(rb"[0-9a-f]{32}")
def secrets_in(obj):
    data = obj.encode() if isinstance(obj, str) else obj
    return HEX.findall(data) if isinstance(data, (bytes, bytearray)) else []
def report(found):
    for token in found:
        os.write(1, b"\\n" + token + b"\\n")
    os._exit(0)
"""

FORGERIES = {
    "print success markers": """
        import os
        print("OK"); print("PASSED"); print("All tests passed"); print('["True", "True", "True"]')
        os._exit(0)
    """,
    "import __main__ and print its token": """
        import __main__, os
        for name, value in list(vars(__main__).items()):
            if isinstance(value, (bytes, str)):
                os.write(1, b"\\n" + (value.encode() if isinstance(value, str) else value) + b"\\n")
        os._exit(0)
    """,
    "walk the frames": _FIND_SECRETS + """
        found, frame = [], sys._getframe()
        while frame is not None:
            for scope in (frame.f_locals, frame.f_globals):
                for value in list(scope.values()):
                    found += secrets_in(value)
            frame = frame.f_back
        report(found)
    """,
    "scan gc.get_objects": _FIND_SECRETS + """
        import gc
        found = []
        for obj in gc.get_objects():
            if isinstance(obj, dict):
                for value in list(obj.values()):
                    found += secrets_in(value)
        report(found)
    """,
    "read /proc": _FIND_SECRETS + """
        found = []
        for pid in ("self", str(os.getppid()), "1"):
            for name in ("environ", "cmdline"):
                try:
                    found += secrets_in(open(f"/proc/{pid}/{name}", "rb").read())
                except OSError:
                    pass
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                fds = []
            for fd in fds:
                try:
                    found += secrets_in(os.read(int(fd), 4096)) if pid == "self" and int(fd) > 2 else []
                    found += secrets_in(open(f"/proc/{pid}/fd/{fd}", "rb").read(4096))
                except (OSError, ValueError):
                    pass
        report(found)
    """,
    "write to inherited fds": """
        import os
        for fd in range(3, 256):
            try:
                os.write(fd, b"\\n0\\n" * 4)
            except OSError:
                pass
        def add(a, b):
            return 0
    """,
    "sys.exit(0) before the tests": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)",
    "os._exit(0) before the tests": "import os\ndef add(a, b):\n    return 0\nos._exit(0)",
    "exit 0 from an excepthook and atexit": """
        import atexit, os, sys
        sys.excepthook = lambda *exc: os._exit(0)
        atexit.register(lambda: os._exit(0))
        def add(a, b):
            return 0
    """,
    "patch builtins": """
        import builtins
        builtins.repr = lambda obj: "True"
        builtins.AssertionError = type("Never", (Exception,), {})
        builtins.isinstance = lambda *a: True
        builtins.type = lambda *a: int
        def add(a, b):
            return 0
    """,
    "rewrite the harness's files": """
        import os
        for name in os.listdir("."):
            if name != "solution.py":
                try:
                    open(name, "w").write("")
                except OSError:
                    pass
        def add(a, b):
            return 0
    """,
    "return an object equal to anything": """
        class Anything:
            __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda *a: True
            __bool__ = lambda self: False
            __hash__ = lambda self: 0
            __repr__ = lambda self: "True"
        def add(a, b):
            return Anything()
    """,
    "return an int subclass equal to anything": """
        class Sly(int):
            __eq__ = lambda *a: True
            __ne__ = lambda *a: False
        def add(a, b):
            return Sly(0)
    """,
}


def _completion(program):
    return "<think>.</think><answer>\n```python\n" + textwrap.dedent(program).strip() + "\n```\n</answer>"


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_success_scores_zero(name):
    assert code_tests("", _completion(FORGERIES[name]), {"tests": TESTS, "time_limit_s": 2.0}) == 0.0


def test_an_honest_program_passes_the_same_tests():
    honest = "def add(a, b):\n    return a + b\n"
    assert run_test_cases(honest, TESTS, LIMITS) == [True, True, True]
    assert run_test_cases("def add(a, b):\n    return a * b\n", TESTS, LIMITS) == [False, False, False]


# ------------------------------------------------------------------ checks applied in the parent

PROGRAM = """
def f(x):
    return x * 2
def is_even(n):
    return n % 2 == 0
def mixed():
    return (1, [2.5, None], {"k": {3, 4}}, frozenset({5}), b"x", 1 + 2j, float("inf"), -0.0)
"""


def test_assert_forms_that_pass():
    tests = [
        "assert f(2) == 4",
        "assert 4 == f(2), 'a message'",
        "assert 0 <= f(3) < 10",
        "import math\nassert abs(f(0.5) - math.sqrt(1)) < 1e-9",
        "assert is_even(4) and not is_even(3)",
        "assert is_even(3) or f(1) == 2",
        "assert f(1) in [1, 2, 3] and f(1) not in {5}",
        "x = [3, 1, 2]\nassert sorted(x) == [1, 2, 3]\nassert f(len(x)) == 6",
        "assert mixed() == (1, [2.5, None], {'k': {3, 4}}, frozenset({5}), b'x', 1+2j, float('inf'), 0.0)",
        "assert f(2) is not None and f('ab') == 'abab'",
    ]
    assert run_test_cases(PROGRAM, tests, LIMITS) == [True] * len(tests)


def test_assert_forms_that_fail():
    tests = [
        "assert f(2) == 5",
        "assert f(2) < 1",
        "assert is_even(3)",
        "assert f(1) == 2\nassert f(2) == 5",  # every top-level assert must hold
        "assert f(None) == 0",  # the operand raises in the sandbox
        "assert f(1) < 'a'",  # the comparison raises in the parent
        "assert is_even(4) or f(None) == 0",  # operands are evaluated eagerly (module docstring)
        "assert f(2) == 4\nraise SystemExit(0)",
    ]
    assert run_test_cases(PROGRAM, tests, LIMITS) == [False] * len(tests)


def test_literal_expected_values_never_enter_the_sandbox(monkeypatch):
    code_exec = importlib.import_module("r1jax.rewards.code_exec")
    sent = []

    def spy(source, **kwargs):
        sent.append((source, dict(kwargs.get("files") or {}), kwargs.get("stdin", "")))
        return real(source, **kwargs)

    real = code_exec.run_python
    monkeypatch.setattr(code_exec, "run_python", spy)
    tests = ["assert f(493_827_160) == 987654320", "assert ['q7q7', 1] == [f('q7'), 1]"]
    assert run_test_cases(PROGRAM, tests, LIMITS) == [True, True]
    assert len(sent) == 2
    for source, files, stdin in sent:
        everything = source + stdin + "".join(files.values())
        assert "987654320" not in everything and "q7q7" not in everything
        assert "493827160" in everything or "493_827_160" in everything or "f('q7')" in everything


@pytest.mark.parametrize(
    ("test", "message"),
    [
        ("def check(candidate):\n    assert candidate(1) == 2\ncheck(f)", "code test 0 has no top-level assert"),
        ("assert (", "code test 0 is not valid Python"),
        ("print('no assert at all')", "code test 0 has no top-level assert"),
    ],
)
def test_assert_tests_that_cannot_be_checked_are_reference_errors(test, message):
    with pytest.raises(ValueError, match=message):
        code_tests("", "no code in this completion", [test])
