"""The backend's memory counter: bytes it has allocated and still holds, and the high-water mark.

Every array a backend allocates goes through :meth:`Backend.empty` (device arrays: ``zeros``,
``clone``, ``upload``, ``elementwise`` results...) or :meth:`Backend.pinned` (staging buffers);
both call :meth:`MemoryCounter.track`, which counts the buffer's bytes and registers a
``weakref.finalize`` on the object that owns the memory, so the bytes are given back when
Python frees the last array or view of it. Views are never counted: only the allocation is,
and the finalizer sits on the buffer's owner (the root of NumPy's/CuPy's ``base`` chain, or the
stand-in's pool block), which every view keeps alive.

Temporaries a backend operation creates and drops inside one call (the right-hand side of
``elementwise``; on GPUs the ``abs`` of ``max_abs`` and the product of ``dot``, a field each;
on the host their leaf buffer, :data:`hpcinv.backend.host_reduce.CHUNK` values) are counted by
:meth:`MemoryCounter.transient`: they raise the high-water mark above what is held, without
changing it. Intermediate temporaries inside an ``elementwise`` function beyond its result
(``a * b + c`` makes two) are not seen.

Thread safety: finalizers may run in any thread (a stream worker, the garbage collector inside
an allocation); they only append to a queue, which the counter drains under its lock.
"""
from __future__ import annotations

import collections
import threading
import weakref

#: The kinds of memory counted: device arrays (host arrays on the host backend), pinned host
#: staging buffers, and temporaries inside one backend call.
KINDS = ("arrays", "pinned", "temporary")


def _owner(a):
    """The object whose lifetime is the lifetime of ``a``'s memory (weak-referenceable)."""
    mem = getattr(getattr(a, "data", None), "mem", None)      # CuPy MemoryPointer -> memory
    if mem is not None and type(mem).__weakrefoffset__:
        return mem
    root = a
    while True:
        base = getattr(root, "base", None)
        if base is None or not type(base).__weakrefoffset__ or not hasattr(base, "nbytes"):
            return root
        root = base


class MemoryCounter:
    """Bytes held per kind (:data:`KINDS`), their total and its high-water mark.

    Attributes (read through :meth:`snapshot` for a consistent view):
        current: bytes held now, all kinds.
        peak: the high-water mark of ``current`` (plus transients) since construction or the
            last :meth:`reset_peak`.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._freed = collections.deque()
        self._held = dict.fromkeys(KINDS, 0)
        self._peak_by_kind = dict.fromkeys(KINDS, 0)
        self.current = 0
        self.peak = 0

    def _drain(self):
        while self._freed:
            kind, n = self._freed.popleft()
            self._held[kind] -= n
            self.current -= n

    def _raise_peak(self, extra: int = 0, kind: str | None = None):
        self.peak = max(self.peak, self.current + extra)
        for k in KINDS:
            held = self._held[k] + (extra if k == kind else 0)
            self._peak_by_kind[k] = max(self._peak_by_kind[k], held)

    def track(self, a, kind: str = "arrays"):
        """Count the new array ``a`` (its ``nbytes``) until its memory is freed. Returns ``a``."""
        n = int(a.nbytes)
        if n == 0:
            return a
        weakref.finalize(_owner(a), self._freed.append, (kind, n))
        with self._lock:
            self._drain()
            self._held[kind] += n
            self.current += n
            self._raise_peak()
        return a

    def transient(self, nbytes: int):
        """A temporary of ``nbytes`` exists for a moment now: the high-water mark is raised to
        at least what is held plus ``nbytes``."""
        with self._lock:
            self._drain()
            self._raise_peak(int(nbytes), "temporary")

    def reset_peak(self) -> int:
        """The high-water mark so far; then it restarts from what is held now."""
        with self._lock:
            self._drain()
            out = self.peak
            self.peak = self.current
            self._peak_by_kind = dict(self._held)
            return out

    def snapshot(self) -> dict:
        """``{"current_bytes", "peak_bytes", "by_kind": {kind: {"current_bytes",
        "peak_bytes"}}}`` (bytes, ints)."""
        with self._lock:
            self._drain()
            return {"current_bytes": self.current, "peak_bytes": self.peak,
                    "by_kind": {k: {"current_bytes": self._held[k],
                                    "peak_bytes": self._peak_by_kind[k]} for k in KINDS}}
