"""Helpers for tests that drive r1jax as a child process."""

import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def kill_on_log_line(proc: subprocess.Popen, text: str, stream=None) -> None:
    """SIGKILLs ``proc`` as soon as a line containing ``text`` appears on ``stream`` (default its stderr;
    read line by line: the event, not a timer); fails if the child ends without printing it."""
    try:
        for line in stream if stream is not None else proc.stderr:
            if text in line:
                break
        else:
            raise AssertionError(f"the process ended before it logged {text!r}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)


def start_jax_server(model_dir, port_file, *args: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Starts ``r1jax serve --engine jax`` on a free loopback port (stdout and stderr merged, text) and
    returns it with its address once it has written ``port_file``; fails with its output if it
    exits first or does not start within ``timeout`` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1jax.rollout.cli", "--engine", "jax", "--model", str(model_dir),
         "--port", "0", "--port-file", str(port_file), *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    deadline = time.monotonic() + timeout
    while not pathlib.Path(port_file).exists():
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        if time.monotonic() >= deadline:
            proc.kill()
            raise AssertionError("server did not start")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{pathlib.Path(port_file).read_text()}"
