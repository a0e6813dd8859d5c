"""Happens-before tracking of the stand-in's device work, on the stream checker's machinery.

Work runs eagerly (in issue order, on the calling thread), but every operation is recorded as
an access by a stream, with the vector clocks of :mod:`hpcinv.backend.checker`: a stream's
clock joins the host's at issue time (host program order), ``Event.record``/``wait_event``
and ``synchronize`` join clocks as CUDA orders work. Two accesses to overlapping bytes, one a
write, by agents neither of which is ordered after the other, raise the checker's
:class:`~hpcinv.backend.checker.StreamRaceError` naming the array, both streams and both call
sites. So a missing event wait or a missing sync before MPI is *reported* even though the
eager execution gives the right values.

Footprints are byte-exact (:class:`Footprint`): kernels report every element they touch
(see :mod:`.kernel`), copies and slices their views' bytes.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from hpcinv.backend.checker import StreamRaceError, _join, _key, _root, _Tracker

__all__ = ["Footprint", "StreamRaceError", "STATE", "issue", "host_access", "view_footprint"]

_SKIP = tuple(os.path.dirname(os.path.abspath(p)) for p in (
    __file__, sys.modules["hpcinv.backend.checker"].__file__))


def site() -> str:
    """``file:line (function)`` of the nearest caller outside the stand-in and hpcinv/backend."""
    f = sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) in _SKIP:
        f = f.f_back
    if f is None:
        return "?"
    path = f.f_code.co_filename
    for marker in (os.sep + "hpcinv" + os.sep, os.sep + "tests" + os.sep):
        if marker in path:
            path = marker.strip(os.sep) + os.sep + path.split(marker, 1)[1]
            break
    return f"{path}:{f.f_lineno} ({f.f_code.co_name})"


class Footprint:
    """Bytes ``[lo, hi)`` of an allocation, all of them (``mask is None``) or those set in
    ``mask`` (a bool array of length ``hi - lo``). Compared by value; :meth:`overlaps` is what
    the checker's ``_overlap`` calls."""

    __slots__ = ("lo", "hi", "mask", "_h")

    def __init__(self, lo: int, hi: int, mask=None):
        self.lo, self.hi, self.mask = int(lo), int(hi), mask
        self._h = None if mask is None else hash(mask.tobytes())

    @classmethod
    def from_elements(cls, offset: int, itemsize: int, touched: np.ndarray):
        """Footprint of the elements set in ``touched`` (bool, per element) of a contiguous
        run starting at byte ``offset``; ``None`` when nothing was touched."""
        nz = np.flatnonzero(touched)
        if nz.size == 0:
            return None
        first, last = int(nz[0]), int(nz[-1]) + 1
        sub = touched[first:last]
        mask = None if nz.size == last - first else np.repeat(sub, itemsize)
        return cls(offset + first * itemsize, offset + last * itemsize, mask)

    def overlaps(self, other) -> bool:
        if other is None:
            return True
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        if lo >= hi:
            return False
        a = None if self.mask is None else self.mask[lo - self.lo:hi - self.lo]
        b = None if other.mask is None else other.mask[lo - other.lo:hi - other.lo]
        if a is None and b is None:
            return True
        if a is None or b is None:
            return bool((a if b is None else b).any())
        return bool((a & b).any())

    def __eq__(self, other):
        return (isinstance(other, Footprint) and self.lo == other.lo and self.hi == other.hi
                and self._h == other._h and (self.mask is None or
                                             np.array_equal(self.mask, other.mask)))

    def __hash__(self):
        return hash((self.lo, self.hi, self._h))

    def __repr__(self):
        return f"<bytes {self.lo}:{self.hi}{'' if self.mask is None else ' (some)'}>"


_fp_cache: dict = {}


def view_footprint(v: np.ndarray) -> Footprint:
    """The bytes of its allocation that the NumPy view ``v`` covers."""
    root = _root(v)
    off = v.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    key = (id(root), off, v.shape, v.strides, v.itemsize)
    fp = _fp_cache.get(key)
    if fp is not None:
        return fp
    if v.size == 0:
        fp = Footprint(off, off)
    elif v.flags.c_contiguous or v.flags.f_contiguous:
        fp = Footprint(off, off + v.nbytes)
    else:
        offs = np.zeros((), dtype=np.int64)
        for n, s in zip(v.shape, v.strides):
            offs = np.add.outer(offs, np.arange(n, dtype=np.int64) * s)
        offs = (offs.ravel()[:, None] + np.arange(v.itemsize)).ravel()
        lo, hi = int(offs.min()), int(offs.max()) + 1
        mask = np.zeros(hi - lo, dtype=bool)
        mask[offs - lo] = True
        fp = Footprint(off + lo, off + hi, mask)
    if len(_fp_cache) > 4096:
        _fp_cache.clear()
    _fp_cache[key] = fp
    return fp


class _State:
    """The stand-in device's one tracker (host clock, per-allocation history)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.tracker = _Tracker()
        self.lock = threading.RLock()
        self.pending = None

    def raise_pending(self):
        """Raise a race found where raising was not possible (inside a property that the
        caller, mpi4py, probes and whose exceptions it swallows)."""
        err, self.pending = self.pending, None
        if err is not None:
            raise err


STATE = _State()


def name_allocation(root: np.ndarray, what: str, fresh: bool):
    """Name an allocation in race reports; a ``fresh`` one starts with no history (a block
    handed out again by the pool keeps its history: earlier users may still be running)."""
    tr = STATE.tracker
    if fresh:
        tr.forget(root, what)
    else:
        with tr.lock:
            tr.names[_key(root)] = what


def issue(stream, accesses, what: str):
    """Record one operation on ``stream``: ``accesses`` are ``(numpy view, footprint, write)``
    (footprint ``None``: the view's bytes). Raises the first race found."""
    STATE.raise_pending()
    tr = STATE.tracker
    where = site()
    with tr.lock:
        stream._order_before_issue(tr.host)
        stream.clock[stream.key] += 1
        epoch = stream.clock[stream.key]
        err = None
        for a, fp, write in accesses:
            fp = view_footprint(a) if fp is None else fp
            e = tr.check(stream.key, stream.clock, epoch, a, fp, write, where, what)
            err = err or e
    if err is not None:
        raise err


def host_access(a: np.ndarray, write: bool, what: str, deferred: bool = False):
    """The host (MPI) reads or writes the NumPy view ``a`` now; a race is raised at once, or
    (``deferred``) at the next operation of the stand-in."""
    STATE.raise_pending()
    tr = STATE.tracker
    where = site()
    with tr.lock:
        tr.host["host"] += 1
        err = tr.check("host", tr.host, tr.host["host"], a, view_footprint(a), write, where,
                       what)
    if err is not None and deferred:
        STATE.pending = STATE.pending or err
    elif err is not None:
        raise err


def host_join(clock: dict):
    """The host waited for the work behind ``clock`` (stream or event synchronize)."""
    STATE.raise_pending()
    with STATE.tracker.lock:
        _join(STATE.tracker.host, clock)
