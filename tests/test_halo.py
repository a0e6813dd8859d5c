"""Split-phase halo exchange: ghosts equal the neighbour's owned layer after finish()."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.parallel import Decomposition, HaloExchange

SENTINEL = -12345.0


def global_value(g, shape):
    """A distinct value per global cell index (wrapped periodically for the expectation)."""
    g = [gi % n for gi, n in zip(g, shape)]
    return 1.0 + sum(gi * 1000.0 ** (len(shape) - 1 - a) for a, gi in enumerate(g))


def filled_field(d):
    """Padded local field: owned cells = global_value(global index), ghosts = SENTINEL."""
    f = np.full(d.padded_shape, SENTINEL)
    for j in itertools.product(*[range(1, n + 1) for n in d.local_shape]):
        f[j] = global_value(d.local_to_global(j), d.global_shape)
    return f


def check_ghosts(d, f):
    """Every face ghost holds the value of the global cell it mirrors (periodic wrap) where a
    neighbour exists, the SENTINEL at physical walls; edges/corners are never written."""
    nd = d.ndim
    n_checked = 0
    for j in itertools.product(*[range(n) for n in d.padded_shape]):
        ghost_axes = [a for a in range(nd) if j[a] in (0, d.padded_shape[a] - 1)]
        if not ghost_axes:
            assert f[j] == global_value(d.local_to_global(j), d.global_shape)
            continue
        if len(ghost_axes) > 1:
            assert f[j] == SENTINEL, f"edge/corner ghost {j} written"
            continue
        a = ghost_axes[0]
        side = 0 if j[a] == 0 else 1
        nb = d.neighbours(a)[side]
        if nb == MPI.PROC_NULL:
            assert f[j] == SENTINEL, f"wall ghost {j} overwritten"
        else:
            expect = global_value(d.local_to_global(j), d.global_shape)
            assert f[j] == expect, f"ghost {j} axis {a} side {side}: {f[j]} != {expect}"
            n_checked += 1
    return n_checked


# --- one rank, periodic self-neighbour --------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 5), (1, 4), (3, 1), (5, 4, 3), (1, 3, 2), (4, 1, 1)])
def test_periodic_self_neighbour(shape, backend):
    nd = len(shape)
    d = Decomposition(shape, comm=MPI.COMM_SELF, periods=(True,) * nd)
    h = HaloExchange(d, backend, np.float64)
    assert h.active
    f = filled_field(d)
    h.start(f)
    h.finish()
    h.backend.sync()   # the unpack runs on the compute stream
    # ghost layers equal the owned opposite layers, for every face
    for a in range(nd):
        def layer(i):
            return f[tuple(i if b == a else slice(1, -1) for b in range(nd))]
        np.testing.assert_array_equal(layer(0), layer(-2))
        np.testing.assert_array_equal(layer(-1), layer(1))
    n = check_ghosts(d, f)
    assert n == sum(2 * np.prod(shape) // shape[a] for a in range(nd))


def test_periodic_mixed_axes(backend):
    """Periodic along x and z only: y walls stay untouched."""
    d = Decomposition((4, 3, 5), comm=MPI.COMM_SELF, periods=(True, False, True))
    h = HaloExchange(d, backend, np.float64)
    f = filled_field(d)
    h.exchange(f)
    h.backend.sync()   # the unpack runs on the compute stream
    assert np.all(f[1:-1, 0, 1:-1] == SENTINEL) and np.all(f[1:-1, -1, 1:-1] == SENTINEL)
    assert check_ghosts(d, f) == 2 * 3 * 5 + 2 * 4 * 3


def test_non_periodic_single_rank_is_inactive(backend):
    d = Decomposition((5, 4), comm=MPI.COMM_SELF)
    h = HaloExchange(d, backend, np.float64)
    assert not h.active
    f = filled_field(d)
    ref = f.copy()
    h.exchange(f)
    h.backend.sync()   # the unpack runs on the compute stream
    np.testing.assert_array_equal(f, ref)


def test_start_twice_raises(backend):
    d = Decomposition((4, 4), comm=MPI.COMM_SELF, periods=(True, True))
    h = HaloExchange(d, backend, np.float64)
    f = filled_field(d)
    h.start(f)
    with pytest.raises(RuntimeError):
        h.start(f)
    h.finish()
    h.backend.sync()   # the unpack runs on the compute stream
    assert check_ghosts(d, f) > 0
    with pytest.raises(RuntimeError, match="without start"):   # a lifecycle error, not a no-op
        h.finish()


def test_send_buffers_are_packed_at_start(backend):
    """Values sent are those at start(): changing owned cells before finish() (the interior
    update in the overlapped loop) does not leak into the ghosts."""
    d = Decomposition((5, 4), comm=MPI.COMM_SELF, periods=(True, True))
    h = HaloExchange(d, backend, np.float64)
    f = filled_field(d)
    h.start(f)
    f[1:-1, 1:-1] += 0.5
    h.finish()
    h.backend.sync()   # the unpack runs on the compute stream
    np.testing.assert_array_equal(f[0, 1:-1], f[-2, 1:-1] - 0.5)
    np.testing.assert_array_equal(f[1:-1, -1], f[1:-1, 1] - 0.5)


def test_float32(backend):
    d = Decomposition((3, 4, 2), comm=MPI.COMM_SELF, periods=(True, True, True))
    h = HaloExchange(d, backend, np.float32)
    f = filled_field(d).astype(np.float32)
    h.exchange(f)
    h.backend.sync()   # the unpack runs on the compute stream
    np.testing.assert_array_equal(f[0, 1:-1, 1:-1], f[-2, 1:-1, 1:-1])
    np.testing.assert_array_equal(f[1:-1, 1:-1, -1], f[1:-1, 1:-1, 1])


# --- MPI ---------------------------------------------------------------------------------------
MPI_CASES = [((9, 7), None), ((7, 10), "y"), ((11, 5), "x"), ((5, 7, 6), None),
             ((6, 5, 7), "z"), ((5, 4, 9), "x")]


def _dims(nd, along, size):
    if along is None:
        return None
    dims = [1] * nd
    dims["xyz".index(along)] = size
    return dims


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("shape,along", MPI_CASES)
def test_mpi_ghosts_equal_neighbour_owned(shape, along, periodic, backend):
    comm = MPI.COMM_WORLD
    nd = len(shape)
    d = Decomposition(shape, comm=comm, dims=_dims(nd, along, comm.Get_size()),
                      periods=(periodic,) * nd)
    h = HaloExchange(d, backend, np.float64)
    f = filled_field(d)
    h.start(f)
    h.finish()
    h.backend.sync()   # the unpack runs on the compute stream
    n = check_ghosts(d, f)
    # something was really exchanged somewhere, and on every rank with a neighbour
    total = comm.allreduce(n, op=MPI.SUM)
    assert total > 0
    if d.has_neighbours:
        assert n > 0
    # exchanges are repeatable (buffers reused, tags consistent)
    f2 = filled_field(d) * 2.0
    f2[f2 == 2 * SENTINEL] = SENTINEL
    h.exchange(f2)
    h.backend.sync()   # the unpack runs on the compute stream
    own = d.owned()
    assert np.all(f2[own] == 2 * f[own])
    for a in range(nd):
        for side, i in ((0, 0), (1, -1)):
            if d.neighbours(a)[side] != MPI.PROC_NULL:
                idx = tuple(i if b == a else slice(1, -1) for b in range(nd))
                np.testing.assert_array_equal(f2[idx], 2 * f[idx])


@pytest.mark.mpi(min_size=2)
def test_mpi_two_fields_in_flight(backend):
    """Two exchangers on two fields in flight at once (start, start, finish, finish) do not mix
    their messages up (MPI's non-overtaking order matches them)."""
    comm = MPI.COMM_WORLD
    d = Decomposition((8, 6, 5), comm=comm)
    h1 = HaloExchange(d, backend, np.float64)
    h2 = HaloExchange(d, backend, np.float64)
    f1 = filled_field(d)
    f2 = filled_field(d)
    f2[d.owned()] *= -1.0
    h1.start(f1)
    h2.start(f2)
    h1.finish()
    h2.finish()
    h2.backend.sync()   # the unpack runs on the compute stream
    check_ghosts(d, f1)
    for a in range(d.ndim):
        for side, i in ((0, 0), (1, -1)):
            if d.neighbours(a)[side] != MPI.PROC_NULL:
                idx = tuple(i if b == a else slice(1, -1) for b in range(d.ndim))
                np.testing.assert_array_equal(f2[idx], -f1[idx])
