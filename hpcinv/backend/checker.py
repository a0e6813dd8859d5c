"""The stream checker: the host backend run with CUDA's stream semantics, verified.

``HPCINV_STREAM_CHECK=1`` makes ``make_backend("host")`` return a :class:`CheckedHostBackend`:

* Each stream (``compute``, ``boundary``, ``interior``) is an in-order queue executed by its own
  worker thread, with random delays (``HPCINV_STREAM_CHECK_DELAY`` microseconds at most,
  default 100, on a random 1/32 of the operations; ``HPCINV_STREAM_CHECK_SEED`` seeds them),
  so work on different streams really runs concurrently and in varying interleavings. The
  detection does not depend on the delays (it is by vector clocks); they vary the interleaving
  of the values. ``HPCINV_STREAM_CHECK_DELAY=0`` turns them off (several times faster).
* Events and synchronisation are real: ``record`` marks a stream position, ``wait`` blocks the
  consumer stream's queue, ``sync`` blocks the host.
* Backend arrays behave like device memory: MPI gets staged host copies unless CUDA-aware MPI
  is chosen (``HPCINV_CUDA_AWARE=1``), and the library may touch them only through the
  backend: a write from outside it raises :class:`DeviceWorkOutsideBackendError`.
* Every access is checked for ordering, independently of timing: each stream and the host
  carry a vector clock (advanced by their own operations, joined by ``wait``, ``sync`` and,
  for work the host issues, by the host's clock at issue time). Per array, the checker keeps
  the recent accesses with their footprints (boxes of cells) and call sites. Two accesses to
  overlapping cells, at least one a write, by two agents neither of which had synchronised with
  the other's access, are a race: :class:`StreamRaceError` names the array, both streams and
  both call sites. MPI reading a send buffer or writing a receive buffer is a host access at
  the moment the message is posted.

Results are bitwise identical to the normal host backend: the same kernels run on the same
data in an order that the dependencies fix (anything else is a race the checker reports).
"""
from __future__ import annotations

import os
import queue
import random
import sys
import threading
import time

import numpy as np

from .base import Stream
from .host_backend import HostBackend

_local = threading.local()
_BACKEND_DIR = os.path.dirname(os.path.abspath(__file__))


class StreamRaceError(RuntimeError):
    """Two streams (or a stream and the host/MPI) touch data without an ordering dependency."""


class DeviceWorkOutsideBackendError(RuntimeError):
    """Code outside the backend wrote a backend array directly (on a GPU that work would run on
    whatever stream is current, unordered with the backend's streams)."""


def _inside() -> bool:
    return getattr(_local, "inside", False)


def call_site() -> str:
    """``file:line (function)`` of the nearest caller outside ``hpcinv/backend``."""
    f = sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _BACKEND_DIR:
        f = f.f_back
    if f is None:
        return "?"
    path = f.f_code.co_filename
    marker = os.sep + "hpcinv" + os.sep
    if marker in path:
        path = "hpcinv" + os.sep + path.split(marker, 1)[1]
    return f"{path}:{f.f_lineno} ({f.f_code.co_name})"


class DeviceArray(np.ndarray):
    """A backend array under the checker: direct writes from outside the backend are refused,
    direct reads are host accesses (checked against unsynchronised device work)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        outs = out or ()
        if not _inside():
            if any(isinstance(o, DeviceArray) for o in outs):
                _outside_write(f"numpy ufunc {ufunc.__name__} with out=")
            for a in inputs:
                if isinstance(a, DeviceArray):
                    _outside_read(a, None)
        args = [a.view(np.ndarray) if isinstance(a, DeviceArray) else a for a in inputs]
        if outs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, DeviceArray) else o
                                  for o in outs)
        return getattr(ufunc, method)(*args, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if not _inside() and func not in _METADATA:
            if func in (np.copyto, np.put, np.place, np.putmask) and args \
                    and isinstance(args[0], DeviceArray):
                _outside_write(f"numpy.{func.__name__}")
            for a in args:
                if isinstance(a, DeviceArray):
                    _outside_read(a, None)
        plain = tuple(a.view(np.ndarray) if isinstance(a, DeviceArray) else a for a in args)
        return func(*plain, **kwargs)

    def __getitem__(self, index):
        if _inside():
            return super().__getitem__(index)
        _outside_read(self, index)
        return self.view(np.ndarray)[index]

    def __setitem__(self, index, value):
        if not _inside():
            _outside_write("item assignment")
        super().__setitem__(index, value)

    def fill(self, value):
        if not _inside():
            _outside_write("fill()")
        super().fill(value)


#: NumPy functions that read only an array's metadata, not its data.
_METADATA = frozenset({np.ndim, np.shape, np.size, np.result_type, np.may_share_memory,
                       np.shares_memory})


def _outside_write(what):
    raise DeviceWorkOutsideBackendError(
        f"{what} on a backend array outside the backend at {call_site()}: issue device work "
        "through the backend on a named stream (Backend.copy/fill/elementwise/launch)")


def _outside_read(a, index):
    tracker = getattr(_local, "tracker", None) or _Tracker.current
    if tracker is not None:
        tracker.host_access(a, index if isinstance(index, tuple) else
                            (None if index is None else (index,)), False, "direct read")


# --- footprints -------------------------------------------------------------------------------
def _root(a):
    r = a
    while isinstance(r.base, np.ndarray):
        r = r.base
    return r


def _key(a):
    r = _root(a)
    return (r.__array_interface__["data"][0], r.nbytes)


def _footprint(a, region):
    """Boxes ``[(lo, hi)]`` in ``a``'s own index space, or ``None`` for the whole array."""
    if region is None or _root(a) is not a and _root(a).shape != a.shape:
        return None
    if isinstance(region, list):            # boxes already
        return region
    lo, hi = [], []
    region = tuple(region) + (slice(None),) * (a.ndim - len(region))
    if len(region) != a.ndim:
        return None
    for r, n in zip(region, a.shape):
        if isinstance(r, slice):
            start, stop, step = r.indices(n)
            if step != 1:
                return None
            lo.append(start), hi.append(max(start, stop))
        elif isinstance(r, (int, np.integer)):
            i = int(r) + (n if r < 0 else 0)
            lo.append(i), hi.append(i + 1)
        else:
            return None
    return [(tuple(lo), tuple(hi))]


def _overlap(f1, f2) -> bool:
    if f1 is None or f2 is None:
        return True
    if hasattr(f1, "overlaps"):     # a byte-exact footprint (the CuPy stand-in of the tests)
        return f1.overlaps(f2)
    for lo1, hi1 in f1:
        for lo2, hi2 in f2:
            if all(max(a, c) < min(b, d) for a, b, c, d in zip(lo1, hi1, lo2, hi2)):
                return True
    return False


class _Access:
    __slots__ = ("agent", "epoch", "write", "footprint", "site", "what")

    def __init__(self, agent, epoch, write, footprint, site, what):
        self.agent, self.epoch, self.write = agent, epoch, write
        self.footprint, self.site, self.what = footprint, site, what


def _join(a: dict, b: dict):
    for k, v in b.items():
        if a.get(k, 0) < v:
            a[k] = v


class _Tracker:
    """Vector clocks of the host and the streams, and the recent accesses per array."""

    current = None

    def __init__(self):
        self.lock = threading.RLock()
        self.host = {"host": 0}
        self.history: dict = {}
        self.names: dict = {}
        self.error = None

    def name(self, a) -> str:
        return self.names.get(_key(a), f"array{tuple(a.shape)}")

    def forget(self, a, name):
        with self.lock:
            k = _key(a)
            self.history.pop(k, None)
            self.names[k] = name

    def check(self, agent, clock, epoch, a, footprint, write, site, what):
        """Check one access against the history, then record it; returns an error or None."""
        key = _key(a)
        entries = self.history.setdefault(key, [])
        error = None
        for e in entries:
            if e.agent != agent and (write or e.write) and clock.get(e.agent, 0) < e.epoch \
                    and _overlap(footprint, e.footprint):
                fix = (f"synchronise {_agent(agent)} before the host's access" if e.agent == "host"
                       else f"record an event on {_agent(e.agent)} and wait for it on "
                            f"{_agent(agent)} (or synchronise) before this access")
                error = StreamRaceError(
                    f"stream race on {self.name(a)} (shape {tuple(a.shape)}): "
                    f"{'write' if write else 'read'} by {what} on {_agent(agent)} at {site} is "
                    f"not ordered with the {'write' if e.write else 'read'} by {e.what} on "
                    f"{_agent(e.agent)} at {e.site}: {fix}")
                break
        # keep one entry per (agent, kind, footprint): a later one covers an earlier one
        entries[:] = [e for e in entries if not (e.agent == agent and e.write == write
                                                 and e.footprint == footprint)]
        entries.append(_Access(agent, epoch, write, footprint, site, what))
        return error

    def host_access(self, a, region, write, what):
        with self.lock:
            self.host["host"] += 1
            err = self.check("host", self.host, self.host["host"], a, _footprint(a, region),
                             write, call_site(), what)
        if err is not None:
            raise err


def _agent(name) -> str:
    return "the host" if name == "host" else f"stream '{name}'"


class CheckedStream(Stream):
    """A stream whose operations run in order on a worker thread, with random delays."""

    def __init__(self, name, tracker, rng_seed, max_delay):
        super().__init__(name)
        self.tracker, self.clock = tracker, {name: 0}
        self._q = queue.Queue()
        self._rng = random.Random(rng_seed)
        self._max_delay = max_delay
        self._thread = threading.Thread(target=self._loop, name=f"hpcinv-check-{name}",
                                        daemon=True)
        self._thread.start()

    def put(self, op):
        self._q.put(op)

    def _loop(self):
        _local.inside = True
        _local.tracker = self.tracker
        while True:
            op = self._q.get()
            if op is None:
                return
            if self._max_delay and self._rng.random() < 1 / 32:
                time.sleep(self._rng.random() * self._max_delay)
            try:
                op(self)
            except BaseException as exc:      # reported to the host at its next call
                with self.tracker.lock:
                    if self.tracker.error is None:
                        self.tracker.error = exc


class _Event:
    def __init__(self):
        self.flag = threading.Event()
        self.clock = {}

    def done(self) -> bool:
        return self.flag.is_set()

    def wait_host(self):
        self.flag.wait()


class CheckedHostBackend(HostBackend):
    """The host backend with asynchronous, checked streams (see the module docstring)."""

    name = "host"
    device_memory = True
    cuda_aware = False
    cuda_aware_reason = "stream checker: staged through host buffers by default"

    def __init__(self, threads=None, local_size=1):
        self.tracker = _Tracker()
        _Tracker.current = self.tracker
        seed = int(os.environ.get("HPCINV_STREAM_CHECK_SEED", "0") or 0)
        self._delay = float(os.environ.get("HPCINV_STREAM_CHECK_DELAY", "100") or 0) * 1e-6
        self._seed = seed
        super().__init__(threads, local_size)

    def _make_stream(self, name):
        return CheckedStream(name, self.tracker, hash((self._seed, name)) & 0xFFFF, self._delay)

    def _raise_pending(self):
        with self.tracker.lock:
            err, self.tracker.error = self.tracker.error, None
        if err is not None:
            raise err

    # --- allocation: device-like arrays ------------------------------------------------------
    def _empty(self, shape, dtype):
        a = np.empty(shape, dtype=dtype).view(DeviceArray)
        self.tracker.forget(a, f"array allocated at {call_site()}")
        return a

    def _is_device(self, a) -> bool:
        return isinstance(a, DeviceArray)

    def _pinned(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    # --- issuing and ordering ---------------------------------------------------------------
    def _issue(self, stream, fn, reads=(), writes=(), kind="copies", what=""):
        self._raise_pending()
        site = call_site()
        tr = self.tracker
        with tr.lock:
            host_clock = dict(tr.host)
        accesses = [(a, _footprint(a, f), False) for a, f in reads] + \
                   [(a, _footprint(a, f), True) for a, f in writes]

        def op(s):
            with tr.lock:
                _join(s.clock, host_clock)
                s.clock[s.name] += 1
                errors = [tr.check(s.name, s.clock, s.clock[s.name], a, fp, w, site, what)
                          for a, fp, w in accesses]
            err = next((e for e in errors if e is not None), None)
            fn()                   # run it anyway: the report is about order, not a crash
            if err is not None:
                raise err
        stream.put(op)

    def record(self, stream, event=None):     # a new event each time: what a re-recorded
        self._raise_pending()                   # one means to a wait issued after this call
        ev = _Event()

        def op(s):
            with self.tracker.lock:
                ev.clock = dict(s.clock)
            ev.flag.set()
        stream.put(op)
        return ev

    def wait(self, stream, event):
        self._raise_pending()

        def op(s):
            event.flag.wait()
            with self.tracker.lock:
                _join(s.clock, event.clock)
        stream.put(op)

    def _sync(self, stream):
        ev = self.record(stream)
        ev.flag.wait()
        with self.tracker.lock:
            _join(self.tracker.host, ev.clock)
        self._raise_pending()

    def synchronize(self):
        super().synchronize()
        with self.tracker.lock:        # everything issued so far happens before what follows
            self.tracker.history.clear()

    def host_access(self, array, write, what):
        self._raise_pending()
        self.tracker.host_access(array, None, write, what)

    def overlap_pays(self, ranks_on_node=1):
        return True, "stream checker: overlap exercises the boundary and interior streams"

    def describe(self):
        return {**super().describe(), "stream_check": True}


def stream_check_enabled() -> bool:
    """``HPCINV_STREAM_CHECK`` is set to 1."""
    v = os.environ.get("HPCINV_STREAM_CHECK", "").strip()
    if v not in ("", "0", "1"):
        from ..errors import ConfigError
        raise ConfigError(f"HPCINV_STREAM_CHECK must be 0 or 1, got {v!r}")
    return v == "1"
