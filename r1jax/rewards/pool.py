"""Worker processes that run reward functions with per-sample timeouts.

Why processes: math-verify (sympy) can hang or blow up on adversarial answers, its own timeouts use
``signal.alarm`` (main thread only), and a trainer process has JAX threads around. Each worker is a
fresh interpreter started with ``subprocess`` (the equivalent of multiprocessing's ``spawn``: never a
fork of the JAX process, and unlike ``spawn``/``forkserver`` it never re-imports the caller's
``__main__``, so a script without an ``if __name__ == "__main__"`` guard works), so in a worker:

1. *soft timeout*: an ``ITIMER_REAL`` timer in the worker's main thread raises
   :class:`RewardTimeout` (a ``BaseException``, so a reward's ``except Exception`` cannot swallow
   it) after ``timeout_s``; the worker survives and goes on with the next sample.
2. *hard timeout*: if no answer arrived ``grace_s`` after that (C code that never returns to the
   interpreter: a huge integer power, a blocked signal), the pool SIGKILLs the worker and starts a
   replacement. Sandboxed programs started by a killed worker die with it (``PDEATHSIG``).

Either way the sample scores 0 and the result says ``"timeout"``. A reward that raises, returns a
non-number or a non-finite number gives ``"error"``; a worker that dies (segfault, OOM) also gives
``"error"``. Nothing of that reaches the caller as an exception.

A worker's address space is limited (``memory_limit_mb``, RLIMIT_AS soft limit) so that a sympy
blow-up raises MemoryError in the worker instead of eating the machine.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Literal, Sequence

__all__ = ["RewardPool", "RewardTask", "TaskResult", "RewardTimeout", "call_with_timeout"]

logger = logging.getLogger("r1jax.rewards")

Status = Literal["ok", "error", "timeout"]


class RewardTimeout(BaseException):
    """Raised inside a reward function when its soft timeout expires (BaseException on purpose)."""


@dataclasses.dataclass(frozen=True)
class RewardTask:
    """One reward function applied to one sample."""

    fn: Callable[[str, str, Any], float]
    prompt: str
    completion: str
    reference: Any
    timeout_s: float | None  # soft limit; None: no time limit at all


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """``value`` is 0.0 unless ``status == "ok"``; ``message`` says what went wrong."""

    value: float
    status: Status
    message: str = ""


def _on_alarm(signum, frame):
    raise RewardTimeout()


def call_with_timeout(fn: Callable[[str, str, Any], float], prompt: str, completion: str, reference: Any,
                      timeout_s: float | None) -> TaskResult:
    """Calls one reward function and converts every outcome into a :class:`TaskResult`.

    The soft timeout (``setitimer``) is only armed in the main thread of the process, where signal
    handlers run; elsewhere the call is unbounded (the pool's hard timeout still applies in a worker).

    Args:
      fn: ``fn(prompt, completion, reference) -> float``.
      prompt, completion, reference: its arguments.
      timeout_s: soft time limit in seconds, or None.

    Returns:
      The result: ``"ok"`` with a finite float, or ``"timeout"`` / ``"error"`` with value 0.0.
    """
    armed = timeout_s is not None and threading.current_thread() is threading.main_thread()
    old = None
    try:
        if armed:
            old = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            value = fn(prompt, completion, reference)
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
    except RewardTimeout:
        return TaskResult(0.0, "timeout", f"no result within {timeout_s:g} s (soft timeout)")
    except Exception as e:  # noqa: BLE001 - a reward must never crash the run
        return TaskResult(0.0, "error", f"{type(e).__name__}: {e}"[:500])
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return TaskResult(0.0, "error", f"returned {type(value).__name__}, not a number")
    try:
        value = float(value)
    except Exception as e:  # noqa: BLE001
        return TaskResult(0.0, "error", f"returned a value float() rejects: {e}"[:500])
    if not math.isfinite(value):
        return TaskResult(0.0, "error", f"returned a non-finite value {value}")
    return TaskResult(value, "ok")


def _watch_parent(parent_pid: int) -> None:
    # A worker must not outlive the trainer (e.g. killed with SIGKILL): poll for re-parenting.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _worker_entry() -> None:
    """Entry point of a worker process: ``python -c '...; _worker_entry()' FD PARENT_PID MEM PRELOAD...``."""
    import multiprocessing.connection as mpc
    import sys

    fd, parent_pid, mem = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    preload = tuple(sys.argv[4:])
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _worker_main(mpc.Connection(fd), mem if mem > 0 else None, preload)


def _worker_main(conn, memory_limit_mb: int | None, preload: tuple[str, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if memory_limit_mb is not None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_limit_mb << 20
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # soft only: sandboxes may set their own
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError as e:  # the reward that needs it will report the error per sample
            logger.warning("reward worker could not preload %s: %s", name, e)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, payload = msg
        try:
            task = pickle.loads(payload)
        except Exception as e:  # noqa: BLE001 - e.g. the reward's module is not importable here
            res = TaskResult(0.0, "error", f"cannot load the task in the worker: {type(e).__name__}: {e}"[:500])
        else:
            res = call_with_timeout(task.fn, task.prompt, task.completion, task.reference, task.timeout_s)
        try:
            conn.send((task_id, res))
        except (BrokenPipeError, OSError):
            return


_WORKER_CODE = "import r1jax.rewards.pool as p; p._worker_entry()"


class _Worker:
    """One worker: a fresh interpreter (no fork of the caller, no re-import of its ``__main__``)."""

    def __init__(self, memory_limit_mb, preload, env):
        parent, child = multiprocessing.Pipe(duplex=True)
        fd = child.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(fd), str(os.getpid()), str(memory_limit_mb or 0), *preload],
            pass_fds=(fd,), close_fds=True, env=env, stdin=subprocess.DEVNULL,
        )
        child.close()
        self.conn = parent
        self.ready = False
        self.started = time.monotonic()
        self.task: tuple[int, float] | None = None  # (task index, hard deadline)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            logger.error("reward worker %d did not die after SIGKILL", self.proc.pid)
        self.conn.close()


class RewardPool:
    """A pool of reward worker processes with per-task soft and hard timeouts.

    Args:
      num_workers: number of worker processes (>= 1).
      grace_s: a task's hard deadline is ``timeout_s + grace_s`` after it was sent.
      memory_limit_mb: RLIMIT_AS soft limit of each worker (None: unlimited).
      preload: modules imported by each worker before it reports ready.
      startup_timeout_s: how long to wait for a worker to come up before giving up.

    Workers are fresh interpreters (``sys.executable``, like multiprocessing's ``spawn``): nothing
    is forked from the caller (safe next to JAX threads) and the caller's ``__main__`` is never
    re-imported. Reward functions travel by pickle, i.e. by module and name: define them in an
    importable module. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        num_workers: int = 2,
        *,
        grace_s: float = 2.0,
        memory_limit_mb: int | None = 4096,
        preload: Sequence[str] = ("r1jax.rewards", "math_verify"),
        startup_timeout_s: float = 300.0,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._preload = tuple(preload)
        # Replacement workers get the environment of the pool's creation, not of the moment.
        self._env = dict(os.environ)
        self._env.setdefault("JAX_PLATFORMS", "cpu")  # a reward that imports JAX must not grab the GPU
        self._memory_limit_mb = memory_limit_mb
        self._grace_s = grace_s
        self._startup_timeout_s = startup_timeout_s
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self._workers = [self._new_worker() for _ in range(num_workers)]

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def _new_worker(self) -> _Worker:
        return _Worker(self._memory_limit_mb, self._preload, self._env)

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._new_worker()
        self.restarts += 1

    def map(self, tasks: Sequence[RewardTask]) -> list[TaskResult]:
        """Runs every task; returns one result per task, in order. Never raises for a task's failure.

        Raises:
          RuntimeError: the pool is closed, or no worker could start within ``startup_timeout_s``.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            results: list[TaskResult | None] = [None] * len(tasks)
            pending = collections.deque(range(len(tasks)))
            while pending or any(w.task is not None for w in self._workers):
                for w in self._workers:
                    if w.ready and w.task is None and pending:
                        j = pending.popleft()
                        try:
                            payload = pickle.dumps(tasks[j])
                        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable reference
                            results[j] = TaskResult(0.0, "error", f"cannot send the task to a worker: {type(e).__name__}: {e}"[:500])
                            continue
                        try:
                            w.conn.send((j, payload))
                        except (BrokenPipeError, OSError):
                            pending.appendleft(j)  # the worker is gone: the collector replaces it
                            continue
                        limit = tasks[j].timeout_s
                        w.task = (j, math.inf if limit is None else time.monotonic() + limit + self._grace_s)
                self._wait_and_collect(tasks, results)
            return [r if r is not None else TaskResult(0.0, "error", "lost") for r in results]

    def _wait_and_collect(self, tasks, results) -> None:
        now = time.monotonic()
        deadlines = [w.task[1] for w in self._workers if w.task is not None]
        if any(not w.ready for w in self._workers):
            deadlines.append(now + 0.5)
        timeout = min(1.0, max(0.0, min(deadlines) - now)) if deadlines else 0.5
        conns = {w.conn: i for i, w in enumerate(self._workers)}
        dead = set()
        for obj in multiprocessing.connection.wait(list(conns), timeout=timeout):
            i = conns[obj]
            w = self._workers[i]
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                dead.add(i)  # the worker's end closed: it exited or was killed
                continue
            if msg[0] == "ready":
                w.ready = True
                continue
            j, res = msg
            if w.task is not None and w.task[0] == j:
                results[j] = res
                w.task = None
        for i, w in enumerate(self._workers):
            if i in dead or not w.alive():
                try:
                    code = w.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                if w.task is not None:
                    j = w.task[0]
                    results[j] = TaskResult(0.0, "error", f"worker died (exit code {code})")
                    logger.warning("reward worker %d died (exit code %s); restarting it", w.proc.pid, code)
                elif not w.ready:
                    raise RuntimeError(f"reward worker failed to start (exit code {code})")
                self._replace(i)
            elif w.task is not None and time.monotonic() > w.task[1]:
                j = w.task[0]
                results[j] = TaskResult(
                    0.0, "timeout", f"no result within {tasks[j].timeout_s + self._grace_s:g} s (worker killed)"
                )
                self._replace(i)
            elif not w.ready and time.monotonic() - w.started > self._startup_timeout_s:
                raise RuntimeError(f"reward worker did not start within {self._startup_timeout_s:g} s")

    def close(self) -> None:
        """Stops the workers (politely, then by force)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for w in self._workers:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            deadline = time.monotonic() + 2.0
            for w in self._workers:
                try:
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                w.kill()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
