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


#: Tests that must stay slow (whole inversions in subprocesses on several ranks, SIGKILL and
#: SIGTERM restarts, the full demo): they carry the ``slow`` marker, ``tests/run_all.sh`` (the
#: README's test command) leaves them out and ``tests/run_slow.sh`` runs them (CI runs both).
#: Keys are node ids without parameters (every case) or with them (that case only).
SLOW = {
    "tests/test_inversion.py::test_sigkill_and_restart_on_other_rank_counts",
    "tests/test_inversion.py::test_workshop_demo_recovers_the_barrier",
    "tests/test_inversion.py::test_histories_and_models_identical_on_1_and_4_ranks",
    "tests/test_adaptive.py::test_adaptive_bitwise_on_1_and_2_ranks_and_across_a_restart",
    "tests/test_rundir.py::test_sigterm_before_the_first_checkpoint_is_restartable",
    "tests/test_rundir.py::test_sigterm_once_the_lock_is_taken",
    "tests/test_rundir.py::test_sigterm_at_once_leaves_nothing_or_a_rerunnable_directory",
    "tests/test_rundir.py::test_sigterm_under_two_ranks_before_the_loop",
    "tests/test_rundir.py::test_forward_and_gradient_refuse_an_existing_run_without_overwrite",
    "tests/test_rundir.py::test_no_command_writes_into_another_commands_directory",
    "tests/test_rundir.py::test_overwrite_removes_what_the_old_run_wrote_and_nothing_else",
    "tests/test_levels.py::test_levels_bitwise_on_1_and_2_ranks",
    "tests/test_levels.py::test_restart_with_levels_is_bitwise",
    "tests/test_cupy_standin_cli.py::test_cli_inversion_bitwise_equal_to_host",
    "tests/test_cupy_standin_cli.py::test_selftest_full_under_the_standin",
    "tests/test_example_nn.py::test_same_history_on_1_and_2_ranks",
    "tests/test_selftest.py::test_stream_checker_run_passes",
    "tests/test_doc_snippets.py::test_snippet_runs",
}


def pytest_collection_modifyitems(config, items):
    """Mark the :data:`SLOW` tests ``slow``; a test cannot be both ``slow`` and ``mpi`` (the MPI
    stages run every ``mpi`` test)."""
    for item in items:
        nodeid = item.nodeid if item.nodeid.startswith("tests/") else f"tests/{item.nodeid}"
        if nodeid in SLOW or nodeid.split("[")[0] in SLOW:
            if item.get_closest_marker("mpi") is not None:
                raise pytest.UsageError(f"{nodeid}: an mpi test cannot be in conftest.SLOW")
            item.add_marker(pytest.mark.slow)


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
