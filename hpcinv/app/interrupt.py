"""SIGTERM and SIGINT (Ctrl-C) for the run commands: a clean stop with exit status 3 / 130.

:func:`installed` wraps everything in :func:`hpcinv.app.cli.main` for ``forward``, ``gradient``,
``invert`` and ``demo``, on every rank, before the config is read, kernels compile or a solve
starts. From then on a signal is handled in one of two ways:

* *immediate* (start-up, single solves, the final evaluation): the handler raises
  :class:`~hpcinv.errors.Interrupted`; the CLI prints one line with :func:`advice` (what the run
  directory now holds and the command that continues or restarts it) and exits 3 (SIGTERM) or
  130 (SIGINT). Under several MPI ranks it then aborts the job, since a rank blocked in a
  collective would wait for the others forever.
* *deferred* (inside the inversion loop, :class:`Deferred`): the signal is only recorded; the
  loop agrees on it across ranks at the end of the outer iteration, writes a checkpoint and
  returns. A second Ctrl-C stops at once (``KeyboardInterrupt``).

A raising handler runs wherever the main thread happens to be, which may be a context whose
exceptions Python ignores: a weak-reference callback (``WeakValueDictionary`` clean-up), a
``__del__``, the garbage collector. Python then prints "Exception ignored in ..." and goes on,
and the run would continue as if no signal had come. While the handlers are installed,
:func:`_redeliver` (``sys.unraisablehook``) catches such a lost interrupt and schedules the
signal's handler again (``_thread.interrupt_main``), so it runs at the next ordinary bytecode.
"""
from __future__ import annotations

import _thread
import signal
import sys
import time
from contextlib import contextmanager

from ..errors import Interrupted
from ..io import rundir

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state = {"deferred": 0, "pending": 0, "installed": False, "advice": None}


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
        _state.update(installed=False, deferred=0, pending=0, advice=None)


def advise(fn) -> None:
    """``fn()`` says what to do after an immediate interrupt (set by the run-directory claim)."""
    _state["advice"] = fn


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
        self._old = None

    @property
    def flag(self) -> int:
        return _state["pending"]

    def __enter__(self):
        if not _state["installed"]:
            self._old = _install()              # None off the main thread: no signals there
        _state["deferred"] += 1
        _state["pending"] = 0
        return self

    def __exit__(self, *exc):
        _state["deferred"] -= 1
        _restore(self._old)
        return False


def stop_message(signum: int, where: str, run_dir) -> str:
    """The loop's line after a deferred stop: checkpoint written, and how to continue."""
    return (f"{signal_name(signum)}: checkpoint written at {where}; "
            f"continue with: hpcinv invert --restart {run_dir}")
