"""Cartesian decomposition: uneven splits, index maps, owner(), errors (serial and MPI)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.errors import ConfigError, DecompositionError
from hpcinv.model.grid import Grid
from hpcinv.parallel import Decomposition, split_extent


# --- split_extent (pure) ----------------------------------------------------------------------
@pytest.mark.parametrize("n,p", [(n, p) for n in (1, 2, 3, 5, 7, 10, 31, 64, 127, 255)
                                 for p in (1, 2, 3, 4, 5, 8) if p <= n])
def test_split_extent_tiles(n, p):
    blocks = [split_extent(n, p, c) for c in range(p)]
    sizes = [s for s, _ in blocks]
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= 1
    # contiguous, ordered, first blocks are the larger ones
    off = 0
    for s, o in blocks:
        assert o == off
        off += s
    assert sizes == sorted(sizes, reverse=True)


# --- a fake communicator: error paths that fail before Create_cart, and owner() arithmetic ---
class FakeComm:
    """Enough of an MPI communicator to reach Decomposition's checks on one process."""

    def __init__(self, size):
        self.size = size

    def Get_size(self):
        return self.size

    def Create_cart(self, *a, **k):  # pragma: no cover - must never be reached
        raise AssertionError("Create_cart reached: the input error was not detected")


@pytest.mark.parametrize("size,dims", [(4, (3, 1)), (4, (2, 3)), (6, (4, 0)), (2, (1, 1)),
                                       (8, (2, 2, 3)), (3, (2, 0, 0))])
def test_dims_not_matching_rank_count(size, dims):
    shape = (16,) * len(dims)
    with pytest.raises(DecompositionError, match=r"dims"):
        Decomposition(shape, comm=FakeComm(size), dims=dims)


@pytest.mark.parametrize("shape,size,dims,axis", [((3, 10), 4, (4, 1), "x"),
                                                  ((10, 2), 3, (1, 3), "y"),
                                                  ((5, 5, 2), 4, (1, 1, 4), "z"),
                                                  ((2, 2), 16, None, "x")])
def test_more_ranks_than_cells(shape, size, dims, axis):
    with pytest.raises(DecompositionError, match=f"more ranks than cells along dimension {axis}"):
        Decomposition(shape, comm=FakeComm(size), dims=dims)


@pytest.mark.parametrize("dims", [(-1, 1), (1, 1, 1)])
def test_bad_dims(dims):
    with pytest.raises(DecompositionError):
        Decomposition((8, 8), comm=MPI.COMM_SELF, dims=dims)


def test_bad_ndim():
    with pytest.raises(DecompositionError):
        Decomposition((8,), comm=MPI.COMM_SELF)
    with pytest.raises(DecompositionError):
        Decomposition((4, 4, 4, 4), comm=MPI.COMM_SELF)


@pytest.mark.parametrize("shape", [(2, 5), (5, 1), (4, 4, 0)])
def test_grid_rejects_small_sizes(shape):
    with pytest.raises(ConfigError):
        Grid(shape, comm=MPI.COMM_SELF)


class _CartRank:
    def Get_cart_rank(self, coords):
        return tuple(coords)


@pytest.mark.parametrize("shape,dims", [((10,), (3,)), ((7, 5), (4, 2)), ((31, 17, 9), (5, 3, 2)),
                                         ((8, 8), (8, 1)), ((9, 6, 5), (2, 3, 5))])
def test_owner_arithmetic_matches_split_extent(shape, dims):
    """owner()'s closed form agrees with split_extent for every cell (fake cart rank = coords)."""
    d = Decomposition.__new__(Decomposition)
    d.global_shape, d.dims, d.comm = tuple(shape), tuple(dims), _CartRank()
    for g in itertools.product(*[range(n) for n in shape]):
        expect = []
        for ax, gi in enumerate(g):
            for c in range(dims[ax]):
                s, o = split_extent(shape[ax], dims[ax], c)
                if o <= gi < o + s:
                    expect.append(c)
        assert d.owner(g) == tuple(expect)


# --- one rank --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 5), (4, 6, 3)])
def test_single_rank_maps(shape):
    d = Decomposition(shape, comm=MPI.COMM_SELF)
    assert d.dims == (1,) * len(shape)
    assert d.local_shape == shape and d.offset == (0,) * len(shape)
    assert d.padded_shape == tuple(n + 2 for n in shape)
    assert not d.has_neighbours
    for ax in range(len(shape)):
        assert d.neighbours(ax) == (MPI.PROC_NULL, MPI.PROC_NULL)
        assert d.at_lower_boundary(ax) and d.at_upper_boundary(ax)
    for g in itertools.product(*[range(n) for n in shape]):
        loc = d.global_to_local(g)
        assert loc == tuple(i + 1 for i in g)
        assert d.local_to_global(loc) == g
        assert d.owner(g) == 0
    assert d.global_to_local((-1,) + (0,) * (len(shape) - 1)) is None
    assert d.global_to_local((shape[0],) + (0,) * (len(shape) - 1)) is None
    a = np.zeros(d.padded_shape)
    a[d.owned()] = 1
    assert a.sum() == np.prod(shape) and a[(0,) * len(shape)] == 0


def test_periodic_single_rank_is_its_own_neighbour():
    d = Decomposition((5, 4, 3), comm=MPI.COMM_SELF, periods=(True, False, True))
    assert d.neighbours(0) == (0, 0) and d.neighbours(2) == (0, 0)
    assert d.neighbours(1) == (MPI.PROC_NULL, MPI.PROC_NULL)
    assert d.has_neighbours
    assert not d.at_lower_boundary(0) and d.at_lower_boundary(1)


def test_grid_coordinates():
    g = Grid((4, 5), extent=((-1, 1), (0, 10)), comm=MPI.COMM_SELF)
    assert g.spacing == (0.5, 2.0)
    np.testing.assert_allclose(g.global_centres(0), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(g.centres(1), [-1, 1, 3, 5, 7, 9, 11])   # ghosts included


# --- MPI -------------------------------------------------------------------------------------
SHAPES = [(13, 7), (5, 11), (9, 7, 5), (4, 5, 7)]


def _layouts(ndim, size):
    out = [None, (size,) + (1,) * (ndim - 1), (1,) * (ndim - 1) + (size,), (0,) * (ndim - 1) + (1,)]
    return out


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", range(4))
def test_mpi_blocks_tile_the_grid(shape, layout):
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    dims = _layouts(len(shape), size)[layout]
    if dims is not None and any(p > n for p, n in zip(dims, shape)):
        with pytest.raises(DecompositionError, match="more ranks than cells"):
            Decomposition(shape, comm=comm, dims=dims)
        return
    d = Decomposition(shape, comm=comm, dims=dims)
    assert int(np.prod(d.dims)) == size and d.size == size
    if dims is not None:
        assert all(a == b for a, b in zip(d.dims, dims) if b)
    # local sizes match split_extent and differ by at most one across ranks
    for ax in range(d.ndim):
        assert (d.local_shape[ax], d.offset[ax]) == split_extent(shape[ax], d.dims[ax],
                                                                 d.coords[ax])
    all_shapes = np.array(comm.allgather(d.local_shape))
    assert np.all(all_shapes.max(axis=0) - all_shapes.min(axis=0) <= 1)
    # every global cell is owned by exactly one rank, and owner() names it on every rank
    count = np.zeros(shape, dtype=int)
    sl = tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))
    count[sl] = 1
    total = np.zeros_like(count)
    comm.Allreduce(count, total, op=MPI.SUM)
    assert np.all(total == 1)
    owners = np.full(shape, -1)
    owners[sl] = d.rank
    all_owners = np.zeros_like(owners)
    comm.Allreduce(owners + 1, all_owners, op=MPI.SUM)
    for g in itertools.product(*[range(n) for n in shape]):
        assert d.owner(g) == all_owners[g] - 1
        loc = d.global_to_local(g)
        if all_owners[g] - 1 == d.rank:
            assert loc is not None and d.local_to_global(loc) == g
            assert all(1 <= j <= n for j, n in zip(loc, d.local_shape))
        else:
            assert loc is None
    # neighbours: the upper neighbour starts where this block ends, walls have none
    for ax in range(d.ndim):
        lo, hi = d.neighbours(ax)
        info = comm.allgather((d.offset, d.local_shape))
        if hi != MPI.PROC_NULL:
            assert info[hi][0][ax] == d.offset[ax] + d.local_shape[ax]
            assert not d.at_upper_boundary(ax)
        else:
            assert d.offset[ax] + d.local_shape[ax] == shape[ax] and d.at_upper_boundary(ax)
        if lo != MPI.PROC_NULL:
            assert info[lo][0][ax] + info[lo][1][ax] == d.offset[ax]
        else:
            assert d.offset[ax] == 0 and d.at_lower_boundary(ax)


@pytest.mark.mpi(min_size=2)
def test_mpi_wrong_dims():
    size = MPI.COMM_WORLD.Get_size()
    with pytest.raises(DecompositionError, match="multiply to"):
        Decomposition((16, 16), comm=MPI.COMM_WORLD, dims=(size + 1, 1))
    with pytest.raises(DecompositionError, match="more ranks than cells along dimension x"):
        Decomposition((size - 1, 16), comm=MPI.COMM_WORLD, dims=(size, 1))
    with pytest.raises(DecompositionError, match="more ranks than cells along dimension y"):
        Decomposition((16, size - 1, 4), comm=MPI.COMM_WORLD, dims=(1, 0, 1))
