"""Readers of :mod:`hpcinv.io.h5write` output, and :func:`consolidate`.

Readers (:func:`read_cells`, :func:`read_faces`) read only this rank's hyperslab, so a file
written on any number of ranks can be read back on any other (restart on a different rank
count). A virtual dataset whose source file is missing silently reads as its fill value in
HDF5; the readers check the sources they touch and raise ``FileNotFoundError`` instead. A
reader racing a writer of the same path (``hpcinv plot`` on a running run) may find the previous
parts gone between opening the master and reading: it then re-opens ``path``, which by then is
the new, complete master (parts are deleted only after the rename), and reads again.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from .h5util import _fsync_path, _h5py


def _open_dataset(f, path, name):
    if name not in f:
        raise KeyError(f"{path}: no dataset {name!r} (has {sorted(f.keys())})")
    return f[name]


def _check_sources(path: Path, ds, selection) -> None:
    """Raise if a virtual source file overlapping ``selection`` is missing (HDF5 would
    silently return fill values)."""
    if not ds.is_virtual:
        return
    lo = [s.start for s in selection]
    hi = [s.stop - 1 for s in selection]
    seen = set()
    for vs in ds.virtual_sources():
        start, end = vs.vspace.get_select_bounds()
        if any(e < a or s > b for s, e, a, b in zip(start, end, lo, hi)):
            continue
        if vs.file_name in seen or vs.file_name == ".":
            continue
        seen.add(vs.file_name)
        src = Path(vs.file_name)
        if not src.is_absolute():
            src = path.parent / src
        if not src.exists():
            raise FileNotFoundError(
                f"{path}: dataset {ds.name!r} needs the part file {src}, which is missing "
                "(copy the '*.parts-*' folder together with the master file)")


def _read_block(path, name, selection, expect_shape, what, retries: int = 3):
    """Read a hyperslab. For a virtual dataset the part files it touches are checked before
    and after the read: a concurrent writer replacing the file deletes the previous parts
    only after the new master is in place, so a vanished part means "re-open and read the new
    master" (up to ``retries`` times), never silently returned fill values."""
    h5py = _h5py()
    path = Path(path)
    for attempt in range(retries + 1):
        with h5py.File(path, "r") as f:
            ds = _open_dataset(f, path, name)
            if tuple(ds.shape) != tuple(expect_shape):
                raise ValueError(f"{path}: dataset {name!r} has shape {tuple(ds.shape)}, the "
                                 f"grid needs {tuple(expect_shape)} ({what})")
            try:
                _check_sources(path, ds, selection)
                block = ds[selection]
                _check_sources(path, ds, selection)
                return block, ds.dtype
            except FileNotFoundError:
                if attempt == retries:
                    raise


def read_cells(path, name, decomp, dtype=None) -> np.ndarray:
    """This rank's padded local cell array of dataset ``name`` (owned cells read, ghosts 0).

    Works whatever number of ranks wrote the file; each rank reads only its hyperslab.
    """
    sel = tuple(slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape))
    block, dt = _read_block(path, name, sel, decomp.global_shape, "cell array")
    out = np.zeros(decomp.padded_shape, dtype=dtype or dt)
    out[decomp.owned()] = block
    return out


def read_faces(path, name, axis, decomp, dtype=None) -> np.ndarray:
    """This rank's padded local face array along ``axis`` (padded index ``j`` = face between
    cells ``j-1`` and ``j``): both faces of every owned cell are filled (``j = 1 .. n+1``),
    the rest is 0. Works whatever number of ranks wrote the file.
    """
    gshape = list(decomp.global_shape)
    gshape[axis] += 1
    sel = [slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape)]
    sel[axis] = slice(sel[axis].start, sel[axis].stop + 1)
    block, dt = _read_block(path, name, tuple(sel), gshape, f"face array along axis {axis}")
    out = np.zeros(decomp.padded_shape, dtype=dtype or dt)
    dst = list(decomp.owned())
    dst[axis] = slice(1, decomp.local_shape[axis] + 2)
    out[tuple(dst)] = block
    return out


def read_global(path, name) -> np.ndarray:
    """The whole global dataset ``name`` (small files, tests, plotting on rank 0)."""
    h5py = _h5py()
    path = Path(path)
    with h5py.File(path, "r") as f:
        shape = _open_dataset(f, path, name).shape
    return _read_block(path, name, tuple(slice(0, n) for n in shape), shape, "global read")[0]


def read_attrs(path) -> dict:
    """Root attributes of an output file as a dict (numpy values)."""
    with _h5py().File(path, "r") as f:
        return {k: f.attrs[k] for k in f.attrs}


def read_replicated(path, name) -> np.ndarray:
    """A replicated (rank-0-written) dataset, e.g. observation coordinates."""
    path = Path(path)
    with _h5py().File(path, "r") as f:
        return _open_dataset(f, path, name)[()]


def consolidate(path, out) -> Path:
    """Copy a (possibly virtual) output file into one self-contained plain file ``out``
    (serial; whole arrays in memory, one dataset at a time)."""
    h5py = _h5py()
    path, out = Path(path), Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    with h5py.File(path, "r") as f, h5py.File(tmp, "w") as g:
        for k in f.attrs:
            g.attrs[k] = f.attrs[k]
        names = []                       # every dataset, also those in groups (xdmf/ views)
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for name in names:
            g.create_dataset(name, data=read_global(path, name))
    _fsync_path(tmp)
    os.replace(tmp, out)
    return out
