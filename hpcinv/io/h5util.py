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

