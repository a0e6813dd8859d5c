"""Scalable HDF5 output of distributed fields: the single import point for HDF5 I/O.

The implementation is split by job; this module re-exports every name of each, so
``from hpcinv.io.h5io import ...`` and ``h5io.<name>`` keep working:

* :mod:`hpcinv.io.h5write` -- :func:`write_h5` (global datasets written without a gather, modes
  ``mpio``/``vds``/``single``/``sequential`` chosen by :func:`choose_mode`, atomic publish);
  the file layout and atomicity guarantees are described there.
* :mod:`hpcinv.io.h5read` -- :func:`read_cells`, :func:`read_faces`, :func:`read_global`,
  :func:`read_attrs`, :func:`read_replicated` (any rank count, missing part files raise),
  :func:`consolidate`.
* :mod:`hpcinv.io.xdmf` -- :func:`write_xdmf` (ParaView/VisIt sidecar; axis order explained
  there), :func:`check_xdmf`.
* :mod:`hpcinv.io.h5util` -- lazy h5py import, fsync helpers.

To replace a helper (tests), patch it in the module that calls it (e.g. ``h5write._publish``).
"""
from __future__ import annotations

from .h5read import (consolidate, read_attrs, read_cells, read_faces,  # noqa: F401
                     read_global, read_replicated)
from .h5write import MODES, choose_mode, h5py_has_mpi, write_h5  # noqa: F401
from .xdmf import check_xdmf, write_xdmf  # noqa: F401
