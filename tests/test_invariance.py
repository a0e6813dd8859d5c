"""Decomposition invariance: any rank count and layout gives bitwise-identical fields.

Each MPI run solves on COMM_WORLD (its own rank count; the suite is run with -n 2, 3, 4), gathers
the global fields to rank 0, and rank 0 solves the same problem alone on COMM_SELF; every field
must agree bit for bit, and the iteration counts must be the same.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

from conftest import owned
from hpcinv.backend import make_backend
from hpcinv.io import gather_cells, gather_faces
from hpcinv.model.geothermal import DEFAULT_SHAPES
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import PTParams, solve_forward

PARAMS = PTParams(tol=1e-6, ncheck=10)


def _global_solution(problem, backend, overlap):
    s = solve_forward(problem, backend, PARAMS, overlap=overlap)
    d = problem.grid.decomp
    out = {"Pf": gather_cells(d, s.Pf), "K": gather_cells(d, problem.K),
           "Qf": gather_cells(d, problem.Qf)}
    for a in range(d.ndim):
        out[f"q{'xyz'[a]}"] = gather_faces(d, s.q[a], a)
    return out, s.result


CASES = [
    (geothermal2d, (23, 13), None),
    (geothermal2d, (23, 13), "x"),
    (geothermal2d, (17, 14), "y"),
    (geothermal3d, (13, 7, 9), None),
    (geothermal3d, (11, 9, 7), "z"),
]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("make,shape,along", CASES)
def test_bitwise_identical_to_one_rank(make, shape, along, overlap, backend):
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    dims = None
    if along is not None:
        dims = [1] * len(shape)
        dims["xyz".index(along)] = size
    p = make(shape, comm=comm, dims=dims)
    d = p.grid.decomp
    assert d.size == size and math.prod(d.dims) == size
    fields, res = _global_solution(p, backend, overlap)
    ok, msg = True, ""
    if comm.Get_rank() == 0:
        ref, ref_res = _global_solution(make(shape, comm=MPI.COMM_SELF), backend, overlap)
        assert res.converged and ref_res.converged
        if res.iterations != ref_res.iterations:
            ok, msg = False, f"iterations {res.iterations} != {ref_res.iterations}"
        elif res.residual != ref_res.residual:
            ok, msg = False, f"residual {res.residual!r} != {ref_res.residual!r}"
        for name, ref_a in ref.items():
            a = fields[name]
            if a.shape != ref_a.shape or not np.array_equal(a, ref_a):
                diff = np.max(np.abs(a - ref_a)) if a.shape == ref_a.shape else "shape"
                ok, msg = False, f"{name} differs (dims {d.dims}): max diff {diff}"
                break
        assert np.max(np.abs(fields["Pf"])) > 0 and np.max(np.abs(fields["qx"])) > 0
    else:
        for a in fields.values():
            assert a is None
    ok, msg = comm.bcast((ok, msg), root=0)
    assert ok, msg
    # every rank agrees on the iteration count (the reduction is global)
    assert len(set(comm.allgather(res.iterations))) == 1


@pytest.mark.mpi(min_size=2)
def test_overlap_and_blocking_agree(backend):
    """Overlapped and blocking exchanges give the same bits on the same decomposition."""
    comm = MPI.COMM_WORLD
    a, ra = _global_solution(geothermal3d((9, 8, 7), comm=comm), backend, True)
    b, rb = _global_solution(geothermal3d((9, 8, 7), comm=comm), backend, False)
    assert ra.iterations == rb.iterations
    if comm.Get_rank() == 0:
        for k in a:
            assert np.array_equal(a[k], b[k]), k


# --- serial -----------------------------------------------------------------------------------
def test_thread_count_does_not_change_bits():
    p = geothermal2d((31, 17), comm=MPI.COMM_SELF)
    r1 = solve_forward(p, make_backend("host", threads=1), PARAMS)
    r2 = solve_forward(p, make_backend("host", threads=2), PARAMS)
    assert r1.result.iterations == r2.result.iterations
    assert np.array_equal(r1.Pf, r2.Pf)
    assert all(np.array_equal(x, y) for x, y in zip(r1.q, r2.q))


def test_geothermal2d_default_definition():
    """The workshop setup on the default 255 x 127 grid: wells at cells (51, 57), (204, 57)."""
    p = geothermal2d(comm=MPI.COMM_SELF)
    assert p.grid.shape == DEFAULT_SHAPES["geothermal2d"] == (255, 127)
    assert p.grid.extent == ((-1.0, 1.0), (0.0, 1.0))
    dx, dy = p.grid.spacing
    K, Qf = owned(p.K), owned(p.Qf)
    # wells
    nz = np.argwhere(Qf != 0)
    assert [tuple(c) for c in nz] == [(51, 57), (204, 57)]
    assert Qf[51, 57] == 1.0 / (dx * dy) and Qf[204, 57] == -1.0 / (dx * dy)
    assert [w.cells for w in p.wells] == [[(51, 57)], [(204, 57)]]
    assert [w.rate for w in p.wells] == [1.0, -1.0]
    xc = -1 + (np.arange(255) + 0.5) * dx
    yc = (np.arange(127) + 0.5) * dy
    assert -0.6 < xc[51] <= -0.6 + dx and 0.45 < yc[57] <= 0.45 + dy
    assert 0.6 < xc[204] <= 0.6 + dx
    # barrier: K = 1e-6 on centres -0.04 < x <= 0.04, 0.3 < y <= 0.8, else 1
    expect = np.ones((255, 127))
    expect[122:133, 38:102] = 1e-6
    np.testing.assert_array_equal(K, expect)
    inx = (xc > -0.04) & (xc <= 0.04)
    iny = (yc > 0.3) & (yc <= 0.8)
    assert np.array_equal(np.nonzero(inx)[0], np.arange(122, 133))
    assert np.array_equal(np.nonzero(iny)[0], np.arange(38, 102))
    # ghosts are zero in the problem definition
    assert np.all(p.K[0] == 0) and np.all(p.Qf[:, -1] == 0)


def test_geothermal3d_definition():
    shape = (31, 15, 20)
    p = geothermal3d(shape, comm=MPI.COMM_SELF)
    dx, dy, dz = p.grid.spacing
    K, Qf = owned(p.K), owned(p.Qf)
    xc = -1 + (np.arange(shape[0]) + 0.5) * dx
    yc = (np.arange(shape[1]) + 0.5) * dy
    zc = (np.arange(shape[2]) + 0.5) * dz
    bar = ((xc > -0.04) & (xc <= 0.04))[:, None, None] & ((yc > 0.3) & (yc <= 0.8))[None, :, None] \
        & ((zc > 0.2) & (zc <= 0.8))[None, None, :]
    assert bar.sum() > 0
    np.testing.assert_array_equal(K, np.where(bar, 1e-6, 1.0))
    zcol = np.nonzero((zc > 0.2) & (zc <= 0.8))[0]
    assert len(zcol) == 12
    for (xw, rate), w in zip(((-0.6, 1.0), (0.6, -1.0)), p.wells):
        ix = int(np.nonzero((xc > xw) & (xc <= xw + dx))[0][0])
        iy = int(np.nonzero((yc > 0.45) & (yc <= 0.45 + dy))[0][0])
        assert w.cells == [(ix, iy, int(iz)) for iz in zcol]
        col = Qf[ix, iy, :]
        assert np.all(col[zcol] == rate / (dx * dy * dz * len(zcol)))
        assert math.isclose(col.sum() * dx * dy * dz, rate, rel_tol=1e-13)
    assert np.count_nonzero(Qf) == 2 * len(zcol)
    assert abs(Qf.sum()) < 1e-9 * np.abs(Qf).max()
