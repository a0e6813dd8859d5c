"""Coarse-to-fine inversion (issue 12 item 3): the grid transfer operators (restriction by
averaging, piecewise-constant prolongation), their bitwise independence of the decompositions,
and inversions with ``inversion.levels`` (1 vs 2 ranks, restart, config errors).

Serial: ``pytest tests/test_levels.py``; MPI: ``mpiexec -n N python -m pytest --with-mpi -m mpi
tests/test_levels.py`` (N = 2, 3, 4).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.io import gather_cells
from hpcinv.parallel import Decomposition
from hpcinv.parallel.transfer import GridTransfer, coarse_index, coarse_shape

MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))
if not Path(MPIEXEC).exists():
    MPIEXEC = "mpiexec"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}


def _field(decomp, seed=0):
    """A random global field, this rank's padded block of it (the same global field for any
    split)."""
    g = np.random.default_rng(seed).standard_normal(decomp.global_shape)
    out = np.zeros(decomp.padded_shape)
    sl = tuple(slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape))
    out[decomp.owned()] = g[sl]
    return out, g


def _reference_restrict(g, cshape):
    """Numpy reference: mean of the fine cells whose centre lies in each coarse cell."""
    maps = [coarse_index(n, c) for n, c in zip(g.shape, cshape)]
    total, count = np.zeros(cshape), np.zeros(cshape)
    for idx in np.ndindex(*g.shape):
        c = tuple(int(m[i]) for m, i in zip(maps, idx))
        total[c] += g[idx]
        count[c] += 1
    return total / count


SHAPES = [((23, 13), 2), ((23, 13), 4), ((255, 127), 4), ((13, 7, 9), 2), ((12, 9, 7), 3),
          ((10, 6), 1)]


def test_coarse_shape_and_index():
    assert coarse_shape((255, 127), 4) == (64, 32)
    assert coarse_shape((255, 127), 4, "floor") == (63, 31)
    m = coarse_index(255, 64)
    assert m[0] == 0 and m[-1] == 63 and np.all(np.diff(m) >= 0)
    assert set(m.tolist()) == set(range(64))          # every coarse cell holds a fine centre
    with pytest.raises(ValueError):
        coarse_index(5, 6)


@pytest.mark.parametrize("shape,f", SHAPES)
def test_restriction_matches_numpy_and_keeps_constants(shape, f):
    comm = MPI.COMM_SELF
    fine = Decomposition(shape, comm)
    coarse = Decomposition(coarse_shape(shape, f), comm)
    T = GridTransfer(fine, coarse)
    a, g = _field(fine)
    r = T.restrict(a)
    own = coarse.owned()
    np.testing.assert_allclose(r[own], _reference_restrict(g, coarse.global_shape), rtol=1e-13,
                               atol=1e-14)
    ghosts = np.ones(r.shape, bool)
    ghosts[own] = False
    assert np.all(r[ghosts] == 0)
    for c in (0.0, 1.0, -2.5, np.log(1e-6)):
        const = np.zeros(fine.padded_shape)
        const[fine.owned()] = c
        rc = T.restrict(const)[own]
        np.testing.assert_allclose(rc, c, rtol=4e-16 * f ** len(shape), atol=0)
    zero = T.restrict(np.zeros(fine.padded_shape))
    assert np.all(zero == 0)


@pytest.mark.parametrize("shape,f", SHAPES)
def test_prolongation_then_restriction_is_the_identity(shape, f):
    """Piecewise constant: restricting the prolongation of a coarse field gives it back (each
    coarse average is of equal values; exact up to the division, here checked to 1 ulp)."""
    comm = MPI.COMM_SELF
    fine = Decomposition(shape, comm)
    coarse = Decomposition(coarse_shape(shape, f), comm)
    T = GridTransfer(fine, coarse)
    a, g = _field(coarse, seed=3)
    p = T.prolong(a)
    maps = [coarse_index(n, c) for n, c in zip(shape, coarse.global_shape)]
    np.testing.assert_array_equal(p[fine.owned()], g[np.ix_(*maps)])
    back = T.restrict(p)[coarse.owned()]
    np.testing.assert_allclose(back, g, rtol=1e-15 * np.prod([f] * len(shape)), atol=0)
    # powers of two: the average of equal values is exact
    a2 = np.zeros(coarse.padded_shape)
    a2[coarse.owned()] = np.round(g * 8) / 8
    if all(n % f == 0 for n in shape) and f in (1, 2, 4):
        np.testing.assert_array_equal(T.restrict(T.prolong(a2))[coarse.owned()],
                                      a2[coarse.owned()])


# --------------------------------------------------------------------------- MPI: bitwise

MPI_CASES = [((23, 13), (9, 5), None, None), ((64, 32), (16, 8), [1, 0], [0, 1]),
             ((13, 7, 9), (7, 4, 5), None, [1, 1, 0]), ((255, 127), (64, 32), [0, 1], None)]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fshape,cshape,fdims,cdims", MPI_CASES)
def test_transfer_bitwise_on_any_decomposition(fshape, cshape, fdims, cdims):
    """Restriction and prolongation on this run's ranks (two different splits for the fine and
    the coarse grid) equal, bit for bit, the single-rank result (rank 0 on COMM_SELF)."""
    world = MPI.COMM_WORLD
    size = world.Get_size()
    fd = None if fdims is None else [size if d == 0 else d for d in fdims]
    cd = None if cdims is None else [size if d == 0 else d for d in cdims]
    fd = fd if fd is None or int(np.prod(fd)) == size else None
    cd = cd if cd is None or int(np.prod(cd)) == size else None
    fine, coarse = Decomposition(fshape, world, fd), Decomposition(cshape, world, cd)
    T = GridTransfer(fine, coarse)
    a, _ = _field(fine, 1)
    b, _ = _field(coarse, 2)
    r = gather_cells(coarse, T.restrict(a))
    p = gather_cells(fine, T.prolong(b))
    if world.rank == 0:
        f1, c1 = Decomposition(fshape, MPI.COMM_SELF), Decomposition(cshape, MPI.COMM_SELF)
        T1 = GridTransfer(f1, c1)
        r1 = T1.restrict(_field(f1, 1)[0])[c1.owned()]
        p1 = T1.prolong(_field(c1, 2)[0])[f1.owned()]
        assert r.tobytes() == r1.tobytes()
        assert p.tobytes() == p1.tobytes()
