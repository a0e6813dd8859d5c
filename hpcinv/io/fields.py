"""Write distributed fields as global HDF5 datasets (gathered on rank 0).

``fields.h5`` (forward) holds ``Pf`` and ``K`` with shape ``(nx, ny[, nz])`` indexed
``[ix, iy(, iz)]``, and ``qx`` ``(nx+1, ny[, nz])``, ``qy`` ``(nx, ny+1[, nz])``, ``qz``
likewise, whatever the number of ranks, with attributes ``iterations``, ``residual``,
``converged`` and the grid geometry. Gathering to one rank limits this writer to grids that fit
in one node's memory; a scalable parallel writer replaces it for production inversions.
"""
from __future__ import annotations

import os
from pathlib import Path

from .gather import gather_cells, gather_faces


def grid_attrs(grid) -> dict:
    """Geometry and layout attributes stored with every output file."""
    d = grid.decomp
    return {"shape": grid.shape, "extent": [v for e in grid.extent for v in e],
            "spacing": grid.spacing, "ranks": d.size, "dims": d.dims}


def write_h5(path, decomp, cells=None, faces=None, attrs=None, to_host=None):
    """Gather and write global datasets on rank 0 (collective: every rank calls it).

    Args:
        cells: ``{name: padded local cell array}``.
        faces: ``{name: (padded local face array, axis)}``.
        attrs: file attributes (rank 0's values are written).
        to_host: backend array -> numpy copy.

    The file is written under a temporary name and renamed, so a reader never sees half of it.
    """
    import numpy as np
    to_host = to_host or np.asarray
    data = {k: gather_cells(decomp, v, to_host) for k, v in (cells or {}).items()}
    for k, (v, axis) in (faces or {}).items():
        data[k] = gather_faces(decomp, v, axis, to_host)
    if decomp.rank != 0:
        return None
    import h5py
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name, arr in data.items():
            f.create_dataset(name, data=arr)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, path)
    return path


def write_fields(path, solver, state, extra_attrs=None):
    """Write a forward solution (:class:`~hpcinv.solvers.ForwardState`) as ``fields.h5``."""
    r = state.result
    attrs = {"iterations": r.iterations, "residual": r.residual, "converged": r.converged,
             "problem": solver.problem.name, **grid_attrs(solver.grid), **(extra_attrs or {})}
    faces = {"q" + "xyz"[a]: (state.q[a], a) for a in range(solver.grid.ndim)}
    return write_h5(path, solver.decomp, {"Pf": state.Pf, "K": solver.K}, faces, attrs,
                    solver.backend.to_host)
