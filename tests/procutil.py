"""Helpers for tests that drive r1jax as a child process."""

import signal
import subprocess


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
