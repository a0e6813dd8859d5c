"""The stand-in's device memory: CuPy's stream-ordered memory pool, and pinned host memory.

Device allocations are blocks of host memory (NumPy ``uint8`` arrays, rounded up to 512
bytes as CuPy rounds) handed out by :class:`MemoryPool`. As in CuPy, a block returns to the
free list of the stream that was current when it was *allocated* as soon as its last array is
garbage collected, and the next allocation of that size on that stream gets it at once: work
still running on another stream against the old array is then a race with the new user, and
the block's access history is kept so that :mod:`.tracking` reports it.
"""
from __future__ import annotations

import weakref

import numpy as np

from .streams import get_current_stream, get_device_id
from .tracking import name_allocation, site

_ALIGN = 512
#: Roots of pinned host allocations (``cupyx.empty_pinned``), by id.
_pinned: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


class MemoryPointer:
    """``ndarray.data``: ``ptr`` (int address) and ``device_id``; keeps its block alive."""

    def __init__(self, block: "_Block", offset: int = 0):
        self.mem, self.offset = block, offset
        self.device_id = block.device_id

    @property
    def ptr(self) -> int:
        return self.mem.ptr + self.offset

    def __add__(self, offset: int):
        return MemoryPointer(self.mem, self.offset + int(offset))


class _Block:
    """One pooled allocation; returns to its pool when no array refers to it any more."""

    def __init__(self, pool, buf: np.ndarray, stream_key: str):
        self.pool, self.buf, self.stream_key = pool, buf, stream_key
        self.ptr = buf.__array_interface__["data"][0]
        self.size = buf.nbytes
        self.device_id = get_device_id()

    def __del__(self):
        pool = self.pool
        if pool is not None and pool._free is not None:
            pool._release(self)


class MemoryPool:
    """``cupy.get_default_memory_pool()``: stream-ordered reuse of freed blocks."""

    def __init__(self):
        self._free: dict = {}
        self._used = 0
        self._total = 0

    def malloc(self, nbytes: int) -> MemoryPointer:
        size = max(_ALIGN, -(-int(nbytes) // _ALIGN) * _ALIGN)
        s = get_current_stream()
        free = self._free.get((s.key, size))
        what = f"array allocated at {site()}"
        if free:
            buf = free.pop()
            name_allocation(buf, what + " (a pooled block, reused)", fresh=False)
        else:
            buf = np.zeros(size, dtype=np.uint8)
            name_allocation(buf, what, fresh=True)
            self._total += size
        self._used += size
        return MemoryPointer(_Block(self, buf, s.key))

    def _release(self, block: _Block):
        self._used -= block.size
        self._free.setdefault((block.stream_key, block.size), []).append(block.buf)

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._total

    def free_bytes(self) -> int:
        return self._total - self._used

    def free_all_blocks(self, stream=None):
        """Release the free blocks (all streams' when ``stream`` is None)."""
        for key in list(self._free):
            if stream is None or key[0] == stream.key:
                for buf in self._free.pop(key):
                    self._total -= buf.nbytes


_pool = MemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _pool


def reset():
    global _pool
    _pool._free = None          # blocks still alive no longer return to it
    _pool = MemoryPool()
    _pinned.clear()


def empty_pinned(shape, dtype=float, order='C') -> np.ndarray:
    """``cupyx.empty_pinned``: a NumPy array in (stand-in) page-locked memory, whose reads and
    writes by asynchronous copies are tracked."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    root = np.zeros(max(n, 1), dtype=np.uint8)
    _pinned[id(root)] = root
    name_allocation(root, f"pinned buffer allocated at {site()}", fresh=True)
    return np.ndarray(shape, dtype=dtype, buffer=root, order=order)


def is_pinned(a: np.ndarray) -> bool:
    """True when ``a`` is a view of stand-in pinned memory."""
    from hpcinv.backend.checker import _root
    r = _root(a)
    return _pinned.get(id(r)) is r
