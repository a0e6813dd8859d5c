"""A new file on disk written by checked system calls, as the file object ``h5py.File`` takes.

HDF5's own file driver reports write errors unreliably (a failed write of a dataset's buffer at
close is only printed, "Exception ignored", and the broken file state it leaves can crash the
process later). Building a file in a ``BytesIO`` and writing its bytes afterwards avoids that
but holds the whole file in memory, next to the arrays it was made from.
:class:`CheckedFile` streams instead: h5py's file-object driver hands it every byte HDF5
writes, which it writes at once with ``os.pwrite`` (looping over short writes), so the memory
held is what HDF5 itself buffers, whatever the file's size. The first error (a full disk,
``EFBIG``, an I/O error) is raised to HDF5 *and kept*; :meth:`CheckedFile.finish` raises it
after HDF5 has closed the file, so an error HDF5 swallows at close is not lost. The file's
bytes are those of the in-memory build (same driver, same calls; HDF5's own file driver lays
a file out differently, the same datasets and attributes).
"""
from __future__ import annotations

import io
import os


class SeekableFile(io.RawIOBase):
    """A positioned, readable and writable binary file object, what h5py's ``fileobj`` driver
    uses (it seeks before every ``readinto``/``write``, asks the end with ``seek(0, 2)`` and
    ``tell()``, and calls ``truncate`` and ``flush``). This class keeps the position; a
    subclass moves the bytes and says where its end is (:meth:`_end`, in bytes)."""

    def __init__(self):
        super().__init__()
        self._pos = 0

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def _end(self) -> int:
        raise NotImplementedError

    def seek(self, offset, whence=io.SEEK_SET):
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        start = self._end() if whence == io.SEEK_END else start
        if start is None or start + offset < 0:
            raise OSError(f"bad seek position: offset {offset}, whence {whence}")
        self._pos = start + offset
        return self._pos


class CheckedFile(SeekableFile):
    """The new file ``path`` (truncated if it exists; ``exclusive``: it must not exist) as a
    binary, seekable file object. Use as a context manager: on leaving it the file descriptor
    is closed; call :meth:`finish` first to fsync it and raise any kept error."""

    def __init__(self, path, exclusive: bool = False):
        super().__init__()
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        self.name = os.fspath(path)
        self._fd = os.open(self.name, flags, 0o644)
        self.error: OSError | None = None            # the first failure, kept for finish()

    def _kept(self, e: OSError) -> OSError:
        if self.error is None:
            self.error = e
        return e

    # --- the file-object protocol h5py uses (with :class:`SeekableFile`'s) ---------------
    def _end(self) -> int:
        return os.fstat(self._fd).st_size

    def readinto(self, b):
        """Fill all of ``b`` from the current position; bytes past the end of the file read
        as zeros, as with HDF5's own driver (h5py's driver calls this once and ignores the
        count, so a short read must not leave stale bytes; a read may also be short for a
        request over 2 GiB)."""
        view = memoryview(b).cast("B")
        done = 0
        try:
            while done < len(view):
                n = os.preadv(self._fd, [view[done:]], self._pos + done)
                if n == 0:
                    view[done:] = bytes(len(view) - done)          # past the end of the file
                    break
                done += n
        except OSError as e:
            raise self._kept(e) from None
        self._pos += len(view)
        return len(view)

    def write(self, b):
        """Write all of ``b`` at the current position (checked; short writes continue)."""
        view = memoryview(b).cast("B")
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self._fd, view[done:], self._pos + done)
                if n <= 0:
                    raise OSError(f"{self.name}: write returned {n} at byte "
                                  f"{self._pos + done}")
                done += n
        except OSError as e:
            raise self._kept(e) from None
        finally:
            self._pos += done
        return done

    def truncate(self, size=None):
        size = self._pos if size is None else int(size)
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            raise self._kept(e) from None
        return size

    def flush(self):
        pass                                          # every write is already in the file

    # --- the end ----------------------------------------------------------------------------
    def finish(self) -> None:
        """fsync the file, then raise the first kept error (or the fsync's) as ``OSError``."""
        if self.error is None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                self._kept(e)
        if self.error is not None:
            raise self.error

    def close(self):
        fd, self._fd = getattr(self, "_fd", -1), -1     # -1: never opened, or closed
        try:
            if fd >= 0:
                os.close(fd)
        finally:
            super().close()
