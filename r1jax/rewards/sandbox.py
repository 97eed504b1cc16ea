"""Runs untrusted Python (a policy's generated code) in a contained child process.

A run: the host starts ``setpriv --pdeathsig KILL [unshare ...] python -I -S -c <runner>`` in a new
session and pipes it a JSON payload. The *runner* (trusted code, still privileged) sets up the
isolation, writes the program's files into a fresh work directory, then forks the program, which
drops to a throw-away uid, applies the resource limits and ``exec``s ``python -I -B <program>``.
The runner waits (as pid 1 of the sandbox when namespaces are on) and reports the program's exit
status on a private pipe. The host enforces the wall clock and the output cap and kills everything
on overrun.

Isolation levels (``SandboxLimits.isolation``; :func:`available_isolation` probes what works here):

- ``"namespaces"``: a root host with a working ``unshare`` binary (CAP_SYS_ADMIN for the mount,
  pid and network namespaces; CAP_SETUID for the uid drop). The default where available.
- ``"uid"``: a root host without namespaces (e.g. a container without CAP_SYS_ADMIN). Needs an
  interpreter that other users may execute (a Python under ``/root`` is not).
- ``"rlimits"``: anything else (a non-root user). Resource limits, a new session and a temporary
  directory only: a guard against accidents, NOT a boundary against a hostile program. Refused on a
  root host, where RLIMIT_NPROC would not apply.

Which protection rests on which mechanism:

- **Network access** - ``namespaces``: a new network namespace holding only a downed loopback
  (no route anywhere, not even to the host's 127.0.0.1). ``uid`` / ``rlimits``: NONE.
- **Reading the host's files (the project, /root, /home, /tmp, ...)** - ``namespaces``: a private
  mount namespace and ``chroot`` into a fresh tmpfs root holding only read-only binds of ``/usr``,
  ``/bin``, ``/sbin``, ``/lib*``, ``/etc`` and the base interpreter's prefix, a minimal ``/dev``
  (null, zero, random, urandom) and the namespace's own ``/proc``; everything else is absent.
  ``uid``: file permissions of a throw-away uid (world-readable files stay readable). ``rlimits``:
  nothing.
- **Writing outside the work directory** - ``namespaces``: every bind is read-only, the root is
  read-only, and the program runs as a throw-away uid with no capabilities and ``no_new_privs``
  (setuid binaries do nothing). Only the work dir and ``/tmp`` (two size-limited tmpfs, discarded
  after the run) are writable. ``uid``: permissions of the throw-away uid. ``rlimits``: the host
  user's permissions.
- **Fork bomb** - RLIMIT_NPROC, counted per uid: the program runs as a fresh random uid, so the
  count is the run's own processes (as root, RLIMIT_NPROC would not apply at all). ``namespaces``
  adds a pid namespace: every descendant dies with its init. After a killed run the host also
  kills whatever still runs as that uid and waits until it is gone. ``rlimits``: RLIMIT_NPROC of
  the host user (its current process count plus ``max_processes``).
- **Memory bomb** - RLIMIT_AS per process (so at most ``memory_mb x max_processes`` in total).
- **Infinite loop** - RLIMIT_CPU (SIGXCPU, then SIGKILL a second later).
- **Sleeping / blocked program** - the host's wall clock: SIGKILL to the whole session (and with
  it the pid namespace).
- **Orphaned runs** - the sandbox has a parent-death signal: if the thread that started it dies (a
  reward worker killed on a hard timeout), the sandbox is killed too.
- **Filling the disk** - ``namespaces``: tmpfs size limit (``disk_mb``); RLIMIT_FSIZE per file
  in every mode.
- **Huge output** - the host keeps at most ``max_output_bytes`` of stdout and of stderr, then
  kills the run.
- **Leaking the environment / file descriptors** - a minimal environment, ``python -I`` (no
  ``PYTHON*`` variables, no user site-packages), only fds 0-2 inherited.

Not contained in any mode: CPU time spent before the limits trip (at most ``cpu_time_s x
max_processes``); world-readable files under ``/etc`` (``namespaces``). Nothing a program does in
here decides a test's verdict: :mod:`r1jax.rewards.code_exec` compares the values it reports with
expected values that never enter the sandbox.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Mapping

from r1jax.config import field

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxError",
    "run_python",
    "available_isolation",
    "ISOLATION_LEVELS",
]

logger = logging.getLogger("r1jax.rewards")

ISOLATION_LEVELS = ("namespaces", "uid", "rlimits")
_SETUP_EXIT = 125
_SETUP_TAG = "r1jax-sandbox-setup-error:"
# Throw-away uids/gids are drawn from this range (above any regular account; no files are owned).
_UID_BASE = 1_500_000
_UID_SPAN = 1_000_000


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed program run."""

    cpu_time_s: float = field(2.0, gt=0.0, help="RLIMIT_CPU per process (rounded up to whole seconds)")
    wall_time_s: float = field(5.0, gt=0.0, help="wall-clock limit of the whole run, interpreter start included")
    memory_mb: int = field(512, ge=64, help="RLIMIT_AS (address space) per process, MiB")
    file_size_mb: int = field(8, ge=0, help="RLIMIT_FSIZE: largest file the program may write, MiB")
    disk_mb: int = field(32, ge=1, help="size of the tmpfs work directory and /tmp (namespaces isolation)")
    max_processes: int = field(8, ge=1, help="RLIMIT_NPROC: processes (threads) of the sandbox uid")
    max_open_files: int = field(64, ge=16, help="RLIMIT_NOFILE")
    max_output_bytes: int = field(1 << 20, ge=1024, help="stdout and stderr are each cut here; the run is killed")
    isolation: str = field("auto", choices=("auto",) + ISOLATION_LEVELS, help="required isolation; auto = best available")
    python: str | None = field(None, help="interpreter running the program (None: this process's base interpreter)")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """What came out of one run.

    ``returncode`` is negative for a signal (``-9`` = killed); ``timed_out`` means the wall clock
    ran out; ``output_exceeded`` that stdout or stderr passed ``max_output_bytes`` (the run was
    killed and the kept output is a prefix); ``uid`` the throw-away uid the program ran as (None
    when it kept the host's: not root, or ``rlimits``).
    """

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool
    isolation: str
    wall_s: float
    uid: int | None = None

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not the program's fault)."""


# --------------------------------------------------------------------------------------------
# The runner: executed in the child by `python -I -S -c`, reads the JSON payload from stdin.
# Trusted code; everything it does before `execve` happens with the host's privileges.

_RUNNER = r'''
import ctypes, json, os, resource, signal, sys, time

SETUP_EXIT = %(setup_exit)d
TAG = %(tag)r

def fail(msg):
    try:
        os.write(2, (TAG + " " + msg + "\n").encode())
    finally:
        os._exit(SETUP_EXIT)

try:
    raw = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        raw += chunk
    p = json.loads(raw.decode())
except Exception as e:
    fail("bad payload: %%r" %% (e,))

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

def mount(src, dst, fstype, flags, data=None):
    if libc.mount(src.encode() if src else None, dst.encode(), fstype.encode() if fstype else None,
                  ctypes.c_ulong(flags), data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        fail("mount %%s on %%s: %%s" %% (src, dst, os.strerror(e)))

def bind_ro(src, dst):
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)

uid = p["uid"]
mode = p["mode"]
try:
    if mode == "namespaces":
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = "/tmp"   # a fresh tmpfs over /tmp of this private mount namespace becomes the new root
        mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for path in p["binds"]:
            if os.path.islink(path) and os.path.dirname(path) == "/":
                os.symlink(os.readlink(path), root + path)
            elif os.path.exists(path):
                bind_ro(path, root + path)
        os.makedirs(root + "/dev", exist_ok=True)
        mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
        for dev in ("null", "zero", "random", "urandom"):
            open(root + "/dev/" + dev, "a").close()
            mount("/dev/" + dev, root + "/dev/" + dev, None, MS_BIND)
        os.symlink("/proc/self/fd", root + "/dev/fd")
        os.makedirs(root + "/proc", exist_ok=True)
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        size = "size=%%dm" %% p["disk_mb"]
        for d in ("/sandbox", "/tmp"):
            os.makedirs(root + d, exist_ok=True)
            mount("tmpfs", root + d, "tmpfs", MS_NOSUID | MS_NODEV, size + ",mode=1777")
        mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.chdir(root)
        os.chroot(".")
        workdir = "/sandbox"
    else:
        workdir = p["workdir"]
    for name, text in p["files"].items():
        path = os.path.join(workdir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        if uid is not None:
            os.chown(path, uid, uid)
    if uid is not None:
        os.chown(workdir, uid, uid)
    os.chdir(workdir)
    lim = p["limits"]
    status_fd = p["status_fd"]
    os.set_inheritable(status_fd, False)
except SystemExit:
    raise
except BaseException as e:
    fail("%%s: %%s" %% (type(e).__name__, e))

PR_SET_CHILD_SUBREAPER = 36
if mode != "namespaces":          # orphans of the program come back here, not to the host's init
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
pid = os.fork()
if pid == 0:
    try:
        # The program's stdin: an anonymous memory file (any size, no deadlock on a pipe).
        fd = os.memfd_create("stdin")
        os.write(fd, p["stdin"].encode())
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 0)
        os.close(fd)
        os.closerange(3, 1 << 16)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)       # drops every capability
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            fail("prctl(NO_NEW_PRIVS) failed")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # dies with the runner
        cpu = lim["cpu"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim["as"], lim["as"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize"], lim["fsize"]))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.execve(p["python"], [p["python"], "-I", "-B"] + p["argv"], p["env"])
    except BaseException as e:
        fail("exec %%s: %%s: %%s" %% (p["python"], type(e).__name__, e))
    os._exit(SETUP_EXIT)

# The runner waits (reaping orphans too) and reports the program's status on a private pipe.
os.closerange(0, 1)
status = None
while status is None:
    try:
        done, st = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if done == pid:
        status = os.waitstatus_to_exitcode(st)
if uid is not None and mode != "namespaces":
    # Descendants that outlived the program (daemons that left its session included) are orphans
    # of this subreaper: kill them by uid and reap them here, so none is left to the host's init
    # (which, in a container, may never reap them).
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/" + d + "/status", "rb") as f:
                        owner = [l for l in f if l.startswith(b"Uid:")][0].split()[1]
                    if int(owner) == uid:
                        os.kill(int(d), signal.SIGKILL)
                except (OSError, IndexError, ValueError):
                    pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            break
        time.sleep(0.005)
os.write(status_fd, b"%%d\n" %% (status if status is not None else -9))
os._exit(0)
''' % {"setup_exit": _SETUP_EXIT, "tag": _SETUP_TAG}


def _python_executable() -> str:
    """The base interpreter (not a virtualenv's): its prefix is what gets bound into the sandbox."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def _binds(python: str) -> list[str]:
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
    # The base interpreter's prefix only: a virtualenv (sys.prefix) may live inside the project.
    prefixes = {os.path.dirname(os.path.dirname(python))}
    if python == _python_executable():
        prefixes.add(os.path.realpath(sys.base_prefix))
    for prefix in sorted(prefixes):
        if not any(prefix == b or prefix.startswith(b + "/") for b in paths) and prefix != "/":
            paths.append(prefix)
    return paths


def _unshare_cmd() -> list[str] | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    return [exe, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--propagation", "private", "--"]


@functools.lru_cache(maxsize=None)
def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL``: the sandbox dies with the thread that started it (e.g. a reward
    worker killed on a hard timeout), instead of running on as an orphan."""
    exe = shutil.which("setpriv")
    if exe is None:
        return []
    try:
        ok = subprocess.run([exe, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return [exe, "--pdeathsig", "KILL", "--"] if ok else []


def _launch(
    source_files: Mapping[str, str], argv: list[str], stdin: str, limits: SandboxLimits, mode: str,
) -> SandboxResult:
    python = os.path.realpath(limits.python) if limits.python else _python_executable()
    root = os.geteuid() == 0
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if (root and mode != "rlimits") else None
    workdir = None
    nproc = limits.max_processes
    if mode != "namespaces":
        workdir = tempfile.mkdtemp(prefix="r1jax-sandbox-")
        os.chmod(workdir, 0o700)
        if uid is None:  # RLIMIT_NPROC counts all processes of the host user: leave room for them.
            nproc += _count_processes(os.getuid())
    payload = {
        "mode": mode,
        "uid": uid,
        "binds": _binds(python),
        "disk_mb": limits.disk_mb,
        "workdir": workdir,
        "files": dict(source_files),
        "stdin": stdin,
        "python": python,
        "argv": argv,
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir or "/sandbox", "TMPDIR": "/tmp",
                "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        "limits": {
            "cpu": max(1, math.ceil(limits.cpu_time_s)),
            "as": limits.memory_mb << 20,
            "fsize": limits.file_size_mb << 20,
            "nproc": nproc,
            "nofile": limits.max_open_files,
        },
    }
    cmd = [python, "-I", "-S", "-c", _RUNNER]
    if mode == "namespaces":
        cmd = _unshare_cmd() + cmd
    cmd = _pdeathsig_prefix() + cmd
    status_r, status_w = os.pipe()
    payload["status_fd"] = status_w
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True, pass_fds=(status_w,), cwd="/",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise SandboxError(f"cannot start the sandbox ({cmd[0]}): {e}") from e
    os.close(status_w)
    try:
        out, err, status, timed_out, exceeded = _communicate(
            proc, json.dumps(payload).encode(), status_r, limits.wall_time_s, limits.max_output_bytes
        )
    finally:
        killed = _kill(proc)
        # "uid": descendants that left the session; "namespaces": wait out the pid namespace's teardown.
        if uid is not None and (mode != "namespaces" or killed):
            _kill_uid(uid)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        os.close(status_r)
    # The runner reports the program's status; no report means the runner itself was killed.
    rc = int(status) if status.strip() and not timed_out else -signal.SIGKILL
    if _SETUP_EXIT in (proc.returncode, rc) and _SETUP_TAG.encode() in err:
        raise SandboxError(f"sandbox setup failed ({mode}): {err.decode(errors='replace').strip()}")
    return SandboxResult(
        returncode=rc, stdout=out, stderr=err, timed_out=timed_out,
        output_exceeded=exceeded, isolation=mode, wall_s=time.monotonic() - start, uid=uid,
    )


def _communicate(
    proc: subprocess.Popen, payload: bytes, status_fd: int, wall: float, cap: int
) -> tuple[bytes, bytes, bytes, bool, bool]:
    """Feeds the payload, collects at most ``cap`` bytes of each stream, enforces the wall clock.

    The run is over when the runner reports the program's status on ``status_fd`` (descendants
    that kept stdout open are not waited for; they are killed afterwards).

    Returns:
      (stdout, stderr, status line, timed_out, output_exceeded).
    """
    deadline = time.monotonic() + wall
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    status = bytearray()
    sel = selectors.DefaultSelector()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
    os.set_blocking(status_fd, False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    sel.register(status_fd, selectors.EVENT_READ)
    view = memoryview(payload)
    timed_out = exceeded = False

    def read_into(f) -> bool:
        """Reads what is there; False at EOF (or nothing more now)."""
        try:
            chunk = os.read(f.fileno(), 65536)
        except BlockingIOError:
            return False
        if not chunk:
            return False
        buf = bufs[f]
        buf += chunk
        return True

    try:
        while sel.get_map() and not status.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        n = os.write(f.fileno(), view[:65536])
                    except BrokenPipeError:
                        n, view = 0, view[:0]
                    view = view[n:]
                    if not view:
                        sel.unregister(f)
                        f.close()
                elif f == status_fd:
                    chunk = os.read(status_fd, 64)
                    status += chunk
                    if not chunk:
                        sel.unregister(f)
                elif not read_into(f):
                    sel.unregister(f)
            if any(len(b) > cap for b in bufs.values()):
                exceeded = True
                break
        if status.endswith(b"\n") and not exceeded:  # the program's output is all in the pipes now
            for f in (proc.stdout, proc.stderr):
                while len(bufs[f]) <= cap and read_into(f):
                    pass
            exceeded = any(len(b) > cap for b in bufs.values())
    finally:
        sel.close()
    for b in bufs.values():
        del b[cap:]
    if not timed_out and not exceeded:
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass  # a lingering runner or unshare: killed with the session right after
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), bytes(status), timed_out, exceeded


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILLs the run's session if it is still there; returns whether it had to."""
    killed = proc.poll() is None
    if killed:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable process (D state)
        logger.error("sandbox process %d did not die after SIGKILL", proc.pid)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None and not f.closed:
            f.close()
    return killed


def _uids_of(pid_dir: str) -> int | None:
    try:
        with open(os.path.join("/proc", pid_dir, "status"), "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _count_processes(uid: int) -> int:
    if not os.path.isdir("/proc"):
        return 256
    return sum(1 for d in os.listdir("/proc") if d.isdigit() and _uids_of(d) == uid)


def _kill_uid(uid: int, wait_s: float = 5.0) -> None:
    """Kills every process left as the run's throw-away uid and waits (bounded) until they are gone."""
    if not os.path.isdir("/proc"):
        return
    deadline = time.monotonic() + wait_s
    while True:
        found = False
        for d in os.listdir("/proc"):
            if d.isdigit() and _uids_of(d) == uid:
                found = True
                try:
                    os.kill(int(d), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not found:
            return
        if time.monotonic() > deadline:
            logger.error("sandbox processes of uid %d still present %g s after SIGKILL", uid, wait_s)
            return
        time.sleep(0.01)


@functools.lru_cache(maxsize=None)
def _probe(mode: str, python: str | None = None) -> bool:
    if mode == "namespaces" and (os.geteuid() != 0 or _unshare_cmd() is None):
        return False
    if mode == "uid" and os.geteuid() != 0:
        return False
    if mode == "rlimits" and os.geteuid() == 0:
        return False  # root is exempt from RLIMIT_NPROC: a fork bomb would not be bounded
    try:
        res = _launch({"probe.py": "print(6 * 7)"}, ["probe.py"], "", SandboxLimits(wall_time_s=30.0, python=python), mode)
    except SandboxError as e:
        logger.info("sandbox isolation %r unavailable: %s", mode, e)
        return False
    return res.ok and res.stdout.strip() == b"42"


def available_isolation(python: str | None = None) -> str:
    """The strongest isolation that works on this machine: "namespaces", "uid" or "rlimits".

    Probed once per process (and interpreter) by running a trivial program; see the module
    docstring for what each level protects against.

    Args:
      python: the interpreter that will run programs (None: this process's base interpreter).
    """
    for mode in ISOLATION_LEVELS:
        if _probe(mode, python):
            return mode
    raise SandboxError("not even an rlimits-only sandbox could run a trivial program here")


_WARNED: set[str] = set()


def _resolve_mode(requested: str, python: str | None) -> str:
    if requested == "auto":
        mode = available_isolation(python)
        if mode != "namespaces" and mode not in _WARNED:
            _WARNED.add(mode)
            logger.warning(
                "code sandbox: namespace isolation unavailable, using %r (see r1jax.rewards.sandbox "
                "for what it does not protect against)", mode,
            )
        return mode
    if not _probe(requested, python):
        raise SandboxError(f"sandbox isolation {requested!r} is not available on this machine")
    return requested


def run_python(
    source: str,
    *,
    stdin: str = "",
    limits: SandboxLimits = SandboxLimits(),
    files: Mapping[str, str] | None = None,
    main: str = "main.py",
) -> SandboxResult:
    """Runs a Python program in the sandbox and returns its exit status and (capped) output.

    Args:
      source: the program's source; written as ``main`` in a fresh working directory (the cwd).
      stdin: the program's standard input.
      limits: resource limits and the isolation level required (``"auto"``: the best available).
      files: more files to write next to it (name -> text; plain names, no directories).
      main: the file name of ``source``.

    Returns:
      A :class:`SandboxResult`.

    Raises:
      SandboxError: the sandbox could not be set up (the required isolation is unavailable, the
        interpreter cannot start, ...): an infrastructure failure, not a wrong program.
      ValueError: a file name that is not a plain name.
    """
    files = dict(files or {})
    files[main] = source
    for name in files:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"sandbox file name {name!r} must be a plain file name")
    mode = _resolve_mode(limits.isolation, limits.python)
    return _launch(files, [main], stdin, limits, mode)
