"""SIGTERM and SIGINT (Ctrl-C) for the run commands: a clean stop with exit status 3 / 130.

:func:`installed` wraps everything in :func:`hpcinv.app.cli.main` for ``forward``, ``gradient``,
``invert`` and ``demo``, on every rank, before the config is read, kernels compile or a solve
starts. From then on a signal is handled in one of two ways:

* *immediate* (start-up, single solves, the final evaluation): the handler raises
  :class:`~hpcinv.errors.Interrupted`; the CLI prints one line with :func:`advice` (what the run
  directory now holds and the command that continues or restarts it) and exits 3 (SIGTERM) or
  130 (SIGINT). Under several MPI ranks every rank that got the signal waits for the others
  (:func:`stop_ranks`, at most :data:`STOP_WAIT_S`): when all arrive, each exits with that
  status on its own, so the launcher reports 3 (srun reports an ``MPI_Abort`` as 137, whatever
  its code). Only when a rank does not arrive (blocked in a collective, where its handler cannot
  run) is the job aborted with ``MPI_Abort``.
* *deferred* (inside the inversion loop, :class:`Deferred`): the signal is only recorded; the
  loop agrees on it across ranks at the end of the outer iteration, writes a checkpoint and
  returns. A second Ctrl-C stops at once (``KeyboardInterrupt``). A signal recorded after the
  loop's last look (while the final checkpoint is written) is raised when the block ends.

Either way the stop is recorded in the run directory (:data:`STOP_RECORD`, by every rank that
handles it): ``jobs/invert.sbatch`` decides to requeue from that record and the checkpoint,
not from the launcher's exit status.

A raising handler runs wherever the main thread happens to be, which may be a context whose
exceptions Python ignores: a weak-reference callback (``WeakValueDictionary`` clean-up), a
``__del__``, the garbage collector. Python then prints "Exception ignored in ..." and goes on,
and the run would continue as if no signal had come. While the handlers are installed,
:func:`_redeliver` (``sys.unraisablehook``) catches such a lost interrupt and schedules the
signal's handler again (``_thread.interrupt_main``), so it runs at the next ordinary bytecode.
"""
from __future__ import annotations

import _thread
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import Interrupted
from ..io import rundir

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state = {"deferred": 0, "pending": 0, "installed": False, "advice": None, "directory": None}

STOP_RECORD = ".hpcinv-stop.json"      # in the run directory: {"signal", "time", "rank"}
STOP_TAG = 32031                       # point-to-point tag of the stop agreement (<= 32767)
STOP_WAIT_S = 10.0     # HPCINV_STOP_WAIT: seconds to wait for the other ranks (well inside
#                        SLURM's KillWait, 30 s by default, between SIGTERM and SIGKILL)


def _handler(signum, frame):
    if rundir.hold_signal(signum):              # a lock or run record being written
        return
    if _state["deferred"]:
        if _state["pending"] == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt                 # Ctrl-C twice: stop now
        _state["pending"] = max(_state["pending"], signum)     # SIGTERM (15) wins
        return
    raise Interrupted(signum)


def _redeliver(unraisable) -> None:
    """``sys.unraisablehook`` while the handlers are installed: an :class:`Interrupted` or
    ``KeyboardInterrupt`` that Python ignored (raised in a ``__del__`` or weakref callback)
    is delivered again to the main thread; anything else goes to the previous hook."""
    exc = unraisable.exc_value
    if isinstance(exc, Interrupted):
        _thread.start_new_thread(_deliver_later, (exc.signum,))
    elif isinstance(exc, KeyboardInterrupt):
        _thread.start_new_thread(_deliver_later, (signal.SIGINT,))
    else:
        _previous_hook(unraisable)


def _deliver_later(signum: int) -> None:
    """From a helper thread: run the handler for ``signum`` again in the main thread. Not
    from the hook itself: the main thread would run the handler at once, still inside the
    ignoring context. Should it land in one again, the hook sends it once more."""
    time.sleep(0.001)
    _thread.interrupt_main(signum)


def _previous_hook(unraisable) -> None:
    hook = _hooks[-1] if _hooks else sys.__unraisablehook__
    hook(unraisable)


_hooks: list = []       # the unraisable hooks replaced by _install, innermost last


def _install():
    """Install the handlers and the re-delivery hook; return what to restore, or None when
    not on the main thread (no signals there)."""
    try:
        old = [(s, signal.signal(s, _handler)) for s in SIGNALS]
    except ValueError:
        return None
    _hooks.append(sys.unraisablehook)
    sys.unraisablehook = _redeliver
    return old


def _restore(old) -> None:
    if old is None:
        return
    sys.unraisablehook = _hooks.pop()
    for s, h in old:
        signal.signal(s, h)


@contextmanager
def installed():
    """Handle SIGTERM and SIGINT as described above for the duration of the block (a run
    command), then restore the previous handlers (main thread only; a no-op elsewhere)."""
    old = _install()
    _state.update(installed=old is not None, deferred=0, pending=0, advice=None)
    try:
        yield
    finally:
        _restore(old)
        _state.update(installed=False, deferred=0, pending=0, advice=None, directory=None)


def advise(fn, directory=None) -> None:
    """``fn()`` says what to do after an immediate interrupt; ``directory``: the run directory,
    where a stop is recorded (both set by the run-directory claim)."""
    _state["advice"] = fn
    if directory is not None:
        _state["directory"] = Path(directory)


def record_stop(signum: int, rank: int = 0, directory=None) -> None:
    """Write :data:`STOP_RECORD` into ``directory`` (default: the claimed run directory, if
    any; atomically; several ranks may write it). Best effort: an unwritable directory must not
    mask the stop."""
    directory = Path(directory) if directory is not None else _state["directory"]
    if directory is None:
        return
    rec = {"signal": signal_name(signum), "rank": rank,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = directory / f"{STOP_RECORD}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(rec) + "\n")
        os.replace(tmp, directory / STOP_RECORD)
    except OSError:
        pass


def stop_wait_s() -> float:
    try:
        return float(os.environ.get("HPCINV_STOP_WAIT", STOP_WAIT_S))
    except ValueError:
        return STOP_WAIT_S


def stop_together(comm, wait_s: float) -> bool:
    """Tell every other rank of ``comm`` that this one stops, and wait up to ``wait_s`` seconds
    until every other rank has said the same; ``True`` when all have. Point-to-point messages
    on a tag of their own (no collective: the ranks may be at different collectives when the
    signal lands); a rank blocked in a collective never answers."""
    import numpy as np
    from mpi4py import MPI
    rank, size = comm.Get_rank(), comm.Get_size()
    others = [r for r in range(size) if r != rank]
    out, inbox = np.ones(1, "i"), np.zeros(len(others), "i")
    sends = [comm.Isend(out, dest=r, tag=STOP_TAG) for r in others]
    recvs = [comm.Irecv(inbox[i:i + 1], source=r, tag=STOP_TAG) for i, r in enumerate(others)]
    deadline = time.monotonic() + wait_s
    while not MPI.Request.Testall(recvs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    MPI.Request.Waitall(sends)           # tiny messages: already on their way
    return True


def stop_ranks(comm, code: int, line: str) -> None:
    """After an immediate interrupt on a rank of a multi-rank ``comm`` (never returns): when
    every rank stops within :func:`stop_wait_s`, exit with ``code`` (no ``MPI_Finalize``: a
    solve may have left requests pending); otherwise the first rank to give up after rank 0
    (staggered by rank) prints ``line`` (rank 0 may be the blocked one) and aborts the job."""
    rank = comm.Get_rank()
    if stop_together(comm, stop_wait_s()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if rank != 0:
        time.sleep(0.1 * rank)
        print(f"{line} (rank {rank}; rank 0 did not answer)", file=sys.stderr, flush=True)
    comm.Abort(code)


def advice() -> str:
    """The advice for the user after an interrupt in the current phase of the run."""
    fn = _state["advice"]
    if fn is None:
        return "nothing was written; run the same command again"
    try:
        return fn()
    except Exception as exc:                 # noqa: BLE001 - advice must not mask the stop
        return f"(could not inspect the output directory: {exc})"


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Deferred:
    """Within ``with Deferred() as sig:`` signals are recorded in ``sig.flag`` (the signal number,
    0 if none) instead of raised. Installs the handlers outside :func:`installed` (the
    Python API), and restores the previous ones on exit."""

    def __init__(self):
        self._old, self._seen = None, 0

    @property
    def flag(self) -> int:
        self._seen = self._seen or _state["pending"]
        return _state["pending"]

    def __enter__(self):
        if not _state["installed"]:
            self._old = _install()              # None off the main thread: no signals there
        _state["deferred"] += 1
        _state["pending"] = 0
        return self

    def __exit__(self, exc_type, *exc):
        _state["deferred"] -= 1
        _restore(self._old)
        pending, _state["pending"] = _state["pending"], 0
        if exc_type is None and pending and not self._seen:     # came after the last look
            if self._old is None and _state["installed"]:
                raise Interrupted(pending)
            signal.raise_signal(pending)        # to the handler the block found
        return False


def stop_message(signum: int, where: str, run_dir) -> str:
    """The loop's line after a deferred stop: checkpoint written, and how to continue. Also
    records the stop in ``run_dir`` (:func:`record_stop`; every rank calls this)."""
    record_stop(signum, directory=run_dir)
    return (f"{signal_name(signum)}: checkpoint written at {where}; "
            f"continue with: hpcinv invert --restart {run_dir}")
