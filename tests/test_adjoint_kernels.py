"""Dot-product tests of every forward/adjoint residual kernel pair, on one rank and under MPI.

For a linear map A and random x, y: |<A x, y> - <x, A^T y>| / max(|<A x, y>|, tiny) < 1e-12,
with inner products over owned cells and owned faces (each face counted once).
"""
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.backend import make_backend
from hpcinv.model.grid import Grid
from hpcinv.io.gather import owned_face_block
from hpcinv.parallel import HaloExchange
from hpcinv.physics import residuals as R
from hpcinv.solvers.fields import boundary_bits

SHAPES = [(13, 9), (7, 6, 5)]


class Setup:
    """Random global fields scattered to padded local blocks, plus kernel geometry."""

    def __init__(self, shape, comm, seed=0, fixed_sides=()):
        self.grid = Grid(shape, extent=[(0.0, 1.3 + a) for a in range(len(shape))], comm=comm)
        self.d = self.grid.decomp
        self.bk = make_backend("host")
        self.rng = np.random.default_rng(seed)
        nd = len(shape)
        self.inv_d = tuple(1.0 / h for h in self.grid.spacing)
        self.fixed_sides = fixed_sides
        wall, fixed = boundary_bits(self.d, {side: 0.0 for side in fixed_sides})
        self.geometry = {"inv_d": self.inv_d, "nl": tuple(self.d.local_shape), "wall": wall,
                         "fixed": fixed}
        self.lo, self.hi = (1,) * nd, tuple(n + 1 for n in self.d.local_shape)

    def cells(self, positive=False):
        """Random cell field: same global values on every rank, ghosts = neighbours' values."""
        g = self.rng.standard_normal(tuple(n + 2 for n in self.d.global_shape))
        if positive:
            g = np.exp(g)
        sl = tuple(slice(o, o + n + 2) for o, n in zip(self.d.offset, self.d.local_shape))
        return np.ascontiguousarray(g[sl])

    def faces(self, axis):
        """Random face field along ``axis``; padded index 0 unused (zero)."""
        gshape = list(self.d.global_shape)
        gshape[axis] += 1
        g = self.rng.standard_normal(tuple(n + 2 for n in gshape))
        out = np.zeros(self.d.padded_shape)
        sl = tuple(slice(o, o + n + 2) for o, n in zip(self.d.offset, self.d.local_shape))
        out[...] = g[sl]
        idx = [slice(None)] * self.d.ndim
        idx[axis] = 0
        out[tuple(idx)] = 0.0
        return out

    def zero_fixed_ghosts(self, a):
        """Ghost layers on fixed-pressure sides hold no unknown: zero in a Jacobian action."""
        for axis, side in self.fixed_sides:
            touches = self.d.at_upper_boundary(axis) if side else self.d.at_lower_boundary(axis)
            if touches:
                a[tuple((-1 if side else 0) if b == axis else slice(None)
                        for b in range(self.d.ndim))] = 0.0
        return a

    def dot_cells(self, a, b):
        own = self.d.owned()
        return self.d.comm.allreduce(float(np.sum(a[own] * b[own])), op=MPI.SUM)

    def dot_faces(self, a, b, axis):
        sl = owned_face_block(self.d, axis)[0]
        return self.d.comm.allreduce(float(np.sum(a[sl] * b[sl])), op=MPI.SUM)

    def kernel(self, k):
        return self.bk.kernel(k, self.d.ndim, np.float64)

    def launch(self, k, **arrays):
        """Launch ``k`` over the owned cells with named arrays and the grid geometry."""
        self.bk.launch(k.bind(**arrays, **self.geometry), (self.lo, self.hi))
        self.bk.sync()

    def zeros(self):
        return np.zeros(self.d.padded_shape)


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-300)


FIXED = {2: [(), ((0, 0),), ((0, 1), (1, 0))], 3: [(), ((2, 1),), ((0, 0), (1, 1), (2, 0))]}


def _flux_pair(shape, comm, wrt, fixed_sides=()):
    s = Setup(shape, comm, seed=len(shape) * 10 + ("Pf", "q", "K").index(wrt),
              fixed_sides=fixed_sides)
    nd = len(shape)
    fwd = s.kernel(R.flux_residual_kernel(nd))
    adj = s.kernel(R.flux_residual_adjoint_kernel(nd))
    K, P = s.cells(positive=True), s.cells()
    x_P, x_K = s.zero_fixed_ghosts(s.cells()), s.cells()
    x_q = [s.faces(a) for a in range(nd)]
    zero_q = [s.zeros() for _ in range(nd)]
    y = [s.faces(a) for a in range(nd)]
    Ax = [s.zeros() for _ in range(nd)]
    # the Jacobian action: Rq is linear in Pf (q = 0), in q (Pf = 0), in K (q = 0, Pf fixed)
    if wrt == "Pf":
        s.launch(fwd, Pf=x_P, K=K, q=zero_q, Rq=Ax)
    elif wrt == "q":
        s.launch(fwd, Pf=s.zeros(), K=K, q=x_q, Rq=Ax)
    else:
        s.launch(fwd, Pf=P, K=x_K, q=zero_q, Rq=Ax)
    lhs = sum(s.dot_faces(Ax[a], y[a], a) for a in range(nd))
    P_bar, K_bar = s.zeros(), s.zeros()
    q_bar = [s.zeros() for _ in range(nd)]
    s.launch(adj, Pf=P, K=K, Pf_bar=P_bar, K_bar=K_bar, Rq_bar=y, q_bar=q_bar)
    if wrt == "Pf":
        rhs = s.dot_cells(x_P, P_bar)
    elif wrt == "q":
        rhs = sum(s.dot_faces(x_q[a], q_bar[a], a) for a in range(nd))
    else:
        rhs = s.dot_cells(x_K, K_bar)
    return lhs, rhs


def _pressure_pair(shape, comm, fixed_sides=()):
    s = Setup(shape, comm, seed=7 + len(shape), fixed_sides=fixed_sides)
    nd = len(shape)
    fwd = s.kernel(R.pressure_residual_kernel(nd))
    adj = s.kernel(R.pressure_residual_adjoint_kernel(nd))
    x_q = [s.faces(a) for a in range(nd)]
    Ax = s.zeros()
    s.launch(fwd, q=x_q, Qf=s.zeros(), RPf=Ax)
    y = s.cells()
    HaloExchange(s.d, s.bk, np.float64).exchange(y)   # the adjoint reads neighbours' y
    s.bk.sync()
    q_bar = [s.zeros() for _ in range(nd)]
    s.launch(adj, RPf_bar=y, q_bar=q_bar)
    return s.dot_cells(Ax, y), sum(s.dot_faces(x_q[a], q_bar[a], a) for a in range(nd))


CASES = [(shape, fx) for shape in SHAPES for fx in FIXED[len(shape)]]


@pytest.mark.parametrize("shape,fixed_sides", CASES)
@pytest.mark.parametrize("wrt", ["Pf", "q", "K"])
def test_flux_residual_transposes(shape, fixed_sides, wrt):
    lhs, rhs = _flux_pair(shape, MPI.COMM_SELF, wrt, fixed_sides)
    assert abs(lhs) > 1e-3
    assert rel(lhs, rhs) < 1e-12


@pytest.mark.parametrize("shape,fixed_sides", CASES)
def test_pressure_residual_transpose(shape, fixed_sides):
    lhs, rhs = _pressure_pair(shape, MPI.COMM_SELF, fixed_sides)
    assert abs(lhs) > 1e-3
    assert rel(lhs, rhs) < 1e-12


def test_flux_residual_is_affine_in_q():
    """The forward kernel really computes q + Kf grad Pf (not just something self-consistent)."""
    s = Setup((6, 5), MPI.COMM_SELF)
    fwd = s.kernel(R.flux_residual_kernel(2))
    K, P = s.cells(positive=True), s.cells()
    q = [s.faces(a) for a in range(2)]
    Rq = [s.zeros(), s.zeros()]
    s.launch(fwd, Pf=P, K=K, q=q, Rq=Rq)
    Kf = 0.5 * (K[:-1, 1:-1] + K[1:, 1:-1])
    expect = q[0][1:, 1:-1] + Kf * np.diff(P[:, 1:-1], axis=0) * s.inv_d[0]
    expect[0], expect[-1] = 0.0, 0.0      # no-flux walls
    np.testing.assert_allclose(Rq[0][1:, 1:-1], expect, rtol=1e-14, atol=1e-14)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape,fixed_sides", CASES)
def test_transposes_distributed(shape, fixed_sides):
    comm = MPI.COMM_WORLD
    for wrt in ("Pf", "q", "K"):
        lhs, rhs = _flux_pair(shape, comm, wrt, fixed_sides)
        assert rel(lhs, rhs) < 1e-12, wrt
    lhs, rhs = _pressure_pair(shape, comm, fixed_sides)
    assert rel(lhs, rhs) < 1e-12
