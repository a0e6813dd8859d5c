"""Small shared helpers of the HDF5 modules: lazy h5py import and fsync of files/directories."""
from __future__ import annotations

import os
from pathlib import Path


def _h5py():
    import h5py
    return h5py


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(p: Path) -> None:
    try:
        _fsync_path(p)
    except OSError:   # some file systems refuse fsync on directories; the rename still stands
        pass



def write_all(path, data, exclusive: bool = False) -> None:
    """Write the bytes ``data`` (bytes-like, or an iterable of bytes-like chunks) to ``path``
    with checked ``os.write`` calls and fsync them (any failure, a full disk included, raises
    ``OSError``). ``exclusive``: the file must be new."""
    chunks = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
