"""Cartesian domain decomposition of a global grid of cells over MPI ranks.

Global sizes need not divide evenly: along each dimension the local sizes differ by at most one
cell (the first ``n % p`` ranks get one more). Cell-centred local arrays carry one ghost layer,
so a local array has the *padded* shape ``local_shape + 2``; owned cells are ``[1:-1]`` along
every axis, and padded index ``j`` holds global cell ``offset + j - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

from mpi4py import MPI

from ..errors import DecompositionError


def split_extent(n: int, p: int, c: int) -> tuple[int, int]:
    """``(size, offset)`` of block ``c`` when ``n`` cells are split into ``p`` near-equal blocks."""
    base, rem = divmod(n, p)
    return base + (1 if c < rem else 0), c * base + min(c, rem)


@dataclass
class _Dim:
    n_global: int
    n_local: int
    offset: int
    lo: int   # rank of the lower neighbour (MPI.PROC_NULL if none)
    hi: int


def _fitting_dims(size: int, shape) -> list | None:
    """Ranks per dimension, multiplying to ``size``, with no more ranks than cells along any
    dimension (``None``: there is none)."""
    if len(shape) == 1:
        return [size] if size <= shape[0] else None
    for p in range(min(size, shape[0]), 0, -1):
        rest = _fitting_dims(size // p, shape[1:]) if size % p == 0 else None
        if rest is not None:
            return [p, *rest]
    return None


class Decomposition:
    """The Cartesian split of a global grid of cells over the ranks of ``comm``.

    Args:
        shape: global number of cells per dimension, ``(nx, ny)`` or ``(nx, ny, nz)``.
        comm: communicator (default ``MPI.COMM_WORLD``).
        dims: ranks per dimension; ``None`` or zeros are filled by ``MPI.Compute_dims``.
        periods: periodic flags per dimension (halo tests; the physics uses non-periodic).
    """

    def __init__(self, shape, comm=None, dims=None, periods=None):
        comm = MPI.COMM_WORLD if comm is None else comm
        shape = tuple(int(n) for n in shape)
        ndim = len(shape)
        if ndim not in (2, 3):
            raise DecompositionError(f"grid must be 2D or 3D, got shape {shape}")
        size = comm.Get_size()
        if dims is None:
            dims = [0] * ndim
        dims = [int(d) for d in dims]
        if len(dims) != ndim or any(d < 0 for d in dims):
            raise DecompositionError(f"dims {dims} must be {ndim} non-negative integers")
        fixed = 1
        for d in dims:
            fixed *= d if d > 0 else 1
        if all(d > 0 for d in dims) and fixed != size:
            raise DecompositionError(
                f"dims {dims} multiply to {fixed}, but {size} MPI rank(s) are running")
        if size % fixed:
            raise DecompositionError(f"dims {dims} do not divide the {size} MPI rank(s)")
        given, dims = dims, MPI.Compute_dims(size, dims)
        for ax, (n, p) in enumerate(zip(shape, dims)):
            if p > n:
                other = _fitting_dims(size, shape)
                fix = (f"dims {given} asks for them; give at most {n} along {'xyz'[ax]}"
                       if given[ax] > 0 else f"use fewer ranks, or set dims = {other}"
                       if other else "use fewer ranks")
                raise DecompositionError(
                    f"more ranks than cells along dimension {'xyz'[ax]}: {p} ranks for {n} cells"
                    f" ({fix})")
        periods = [False] * ndim if periods is None else [bool(p) for p in periods]
        self.comm = comm.Create_cart(dims, periods=periods, reorder=False)
        self.rank = self.comm.Get_rank()
        self.size = size
        self.dims = tuple(dims)
        self.periods = tuple(periods)
        self.coords = tuple(self.comm.Get_coords(self.rank))
        self._d = []
        for ax in range(ndim):
            nl, off = split_extent(shape[ax], dims[ax], self.coords[ax])
            lo, hi = self.comm.Shift(ax, 1)
            self._d.append(_Dim(shape[ax], nl, off, lo, hi))
        self.ndim = ndim
        self.global_shape = shape
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.node_ranks = node.Get_size()     # ranks sharing this node (and its cores)
        node.Free()

    # --- sizes and index maps ------------------------------------------------------------
    @property
    def local_shape(self) -> tuple[int, ...]:
        """Owned cells per dimension on this rank."""
        return tuple(d.n_local for d in self._d)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Shape of a local cell-centred array with one ghost layer on each side."""
        return tuple(d.n_local + 2 for d in self._d)

    @property
    def offset(self) -> tuple[int, ...]:
        """Global index of this rank's first owned cell, per dimension."""
        return tuple(d.offset for d in self._d)

    def neighbours(self, axis: int) -> tuple[int, int]:
        """Ranks of the lower and upper neighbours along ``axis`` (``MPI.PROC_NULL`` if none)."""
        d = self._d[axis]
        return d.lo, d.hi

    def at_lower_boundary(self, axis: int) -> bool:
        """True if this rank's block touches the lower physical boundary along ``axis``."""
        return self.coords[axis] == 0 and not self.periods[axis]

    def at_upper_boundary(self, axis: int) -> bool:
        return self.coords[axis] == self.dims[axis] - 1 and not self.periods[axis]

    @property
    def has_neighbours(self) -> bool:
        """True if any halo message must be exchanged (periodic self-neighbours count)."""
        return any(p != MPI.PROC_NULL for d in self._d for p in (d.lo, d.hi))

    def owned(self) -> tuple[slice, ...]:
        """Slices of the owned cells in a padded local array."""
        return tuple(slice(1, d.n_local + 1) for d in self._d)

    def global_to_local(self, index) -> tuple[int, ...] | None:
        """Padded local index of a global cell index, or ``None`` if another rank owns it."""
        out = []
        for g, d in zip(index, self._d):
            j = int(g) - d.offset
            if not 0 <= j < d.n_local:
                return None
            out.append(j + 1)
        return tuple(out)

    def local_to_global(self, index) -> tuple[int, ...]:
        """Global cell index of a padded local index (ghost indices map outside the block)."""
        return tuple(int(j) - 1 + d.offset for j, d in zip(index, self._d))

    def owner(self, index) -> int:
        """Rank owning a global cell index."""
        coords = []
        for ax, g in enumerate(index):
            n, p = self.global_shape[ax], self.dims[ax]
            base, rem = divmod(n, p)
            big = rem * (base + 1)
            coords.append(g // (base + 1) if g < big else rem + (g - big) // base)
        return self.comm.Get_cart_rank(coords)

    def describe(self) -> dict:
        return {"ranks": self.size, "dims": list(self.dims), "global_shape": list(self.global_shape),
                "local_shape": list(self.local_shape), "offset": list(self.offset)}
