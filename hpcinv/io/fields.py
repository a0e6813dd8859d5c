"""Write distributed fields as global HDF5 datasets (see :mod:`hpcinv.io.h5write`).

``fields.h5`` (forward) holds ``Pf`` and ``K`` with shape ``(nx, ny[, nz])`` indexed
``[ix, iy(, iz)]``, and ``qx`` ``(nx+1, ny[, nz])``, ``qy`` ``(nx, ny+1[, nz])``, ``qz``
likewise, whatever the number of ranks, with attributes ``iterations``, ``residual``,
``converged`` and the grid geometry, plus the XDMF sidecar ``fields.xmf`` for ParaView (it reads
the views ``xdmf/<name>``, the same values indexed ``[iz, iy, ix]``, in 2D ``[0, iy, ix]``). No rank
gathers the fields: :func:`~hpcinv.io.h5write.write_h5` writes each rank's block (parallel h5py
where available, else per-rank part files stitched by HDF5 virtual datasets), atomically.
"""
from __future__ import annotations

from .h5write import write_h5
from .xdmf import write_xdmf

__all__ = ["grid_attrs", "write_h5", "write_fields", "write_viewable"]


def grid_attrs(grid) -> dict:
    """Geometry attributes stored with every output file. The rank layout is deliberately not
    stored: a file's content does not depend on how many ranks wrote it."""
    return {"shape": grid.shape, "extent": [v for e in grid.extent for v in e],
            "spacing": grid.spacing}


def write_viewable(path, grid, cells, faces=None, attrs=None, to_host=None, writer=write_h5,
                   **kw):
    """Write fields (collective) with their XDMF views and the sidecar ``<stem>.xmf``, so
    ParaView shows them with x as x (:mod:`hpcinv.io.xdmf`): ``writer(path, grid.decomp, cells,
    faces, attrs, to_host, views=<every field>, **kw)`` (``writer``: :func:`write_h5` or a
    checked variant), then the sidecar on rank 0, whose failure is raised on every rank."""
    views = [*(cells or {}), *(faces or {})]
    path = writer(path, grid.decomp, cells, faces, attrs, to_host, views=views, **kw)
    err = None
    if grid.decomp.rank == 0:
        try:
            write_xdmf(path, grid, views)
        except Exception as e:   # noqa: BLE001 - raised on every rank below
            err = e
    msg = grid.decomp.comm.bcast(None if err is None else f"{type(err).__name__}: {err}", 0)
    if err is not None:
        raise err
    if msg is not None:
        raise RuntimeError(f"writing the XDMF sidecar failed on rank 0: {msg}")
    return path


def write_fields(path, solver, state, extra_attrs=None):
    """Write a forward solution (:class:`~hpcinv.solvers.ForwardState`) as ``fields.h5`` (with
    XDMF views and ``fields.xmf``, see :func:`write_viewable`)."""
    r = state.result
    attrs = {"iterations": r.iterations, "residual": r.residual, "converged": r.converged,
             "problem": solver.problem.name, **grid_attrs(solver.grid), **(extra_attrs or {})}
    faces = {"q" + "xyz"[a]: (state.q[a], a) for a in range(solver.grid.ndim)}
    return write_viewable(path, solver.grid, {"Pf": state.Pf, "K": solver.K}, faces, attrs,
                          solver.backend.to_host)
