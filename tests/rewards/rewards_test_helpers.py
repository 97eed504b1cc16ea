"""Reward functions with known misbehaviour, importable by reward worker processes.

The pool fixtures put this directory on the workers' PYTHONPATH (workers are fresh interpreters).
"""

import os
import signal
import time


def constant_one(prompt, completion, reference):
    return 1.0


def length_reward(prompt, completion, reference):
    return float(len(completion))


def crashing_reward(prompt, completion, reference):
    if "crash" in completion:
        raise RuntimeError("deliberate failure")
    return 1.0


def sleepy_reward(prompt, completion, reference):
    """Sleeps ``reference`` seconds (interruptible: the soft timeout catches it)."""
    time.sleep(float(reference))
    return 1.0


def swallowing_sleepy_reward(prompt, completion, reference):
    """A reward whose ``except Exception`` must not swallow the soft timeout."""
    try:
        time.sleep(float(reference))
    except Exception:  # noqa: BLE001
        return 1.0
    return 1.0


def uninterruptible_reward(prompt, completion, reference):
    """Blocks SIGALRM, then sleeps: only the hard timeout (killing the worker) can stop it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(float(reference))
    return 1.0


def dying_reward(prompt, completion, reference):
    os._exit(3)


def nan_reward(prompt, completion, reference):
    return float("nan")


def string_reward(prompt, completion, reference):
    return "high"
