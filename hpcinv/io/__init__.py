"""Input/output of distributed fields, split by job:

* :mod:`hpcinv.io.h5write` -- :func:`write_h5` (global datasets written without a gather, modes
  ``mpio``/``vds``/``single``/``sequential`` chosen by :func:`~hpcinv.io.h5mode.choose_mode`,
  atomic publish); the file layout and atomicity guarantees are described there.
* :mod:`hpcinv.io.h5read` -- :func:`read_cells`, :func:`read_faces`, :func:`read_global`,
  :func:`read_attrs`, :func:`read_replicated` (any rank count, missing part files raise),
  :func:`~hpcinv.io.h5read.consolidate`.
* :mod:`hpcinv.io.xdmf` -- :func:`write_xdmf` (ParaView/VisIt sidecar over the fields'
  axis-reversed views; :func:`~hpcinv.io.fields.write_viewable` writes both).
* :mod:`hpcinv.io.fields` -- the solver output ``fields.h5``; :mod:`hpcinv.io.gather` --
  gathering to one rank for small runs and tests; :mod:`hpcinv.io.h5util` -- lazy h5py import,
  fsync helpers.
"""
from .fields import grid_attrs, write_fields, write_viewable
from .gather import gather_cells, gather_faces, owned_face_block
from .h5read import consolidate, read_attrs, read_cells, read_faces, read_global, read_replicated
from .h5write import write_h5
from .xdmf import write_xdmf

__all__ = ["write_fields", "write_viewable", "write_h5", "write_xdmf", "grid_attrs", "consolidate", "read_cells",
           "read_faces",
           "read_global", "read_attrs", "read_replicated", "gather_cells", "gather_faces",
           "owned_face_block"]
