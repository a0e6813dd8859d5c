"""A copy-on-write view of a file on disk: edit a large HDF5 file in bounded memory.

:class:`CopyOnWriteFile` is a binary file object (what ``h5py.File`` accepts in place of a
name) over a file opened read-only: reads come from the file, writes go to pages of
:data:`PAGE` bytes kept in memory, so HDF5 can add an attribute to a file of any size while
holding only the few pages it touches (the superblock, an object header, the end of the file).
:meth:`CopyOnWriteFile.chunks` yields the edited file page by page, for a checked write of a
new file (:func:`~hpcinv.io.h5util.write_all`): HDF5 itself never writes to the disk, and the
memory used does not grow with the file (checkpoint sealing, :mod:`hpcinv.io.checkpoint`).
"""
from __future__ import annotations

import os

from .checked_file import SeekableFile

#: Bytes per page (copy-on-write unit and write-out chunk).
PAGE = 1 << 16


class CopyOnWriteFile(SeekableFile):
    """A read-write view of ``path`` (opened read-only, never modified) whose writes stay in
    memory, one :data:`PAGE`-byte page per page written. Use as a context manager."""

    def __init__(self, path):
        super().__init__()
        self._fh = open(path, "rb")                       # noqa: SIM115 - closed in close()
        self._size = self._base = os.fstat(self._fh.fileno()).st_size
        self._pos = 0
        self._pages = {}                                  # page number -> bytearray(PAGE)

    # --- the file-object protocol h5py uses (with :class:`SeekableFile`'s) ---------------
    def _end(self) -> int:
        return self._size

    def truncate(self, size=None):
        size = self._pos if size is None else int(size)
        if size < self._size:
            self._base = min(self._base, size)           # original bytes past it are gone
            for k in [k for k in self._pages if k * PAGE >= size]:
                del self._pages[k]
            k, r = divmod(size, PAGE)
            if r and k in self._pages:
                self._pages[k][r:] = bytes(PAGE - r)
        self._size = size
        return size

    def readinto(self, b):
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        done = 0
        while done < n:
            k, r = divmod(self._pos + done, PAGE)
            m = min(PAGE - r, n - done)
            view[done:done + m] = self._page(k)[r:r + m]
            done += m
        self._pos += n
        return n

    def write(self, b):
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            k, r = divmod(self._pos + done, PAGE)
            m = min(PAGE - r, len(view) - done)
            if k not in self._pages:
                self._pages[k] = bytearray(self._page(k))
            self._pages[k][r:r + m] = view[done:done + m]
            done += m
        self._pos += done
        self._size = max(self._size, self._pos)
        return done

    def flush(self):
        pass

    def close(self):
        if not self.closed:
            self._fh.close()
        super().close()

    # --- pages ------------------------------------------------------------------------------
    def _page(self, k: int):
        """Page ``k`` as it reads now (``PAGE`` bytes; zeros past the original data)."""
        if k in self._pages:
            return self._pages[k]
        lo = k * PAGE
        n = max(0, min(PAGE, self._base - lo))
        data = os.pread(self._fh.fileno(), n, lo) if n else b""
        if len(data) != n:
            raise OSError(f"{self._fh.name}: short read at byte {lo + len(data)}")
        return data + bytes(PAGE - n) if n < PAGE else data

    @property
    def dirty_bytes(self) -> int:
        """Bytes held in memory for the pages written."""
        return len(self._pages) * PAGE

    def chunks(self):
        """The edited file's bytes, one page at a time (at most two pages held at once)."""
        for k in range(-(-self._size // PAGE)):
            yield memoryview(self._page(k))[:min(PAGE, self._size - k * PAGE)]
