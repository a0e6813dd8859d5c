"""Write a forward solution as global HDF5 datasets (gathered on rank 0).

``fields.h5`` holds ``Pf`` and ``K`` with shape ``(nx, ny[, nz])`` indexed ``[ix, iy(, iz)]``,
and ``qx`` ``(nx+1, ny[, nz])``, ``qy`` ``(nx, ny+1[, nz])``, ``qz`` likewise, whatever the
number of ranks, with attributes ``iterations``, ``residual``, ``converged`` and the grid
geometry. Gathering to one rank limits this writer to grids that fit in one node's memory; a
scalable parallel writer replaces it for production inversions.
"""
from __future__ import annotations

import os
from pathlib import Path

from .gather import gather_cells, gather_faces


def write_fields(path, solver, state, extra_attrs=None):
    """Gather ``state`` (a :class:`~hpcinv.solvers.ForwardState`) and write it on rank 0.

    The file is written to a temporary name and renamed, so a reader never sees half of it.
    Collective: every rank must call it.
    """
    decomp, to_host = solver.decomp, solver.backend.to_host
    data = {"Pf": gather_cells(decomp, state.Pf, to_host),
            "K": gather_cells(decomp, solver.K, to_host)}
    for a in range(decomp.ndim):
        data["q" + "xyz"[a]] = gather_faces(decomp, state.q[a], a, to_host)
    if decomp.rank != 0:
        return None
    import h5py
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    grid = solver.grid
    with h5py.File(tmp, "w") as f:
        for name, arr in data.items():
            f.create_dataset(name, data=arr)
        f.attrs["iterations"] = state.result.iterations
        f.attrs["residual"] = state.result.residual
        f.attrs["converged"] = state.result.converged
        f.attrs["problem"] = solver.problem.name
        f.attrs["shape"] = grid.shape
        f.attrs["extent"] = [v for e in grid.extent for v in e]
        f.attrs["spacing"] = grid.spacing
        f.attrs["ranks"] = decomp.size
        f.attrs["dims"] = decomp.dims
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, path)
    return path
