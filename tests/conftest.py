"""Shared fixtures and helpers for the hpcinv test suite."""
from __future__ import annotations

import os

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.backend import make_backend
from hpcinv.model.grid import Grid
from hpcinv.model.problems import Problem

if os.environ.get("HPCINV_CUPY_STANDIN") == "1":   # CuPy on the CPU (tests/cupy_standin, issue
    import cupy_standin                             # 19): `import cupy` gets the stand-in;
    cupy_standin.install()                          # never in a user's run


class _FailuresOnly:
    """Stands in for the terminal reporter on ranks > 0: prints a failure's report only."""

    def __init__(self, rank):
        self.rank = rank

    def pytest_runtest_logreport(self, report):
        if report.failed:
            print(f"\n[rank {self.rank}] FAILED {report.nodeid} ({report.when})\n"
                  f"{report.longreprtext}", flush=True)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Under ``mpiexec ... pytest --with-mpi`` only rank 0 reports progress and the summary;
    the other ranks print their failures only (each rank's result still sets the exit status)."""
    rank = MPI.COMM_WORLD.Get_rank()
    if config.getoption("with_mpi", default=False) and rank > 0:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)
        config.pluginmanager.register(_FailuresOnly(rank), "hpcinv-failures-only")


@pytest.fixture(scope="session")
def backend():
    """One host backend for the session (kernels compiled once, cached on disk).

    One OpenMP thread: the CI machine has 2 cores, the MPI runs use up to 4 ranks, and an
    OpenMP team whose threads get descheduled makes the ~10^4 short iterations of the
    high-contrast solves crawl (measured: 0.25 s -> 15 s under load). Multi-threaded kernels
    are covered explicitly (test_kernels: box semantics with 2 threads; test_invariance:
    1 and 2 threads give identical bits).
    """
    return make_backend("host", threads=1)


def owned(a: np.ndarray) -> np.ndarray:
    """Owned cells of a padded local array (one ghost layer)."""
    return a[tuple(slice(1, -1) for _ in range(a.ndim))]


def owned_faces(q: np.ndarray, axis: int) -> np.ndarray:
    """All ``n_axis + 1`` faces along ``axis`` of a padded single-rank face array."""
    sl = [slice(1, -1)] * q.ndim
    sl[axis] = slice(1, q.shape[axis])
    return q[tuple(sl)]


def problem_from_global(name, K_global, Qf_global, extent=None, comm=None, dims=None) -> Problem:
    """A :class:`Problem` whose owned cells are taken from global K and Qf arrays."""
    K_global = np.asarray(K_global, dtype=np.float64)
    grid = Grid(K_global.shape, extent, comm=comm if comm is not None else MPI.COMM_SELF,
                dims=dims)
    d = grid.decomp
    sl = tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))
    K = np.zeros(d.padded_shape)
    Qf = np.zeros(d.padded_shape)
    K[d.owned()] = K_global[sl]
    Qf[d.owned()] = np.asarray(Qf_global, dtype=np.float64)[sl]
    return Problem(name, grid, K, Qf)


def global_fields(problem):
    """(K, Qf) as global arrays of a single-rank problem."""
    assert problem.grid.decomp.size == 1
    return owned(problem.K).copy(), owned(problem.Qf).copy()
