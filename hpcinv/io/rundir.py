"""The run-directory lock: one run at a time writes into an output directory.

A run (``invert``, ``invert --restart``, ``demo``, ``forward``, ``gradient``) holds
``DIR/.hpcinv.lock`` for its whole life. Rank 0 creates it atomically with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (atomic on local file systems, NFSv3+ and Lustre, unlike
``fcntl``/``flock`` locks, which are unreliable or disabled there) and writes one JSON object::

    {"host": ..., "pid": ..., "pid_start": ..., "since": "2026-...Z", "time": <epoch>,
     "command": "hpcinv invert ...", "uid": <user id>, "token": <random>}

While the run lives, rank 0 refreshes the file's mtime (the heartbeat): at every outer iteration
(:func:`heartbeat`) and from a daemon thread every :data:`HEARTBEAT_S` seconds. The lock is
released (the file removed, if it is still ours) by :func:`release_all`, which the CLI calls on
every exit path, by ``atexit``, and on SIGTERM outside an inversion loop (the inversion's own
SIGTERM handler checkpoints and returns normally, then the lock is released).

A lock left by a crash (SIGKILL, node failure) is *stale* and taken over with a notice:

* same host: its process is gone (``os.kill(pid, 0)`` fails) or is another process that reuses
  the pid (its start time in ``/proc/<pid>/stat`` differs);
* another host: its mtime is older than ``HPCINV_LOCK_STALE_S`` seconds (default 600; make it
  longer than the clock skew between nodes);
* an empty or unreadable lock file (a crash between creating and writing it) older than 60 s.

Before the lock, the path itself is checked (on rank 0, before any other work): a path that is
a file or lies under one, or a directory that cannot be written, stops the run with one line and
exit status 2 (:class:`~hpcinv.errors.OutputDirError`); a storage failure while creating the
directory or the lock file (disk full, quota, I/O error) with exit status 4
(:class:`~hpcinv.errors.OutputIOError`). Missing parents are created (``mkdir -p``), and removed
again on release if the run wrote nothing into them.

A live lock stops the second run with one line naming the holder (host, pid, since, command)
and exit status 5 (:class:`~hpcinv.errors.RunLockedError`); ``--force-unlock`` (or deleting the
file) overrides it when you know the holder is dead. Rank 0 decides; the outcome is broadcast,
so every rank agrees.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputDirError, OutputIOError, RunLockedError

LOCK_NAME = ".hpcinv.lock"
HEARTBEAT_S = 30.0
STALE_S_DEFAULT = 600.0
EMPTY_STALE_S = 60.0

_held: list["RunLock"] = []


def stale_after() -> float:
    try:
        return float(os.environ.get("HPCINV_LOCK_STALE_S", STALE_S_DEFAULT))
    except ValueError:
        return STALE_S_DEFAULT


def _proc_stat(pid: int):
    """``(state letter, start time in clock ticks since boot)`` of ``pid`` from ``/proc``, or
    ``(None, None)`` where there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None, None


def _proc_start(pid: int):
    return _proc_stat(pid)[1]


def _alive(pid: int, start) -> bool:
    """Whether ``pid`` is still the process that took the lock (a zombie is dead; a process
    with another start time reuses the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        pass
    state, now = _proc_stat(pid)
    if state in ("Z", "X"):
        return False
    return start is None or now is None or now == start


def _read(path: Path):
    """``(info dict or None, os.stat_result)``; raises FileNotFoundError if gone."""
    st = os.stat(path, follow_symlinks=False)
    try:
        with open(path) as f:
            info = json.loads(f.read())
        if not isinstance(info, dict):
            info = None
    except (OSError, ValueError):
        info = None
    return info, st


def describe(info) -> str:
    if not info:
        return "an unknown run (empty or unreadable lock file)"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"({info.get('command', '?')})")


def stale_reason(info, st) -> str:
    """Why the lock ``info`` (with ``st`` its stat) is stale, or ``""`` if it is live."""
    age = time.time() - st.st_mtime
    if not info:
        return f"empty/unreadable lock {age:.0f} s old" if age > EMPTY_STALE_S else ""
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if not isinstance(pid, int) or not _alive(pid, info.get("pid_start")):
            return f"process {pid} on this host is gone"
        return ""
    if age > stale_after():
        return (f"no heartbeat for {age:.0f} s (> HPCINV_LOCK_STALE_S = "
                f"{stale_after():.0f} s)")
    return ""


class RunLock:
    """A held lock (rank 0 owns the file; other ranks hold a placeholder)."""

    def __init__(self, path: Path | None, token: str | None, created_dir: Path | None = None):
        self.path, self.token, self.created_dir = path, token, created_dir
        self._stop = threading.Event()
        self._thread = None
        if path is not None:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name="hpcinv-lock-heartbeat")
            self._thread.start()

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            self.touch()

    def touch(self):
        if self.path is None:
            return
        try:
            os.utime(self.path, follow_symlinks=False)
        except OSError:
            pass

    def release(self):
        self._stop.set()
        if self in _held:
            _held.remove(self)
        if self.path is None:
            return
        path, self.path = self.path, None
        try:
            info, _ = _read(path)
            if info and info.get("token") == self.token:
                path.unlink()
        except OSError:
            pass
        if self.created_dir is not None:       # only what we created, if nothing was written
            remove_created(path.parent, self.created_dir)


def remove_created(directory: Path, top: Path) -> None:
    """Remove ``directory`` and its parents up to ``top`` (the first one this run created),
    each only if empty."""
    p = directory
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top or p.parent == p:
            return
        p = p.parent


def _try_create(lock: Path, payload: bytes) -> bool:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock, flags, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _take(directory: Path, command: str, force: bool, note) -> tuple:
    """Rank 0: create the lock. Returns ``(token, None)`` or ``(None, error message)``."""
    lock = directory / LOCK_NAME
    token = uuid.uuid4().hex
    info = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "time": time.time(),
            "command": command, "uid": os.getuid() if hasattr(os, "getuid") else None,
            "token": token}
    payload = (json.dumps(info) + "\n").encode()
    for _ in range(5):
        if _try_create(lock, payload):
            return token, None
        try:
            held, st = _read(lock)
        except FileNotFoundError:
            continue                                   # released meanwhile: try again
        why = "--force-unlock" if force else stale_reason(held, st)
        if not why:
            return None, (f"{directory} is in use by {describe(held)}; if that run is really "
                          f"dead, rerun with --force-unlock or delete {lock}")
        # Take it over: move it aside under a unique name (only if it is still the file we
        # judged), so two runs taking over at once cannot both succeed.
        aside = directory / f"{LOCK_NAME}.stale-{token[:12]}"
        try:
            if os.stat(lock, follow_symlinks=False).st_ino != st.st_ino:
                continue
            os.rename(lock, aside)
            os.unlink(aside)
        except FileNotFoundError:
            continue
        note(f"hpcinv: note: took over the lock of {describe(held)} in {directory}: {why}")
    return None, f"could not lock {directory}: the lock file keeps changing ({lock})"


_holding = {"depth": 0, "pending": 0}


@contextmanager
def signals_held():
    """Within the block, signal handlers that ask :func:`hold_signal` let the signal wait; it
    is raised again when the block ends, so what the block creates is never left half done (a
    lock file not yet registered for release, a half-written run record). (Blocking the signal
    with ``pthread_sigmask`` is not enough: another thread, e.g. MPI's, may receive it, and
    Python then runs the handler in the main thread at once.)"""
    _holding["depth"] += 1
    try:
        yield
    finally:
        _holding["depth"] -= 1
        if _holding["depth"] == 0 and _holding["pending"]:
            signum, _holding["pending"] = _holding["pending"], 0
            signal.raise_signal(signum)


def hold_signal(signum: int) -> bool:
    """For signal handlers: inside :func:`signals_held`, note ``signum`` for the end of the
    block and return True (the handler then returns); False elsewhere."""
    if _holding["depth"]:
        _holding["pending"] = max(_holding["pending"], signum)    # SIGTERM (15) first
        return True
    return False


def acquire(directory, comm, command: str | None = None, force: bool = False,
            create: bool = True, note=None) -> RunLock:
    """Lock ``directory`` for this run (collective; every rank gets the same outcome).

    ``create``: make the directory if it is missing (removed again on release if nothing else
    was written into it); with ``create=False`` a missing directory is not locked (the caller
    reports it). Raises :class:`~hpcinv.errors.RunLockedError` on every rank if another live run
    holds it. ``note``: where takeover notices go (default: stderr on rank 0).

    SIGTERM/SIGINT are held back until the lock is registered for release.
    """
    with signals_held():
        return _acquire(directory, comm, command, force, create, note)


def _acquire(directory, comm, command, force, create, note) -> RunLock:
    """See :func:`acquire`."""
    directory = Path(directory)
    command = command or " ".join(["hpcinv", *sys.argv[1:]])
    note = note or (lambda s: print(s, file=sys.stderr, flush=True))
    result = None
    if comm.Get_rank() == 0:
        created = None
        try:
            problem = path_problem(directory)
            if problem:
                result = ("bad", problem, None)
            elif not directory.exists():
                if not create:
                    result = ("skip", None, None)
                else:
                    created = _first_missing(directory)
                    directory.mkdir(parents=True)
            if result is None:
                token, err = _take(directory, command, force, note)
                result = ("ok", token, str(created) if created else None) if err is None \
                    else ("locked", err, None)
                if err is not None and created is not None:
                    remove_created(directory, created)
        except OSError as e:
            if created is not None:
                remove_created(directory, created)
            result = _classify(directory, e)
    kind, a, b = comm.bcast(result, root=0)
    if kind in _ERRORS:
        raise _ERRORS[kind](a)
    if kind == "skip":
        return RunLock(None, None)
    rank0 = comm.Get_rank() == 0
    lk = RunLock(directory / LOCK_NAME if rank0 else None, a if rank0 else None,
                 Path(b) if (rank0 and b) else None)
    _held.append(lk)
    _install_sigterm()
    return lk


_ERRORS = {"locked": RunLockedError, "bad": OutputDirError, "io": OutputIOError}
_BAD_PATH = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
             errno.ENAMETOOLONG, errno.ELOOP)


def _first_missing(directory: Path) -> Path:
    """The outermost missing directory of ``directory``'s path (what ``mkdir -p`` creates)."""
    top = directory
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def path_problem(directory: Path) -> str:
    """Why ``directory`` cannot be a run directory (a file, under a file, not writable), or
    ``""``. Advisory (``os.access``); creating the directory and the lock file with ``O_EXCL``
    is the real probe (:func:`_classify` sorts its errors)."""
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            return f"output path {directory} exists and is not a directory"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"output directory {directory} is not writable (permission denied)"
        return ""
    parent = _first_missing(directory).parent
    if not parent.is_dir():
        return f"cannot create output directory {directory}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return (f"cannot create output directory {directory}: {parent} is not writable "
                "(permission denied)")
    return ""


def _classify(directory: Path, e: OSError) -> tuple:
    """An OSError while creating ``directory`` or its lock: a path the user must change
    (exit 2) or a failing file system (exit 4)."""
    what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    if e.errno in _BAD_PATH:
        return ("bad", f"cannot use output directory {directory}: {what}", None)
    return ("io", f"cannot create the run directory {directory} or its lock: {what}", None)


def heartbeat() -> None:
    """Refresh the mtime of every lock this process holds (rank 0; cheap, no MPI)."""
    for lk in _held:
        lk.touch()


def release_all() -> None:
    """Release every lock this process holds (safe to call more than once)."""
    for lk in list(_held):
        lk.release()


def _sigterm(signum, frame):
    if hold_signal(signum):
        return
    release_all()
    raise SystemExit(128 + signum)


def _install_sigterm() -> None:
    """Outside the inversion loop (which installs its own handler), SIGTERM releases the lock
    and exits 143 instead of dying with the lock held."""
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:          # not the main thread
        pass


atexit.register(release_all)


def acquire_world(directory, force: bool = False, create: bool = True) -> RunLock:
    """:func:`acquire` on ``MPI.COMM_WORLD`` (the CLI's commands)."""
    from mpi4py import MPI
    return acquire(directory, MPI.COMM_WORLD, force=force, create=create)
