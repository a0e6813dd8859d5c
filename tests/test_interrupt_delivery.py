"""Issue 13 (CI failure): a signal whose handler raised inside a context where Python ignores
exceptions (a weak-reference callback, a ``__del__``) was lost: the run printed "Exception
ignored in ... Interrupted: SIGTERM" and went on computing. These tests raise the signal at
exactly such a moment, in-process, and check that the interrupt still stops the block, and
that an ``except Exception`` block between the signal and the CLI does not take it for its own
failure."""
from __future__ import annotations

import functools
import gc
import json
import operator
import signal
import sys
import _thread
import time
import weakref

import pytest

from hpcinv.app import interrupt
from hpcinv.errors import HpcinvError, Interrupted


class _SignalOnCollect:
    """Sends ``signum`` to this process from its ``__del__`` (an ignoring context)."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        signal.raise_signal(self.signum)


def _spin(seconds=10.0):
    """Ordinary bytecode, where a re-delivered signal lands (within milliseconds)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 3), (signal.SIGINT, 130)])
def test_an_interrupt_raised_in_del_still_stops_the_run(signum, code, capfd):
    with pytest.raises(Interrupted) as info:
        with interrupt.installed():
            obj = _SignalOnCollect(signum)
            del obj                     # the handler raises inside __del__: ignored there
            _spin()
    assert info.value.exit_code == code
    assert "Exception ignored" not in capfd.readouterr().err


def test_an_interrupt_raised_in_a_weakref_callback_still_stops_the_run():
    """The CI case: ``WeakValueDictionary``'s clean-up callback was running."""
    class Value:
        pass

    cache = weakref.WeakValueDictionary()
    with pytest.raises(Interrupted):
        with interrupt.installed():
            v = Value()
            cache["k"] = v
            weakref.finalize(v, signal.raise_signal, signal.SIGTERM)
            del v
            gc.collect()
            _spin()


def test_a_second_ctrl_c_raised_in_del_stops_the_deferred_loop():
    with pytest.raises(KeyboardInterrupt):
        with interrupt.Deferred() as sig:
            signal.raise_signal(signal.SIGINT)          # recorded, the loop goes on
            assert sig.flag == signal.SIGINT
            obj = _SignalOnCollect(signal.SIGINT)
            del obj                                      # Ctrl-C twice, inside __del__
            _spin()


def test_other_ignored_exceptions_still_reach_the_previous_hook():
    seen = []
    previous, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        class Broken:
            def __del__(self):
                raise ValueError("in __del__")
        with interrupt.installed():
            obj = Broken()
            del obj
        assert [type(u.exc_value) for u in seen] == [ValueError]
    finally:
        sys.unraisablehook = previous


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_raised_inside_the_compilers_constant_folding_stops_the_run(signum):
    """CI: SIGTERM during the import of a module compiled from source (no ``.pyc``: tests and
    read-only installs run under ``PYTHONDONTWRITEBYTECODE``) went unanswered: the handler
    ran inside ``compile``'s folding of ``2 ** 31``, whose C code clears every exception but a
    ``KeyboardInterrupt``. The signal is tripped and the source compiled with no bytecode in
    between (C calls only), so the handler runs exactly there."""
    trip_then_compile = [functools.partial(_thread.interrupt_main, signum),
                         functools.partial(compile, "LIMIT = 2 ** 31\n", "m.py", "exec")]
    with pytest.raises(Interrupted) as info:
        with interrupt.installed():
            list(map(operator.call, trip_then_compile))
            _spin()                     # a lost interrupt: the test fails after 10 s
    assert info.value.signum == signum


def test_the_hooks_are_restored_after_the_block():
    before = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    with interrupt.installed():
        with interrupt.Deferred():
            pass
    assert (sys.unraisablehook, signal.getsignal(signal.SIGTERM)) == before


def test_an_except_exception_block_does_not_swallow_an_interrupt():
    """h5write, checkpoint and the library probes catch ``Exception`` to combine errors across
    ranks; an interrupt passing through them must stay an interrupt."""
    def write():
        try:
            signal.raise_signal(signal.SIGTERM)
        except Exception as exc:            # noqa: BLE001 - what the writers do
            raise HpcinvError(f"write failed: {exc}") from exc

    with pytest.raises(Interrupted):
        with interrupt.installed():
            write()


def test_a_signal_after_the_loops_last_look_is_raised_when_the_block_ends():
    """Issue 22: SIGTERM while the final checkpoint is written (inside Deferred, after the
    loop's last reading of the flag) must not be lost: the final evaluation would go on."""
    with pytest.raises(Interrupted):
        with interrupt.installed():
            with interrupt.Deferred():
                signal.raise_signal(signal.SIGTERM)      # recorded, never looked at
            _spin()                                      # not reached
    with interrupt.installed():                          # looked at: the loop acted on it
        with interrupt.Deferred() as sig:
            signal.raise_signal(signal.SIGTERM)
            assert sig.flag == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):               # the Python API: the old handler
        with interrupt.Deferred():
            signal.raise_signal(signal.SIGINT)


def test_a_stop_is_recorded_in_the_claimed_run_directory(tmp_path):
    with interrupt.installed():
        interrupt.record_stop(signal.SIGTERM)                # no directory claimed: nothing
        interrupt.advise(lambda: "", tmp_path)
        interrupt.record_stop(signal.SIGTERM, rank=1)
    rec = json.loads((tmp_path / interrupt.STOP_RECORD).read_text())
    assert rec["signal"] == "SIGTERM" and rec["rank"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [interrupt.STOP_RECORD]
