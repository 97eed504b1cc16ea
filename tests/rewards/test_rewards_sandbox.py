"""The code sandbox: escape attempts, each contained; and the code reward on top of it.

Limits are kept small so every attempt ends within a few seconds, and the fork bomb is bounded by
RLIMIT_NPROC of a throw-away uid (root itself is exempt from RLIMIT_NPROC) plus the pid namespace.
"""

import os
import pathlib
import socket
import textwrap

import pytest

from r1jax.rewards import code_tests
from r1jax.rewards.code_exec import run_test_cases
from r1jax.rewards.sandbox import (
    _UID_BASE,
    _UID_SPAN,
    SandboxError,
    SandboxLimits,
    available_isolation,
    run_python,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
ISOLATION = available_isolation()
needs_namespaces = pytest.mark.skipif(
    ISOLATION != "namespaces",
    reason=f"network / filesystem isolation needs root and a working `unshare` (have: {ISOLATION})",
)
SMALL = SandboxLimits(cpu_time_s=1.0, wall_time_s=10.0, memory_mb=256, max_processes=8, max_output_bytes=4096)


def run(src, **kw):
    return run_python(textwrap.dedent(src), limits=kw.pop("limits", SMALL), **kw)


def _sandbox_uid_processes(run_uid):
    """Processes left running as ``run_uid``, the throw-away uid of one run (``None``: any sandbox
    uid). Per run, because pytest-xdist's other worker may be running a sandbox of its own."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                uid = int(open(f"/proc/{d}/status").read().split("\nUid:")[1].split()[0])
            except (OSError, IndexError):
                continue
            if uid == run_uid if run_uid is not None else _UID_BASE <= uid < _UID_BASE + _UID_SPAN:
                found.append(int(d))
    return found


def test_plain_program_runs_with_stdin_and_exit_code():
    r = run("import sys; data = sys.stdin.read(); print(data.upper()); sys.exit(3)", stdin="hello")
    assert r.returncode == 3 and r.stdout == b"HELLO\n" and not r.timed_out and not r.ok
    assert run("print(6 * 7)").ok


def test_runs_unprivileged_in_a_fresh_cwd():
    r = run("import os; print(os.getuid(), os.getcwd(), sorted(os.listdir('.')))")
    uid, cwd, listing = r.stdout.decode().split(" ", 2)
    if os.geteuid() == 0:
        assert int(uid) != 0  # root would be exempt from RLIMIT_NPROC
    assert listing.strip() == "['main.py']"
    assert cwd != os.getcwd()


@needs_namespaces
def test_escape_writing_outside_the_work_dir(tmp_path):
    target = tmp_path / "escaped.txt"
    project_file = REPO / "escaped_from_sandbox.txt"
    r = run(f"""
        import os
        results = []
        for path in [{str(target)!r}, {str(project_file)!r}, "/etc/escaped", "/usr/escaped", "/escaped"]:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("pwned")
                results.append("wrote")
            except OSError as e:
                results.append(type(e).__name__)
        print(results)
        open("inside.txt", "w").write("fine")  # the work dir itself is writable
    """)
    assert r.ok, r.stderr
    assert not target.exists() and not project_file.exists()
    assert not pathlib.Path("/etc/escaped").exists() and not pathlib.Path("/usr/escaped").exists()
    assert not pathlib.Path("/escaped").exists()
    # /etc, /usr and / are read-only inside; the host's tmp path only exists in the sandbox's own /tmp.
    assert "'OSError'" in r.stdout.decode() or "PermissionError" in r.stdout.decode()


@needs_namespaces
def test_escape_reading_the_project_files():
    r = run(f"""
        import os
        for path in [{str(REPO / 'pyproject.toml')!r}, {str(pathlib.Path(__file__).resolve())!r}, "/root/.bash_history"]:
            try:
                open(path).read()
                print("READ", path)
            except OSError as e:
                print(type(e).__name__)
        print(os.path.exists({str(REPO)!r}))
    """)
    assert r.ok, r.stderr
    out = r.stdout.decode()
    assert "READ" not in out and out.strip().endswith("False")


@needs_namespaces
def test_escape_opening_a_network_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        r = run(f"""
            import socket
            for addr in [("127.0.0.1", {port}), ("1.1.1.1", 80), ("8.8.8.8", 53)]:
                s = socket.socket()
                s.settimeout(2)
                print(s.connect_ex(addr) == 0)
        """)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever arrived from the sandbox
    finally:
        server.close()
    assert r.ok, r.stderr
    assert r.stdout.decode().split() == ["False", "False", "False"]


def test_fork_limit_is_enforced():
    r = run("""
        import os, time
        ok = 0
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            ok += 1
        print(ok)
    """)
    assert r.ok, r.stderr
    assert int(r.stdout) == SMALL.max_processes - 1  # the program itself is one of the processes


def test_fork_bomb_is_contained():
    r = run("""
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    """, limits=SandboxLimits(cpu_time_s=1.0, wall_time_s=2.0, max_processes=8))
    assert r.timed_out and not r.ok
    assert _sandbox_uid_processes(r.uid) == []  # every process of the bomb is gone


def test_memory_bomb_is_contained():
    r = run("""
        blocks = []
        while True:
            blocks.append(bytearray(32 << 20))
    """)
    assert not r.ok and b"MemoryError" in r.stderr


def test_infinite_loop_is_killed():
    r = run("while True: pass", limits=SandboxLimits(cpu_time_s=1.0, wall_time_s=20.0))
    assert not r.ok and r.returncode < 0  # SIGXCPU / SIGKILL from RLIMIT_CPU, well before the wall clock
    assert not r.timed_out


def test_sleeping_program_hits_the_wall_clock():
    r = run("import time; time.sleep(600)", limits=SandboxLimits(cpu_time_s=1.0, wall_time_s=1.0))
    assert r.timed_out and not r.ok


def test_huge_output_is_cut_and_killed():
    r = run("while True: print('x' * 1000)")
    assert r.output_exceeded and not r.ok
    assert len(r.stdout) == SMALL.max_output_bytes


def test_huge_file_is_refused():
    r = run("open('big', 'wb').write(b'x' * (64 << 20))", limits=SandboxLimits(file_size_mb=1))
    assert not r.ok and b"File too large" in r.stderr


def test_bad_file_name_and_unavailable_isolation():
    with pytest.raises(ValueError, match="plain file name"):
        run_python("print(1)", files={"../x.py": ""})
    if os.geteuid() == 0:
        with pytest.raises(SandboxError, match="rlimits"):
            run_python("print(1)", limits=SandboxLimits(isolation="rlimits"))
    with pytest.raises(SandboxError):  # no interpreter there: an infrastructure error, not a wrong program
        run_python("print(1)", limits=SandboxLimits(python="/nonexistent/python3"))


# ------------------------------------------------------------------------------------ code reward

ADD = "<think>easy</think>\n<answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>"


def test_code_reward_assert_tests():
    tests = ["assert add(1, 2) == 3", "assert add(5, 0) == 5", "assert add(2, 2) == 5"]
    assert code_tests("", ADD, tests) == pytest.approx(2 / 3)
    assert code_tests("", ADD, {"tests": tests[:2]}) == 1.0
    assert code_tests("", "no code here", tests) == 0.0
    assert code_tests("", "```python\ndef add(a, b):\n    return a - b\n```", tests) == pytest.approx(1 / 3)


def test_code_reward_early_exit_does_not_pass_asserts():
    for exit_call in ("import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"):
        hack = f"```python\ndef add(a, b):\n    return 0\n{exit_call}\n```"
        assert code_tests("", hack, ["assert add(1, 2) == 3"]) == 0.0, exit_call


def test_code_reward_stdin_stdout_tests():
    prog = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10"}, {"input": "1 1", "output": "3"}]
    assert code_tests("", prog, tests) == pytest.approx(2 / 3)
    main_guard = "```python\ndef main():\n    print(int(input()) * 2)\nif __name__ == '__main__':\n    main()\n```"
    assert code_tests("", main_guard, [{"input": "21", "output": "42   \n\n"}]) == 1.0


def test_code_reward_limits_from_reference():
    slow = "```python\nimport time\ndef f():\n    return 1\nwhile True: pass\n```"
    ref = {"tests": ["assert f() == 1"], "time_limit_s": 0.5, "memory_mb": 128}
    assert code_tests("", slow, ref) == 0.0
    assert run_test_cases("def f():\n    return 1\n", ["assert f() == 1"]) == [True]


def test_code_reward_bad_reference():
    with pytest.raises(ValueError, match="non-empty list"):
        code_tests("", ADD, [])
    with pytest.raises(ValueError, match="test 0"):
        code_tests("", ADD, [{"stdin": "1"}])
    with pytest.raises(ValueError, match="'tests'"):
        code_tests("", ADD, {"cases": ["assert True"]})


# ------------------------------------------------------------------------------------ "uid" fallback

SYSTEM_PYTHON = "/usr/bin/python3"  # the uid fallback needs an interpreter other users may run
needs_uid_fallback = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="the 'uid' fallback needs a root host and a system-wide /usr/bin/python3",
)
UID_ONLY = SandboxLimits(cpu_time_s=1.0, wall_time_s=10.0, max_processes=8, isolation="uid", python=SYSTEM_PYTHON)


@needs_uid_fallback
def test_uid_fallback_limits_forks_and_kills_escaped_daemons():
    r = run("""
        import os, time
        ok = 0
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.setsid()  # leaves the run's session: only the kill-by-uid finds it
                time.sleep(60)
                os._exit(0)
            ok += 1
        print(os.getuid(), ok)
    """, limits=UID_ONLY)
    assert r.ok and r.isolation == "uid", r.stderr
    uid, forked = map(int, r.stdout.split())
    assert uid != 0 and forked == UID_ONLY.max_processes - 1 and uid == r.uid
    assert _sandbox_uid_processes(r.uid) == []


@needs_uid_fallback
def test_uid_fallback_cannot_write_the_project():
    target = REPO / "escaped_from_uid_sandbox.txt"
    r = run(f"open({str(target)!r}, 'w').write('pwned')", limits=UID_ONLY)
    assert not r.ok and b"PermissionError" in r.stderr
    assert not target.exists()
