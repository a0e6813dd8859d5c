"""A watchdog for collective HDF5 writes (``mpio``): a rank that fails inside one cannot tell
the others, so the job ends with one line and exit status 4 instead of hanging.

In the ``mpio`` mode every HDF5 call of :func:`~hpcinv.io.h5write._write_mpio` is collective
(``MPI_File_open``, ``H5Dwrite`` -> ``MPI_File_write_at_all``, ``MPI_File_set_view`` ->
``MPI_Allreduce``, ``H5Fclose``). When one rank's call fails locally (``EFBIG`` after
``RLIMIT_FSIZE``, a node's I/O error) HDF5 returns an error on that rank only, while the others
are already in the next collective MPI call: the failing rank then waits in the writer's
``allgather`` of errors, the others in HDF5's ``Allreduce``/``Barrier``, for ever (issue 22).
No code around the region can rescue that, and SIGTERM does not end a rank blocked in MPI. So:

* a rank whose call raises inside the region prints one line naming the file and the error,
  and aborts the job at once (``MPI_Abort(4)``) rather than entering a collective the others
  never reach;
* every rank runs a watchdog thread while it is inside the region; if the region has not
  completed within :func:`io_timeout_s` seconds (a rank died or blocked in it), the watchdog
  prints one line naming the file and aborts the job with status 4. Rank ``r`` waits
  ``0.2 * min(r, 25)`` s longer than rank 0, so the first abort usually ends the others before
  they print: one line per job. (A failing rank waits as long before it prints, so an error
  raised on every rank, a full disk, is also reported once, by the lowest rank.)

The watchdog thread runs while the main thread waits in HDF5 or MPI: h5py and mpi4py release
the GIL in their blocking calls (measured for h5py's ``H5Dwrite``: a Python thread ticked every
millisecond throughout a 55 s write). Exceptions derived from :class:`BaseException` only
(:class:`~hpcinv.errors.Interrupted`, ``KeyboardInterrupt``) pass through: the stop machinery
of :mod:`hpcinv.app.interrupt` has its own bounded wait and abort.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from ..errors import ConfigError

#: seconds a collective write region may take before the watchdog aborts, plus the data time
DEFAULT_TIMEOUT_S = 120.0
#: bytes per second assumed for the data of the region (slow shared file systems do ~100 MB/s)
ASSUMED_BANDWIDTH = 50e6
EXIT_STATUS = 4


def io_timeout_s(nbytes: int = 0) -> float:
    """Seconds allowed for a collective write region of ``nbytes`` bytes (all ranks together):
    ``$HPCINV_IO_TIMEOUT`` if set (``0`` switches the watchdog off), else
    :data:`DEFAULT_TIMEOUT_S` + ``nbytes`` / :data:`ASSUMED_BANDWIDTH`."""
    env = os.environ.get("HPCINV_IO_TIMEOUT", "").strip()
    if not env:
        return DEFAULT_TIMEOUT_S + nbytes / ASSUMED_BANDWIDTH
    try:
        value = float(env)
    except ValueError:
        value = -1.0
    if not value >= 0:                   # also NaN
        raise ConfigError(f"HPCINV_IO_TIMEOUT must be a number of seconds >= 0 (0: no "
                          f"watchdog), got {env!r}")
    return value


def _abort(line: str) -> None:
    """Print ``line``, release the run-directory lock, abort every rank with status 4."""
    try:
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
    finally:
        rundir = sys.modules.get("hpcinv.io.rundir")
        if rundir is not None:
            try:
                rundir.release_all()
            except Exception:   # noqa: BLE001 - the abort matters more than the lock
                pass
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(EXIT_STATUS)
        os._exit(EXIT_STATUS)            # not reached under MPI; a safety net


class collective_region:   # noqa: N801 - used as a context manager, like a function
    """``with collective_region(path, timeout_s, rank):`` the collective write of ``path``.

    ``timeout_s``: seconds (see :func:`io_timeout_s`; ``0`` or less: no watchdog thread);
    ``rank``: this rank (its watchdog waits ``0.2 * min(rank, 25)`` s longer); ``abort``:
    called with the line instead of aborting the job (tests)."""

    def __init__(self, path, timeout_s: float, rank: int = 0, abort=_abort):
        self.path, self.timeout_s, self.rank, self.abort = path, float(timeout_s), rank, abort
        self._done = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="hpcinv-io-watchdog")
            self._thread.start()
        return self

    @property
    def _stagger_s(self) -> float:
        return 0.2 * min(self.rank, 25)

    def _watch(self) -> None:
        if self._done.wait(self.timeout_s + self._stagger_s):
            return
        self.abort(f"hpcinv: error: collective write of {self.path} did not complete in "
                   f"{self.timeout_s:g} s (a rank failed inside it? HPCINV_IO_TIMEOUT sets "
                   f"the limit); exit {EXIT_STATUS}")

    def __exit__(self, kind, exc, tb):
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if exc is not None and isinstance(exc, Exception):
            what = " ".join(f"{type(exc).__name__}: {exc}".split())      # one line
            time.sleep(self._stagger_s)
            self.abort(f"hpcinv: error: collective write of {self.path} failed on rank "
                       f"{self.rank}: {what}; the other ranks cannot leave the collective "
                       f"region: exit {EXIT_STATUS}")
        return False
