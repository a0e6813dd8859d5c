"""Kernel layer: argument validation, host compilation cache, box semantics, shell/interior
partition of a block, and the solver's divergence message."""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.backend import make_backend
from hpcinv.backend.host_compile import compile_library, host_source
from hpcinv.backend import KernelArgumentError
from hpcinv.backend.kernel import Kernel
from hpcinv.errors import BackendError
from hpcinv.errors import SolverDivergedError
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import DarcySolver, PTParams, solve_forward
from hpcinv.solvers.apt import next_check
from hpcinv.solvers.overlap import owned_box, shell_and_interior

# Writes a value identifying the cell (from ix, iy, iz) plus an offset, into the box only.
MARK = Kernel("test_mark_cells", ("A",), ("v",),
              "A[idx] = v + (real)(ix * 10000 + iy * 100 + iz) + (real)k;", ints=("k",),
              writes=("A",))


# --- Kernel argument validation ----------------------------------------------------------------
@pytest.mark.parametrize("arrays,scalars,ints", [
    (("i",), (), ()), (("A",), ("n",), ()), (("ix",), (), ()), (("A",), (), ("sx",)),
    (("idx",), (), ()), (("A", "real"), (), ()), (("_tmp",), (), ()), (("A",), ("nthreads",), ()),
    (("A",), ("ox",), ()), (("NDIM",), (), ()),
])
def test_kernel_rejects_reserved_names(arrays, scalars, ints):
    with pytest.raises(ValueError, match="reserved"):
        Kernel("k", arrays, scalars, "", ints=ints)


@pytest.mark.parametrize("arrays,scalars,ints", [
    (("A", "A"), (), ()), (("A",), ("A",), ()), (("A",), ("s",), ("s",)),
])
def test_kernel_rejects_duplicate_names(arrays, scalars, ints):
    with pytest.raises(ValueError, match="duplicate"):
        Kernel("k", arrays, scalars, "", ints=ints)


def test_kernel_accepts_ordinary_names_and_variants():
    k = Kernel("ok", ("A", "B"), ("alpha",), "A[idx] = B[idx];", ints=("m",))
    v = k.variant("x", FOO="1")
    assert v.name == "ok_x" and ("FOO", "1") in v.defines and v.body == k.body


# --- host compilation cache -----------------------------------------------------------------
def test_compile_twice_same_library(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(tmp_path))
    src = host_source(MARK, 2, np.float64)
    lib1 = compile_library(src)
    mtime = lib1.stat().st_mtime_ns
    lib2 = compile_library(src)
    assert lib1 == lib2 and lib1.exists()
    assert lib2.stat().st_mtime_ns == mtime          # not rebuilt
    assert tmp_path in lib1.parents                  # HPCINV_CACHE_DIR honoured
    assert [p.name for p in (tmp_path / "kernels").glob("*.so")] == [lib1.name]
    # a different source (3D, float32) is a different cache entry
    lib3 = compile_library(host_source(MARK, 3, np.float32))
    assert lib3 != lib1 and lib3.parent == lib1.parent
    # so are different flags
    monkeypatch.setenv("HPCINV_CXXFLAGS", "-DHPCINV_TEST_FLAG=1")
    lib4 = compile_library(src)
    assert lib4 != lib1 and lib4.exists()


def test_backend_compiles_into_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(tmp_path))
    bk = make_backend("host", threads=1)
    k1 = bk.kernel(MARK, 2, np.float64)
    assert bk.kernel(MARK, 2, np.float64) is k1    # in-memory cache
    libs = list((tmp_path / "kernels").glob("k_*.so"))
    assert len(libs) == 1
    A = np.zeros((3, 4))
    bk.launch(k1.bind(A=A, v=0.0, k=0), ((0, 0), (3, 4)))
    bk.sync()
    assert A[2, 3] == 20300.0 and A[0, 0] == 0.0


# --- box semantics -----------------------------------------------------------------------------
def _expected(shape, lo, hi, v, k):
    E = np.zeros(shape)
    for j in itertools.product(*[range(l, h) for l, h in zip(lo, hi)]):
        jz = j if len(j) == 3 else j + (0,)
        E[j] = v + jz[0] * 10000 + jz[1] * 100 + jz[2] + k
    return E


BOXES_2D = [((0, 0), (7, 5)), ((1, 1), (6, 4)), ((2, 3), (3, 4)), ((6, 0), (7, 5)),
            ((0, 4), (7, 5)), ((3, 1), (3, 4)), ((1, 2), (5, 2)), ((4, 4), (2, 2))]
BOXES_3D = [((0, 0, 0), (5, 4, 6)), ((1, 1, 1), (4, 3, 5)), ((4, 0, 2), (5, 4, 3)),
            ((0, 3, 5), (5, 4, 6)), ((2, 2, 2), (2, 3, 4)), ((1, 1, 4), (3, 3, 4)),
            ((3, 3, 3), (1, 1, 1))]


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("lo,hi", BOXES_2D + BOXES_3D)
def test_kernel_writes_exactly_the_box(lo, hi, nthreads):
    shape = (7, 5) if len(lo) == 2 else (5, 4, 6)
    bk = make_backend("host", threads=nthreads)
    k = bk.kernel(MARK, len(shape), np.float64)
    A = np.zeros(shape)
    bk.launch(k.bind(A=A, v=0.5, k=3), (lo, hi))
    bk.sync()
    E = _expected(shape, lo, hi, 0.5, 3)
    np.testing.assert_array_equal(A, E)
    ncells = math.prod(max(0, h - l) for l, h in zip(lo, hi))
    assert np.count_nonzero(A) == ncells


def test_kernel_float32_and_argument_checks(backend):
    k = backend.kernel(MARK, 2, np.float32)
    A = np.zeros((4, 3), dtype=np.float32)
    backend.launch(k.bind(A=A, v=0.25, k=0), ((1, 1), (3, 2)))
    backend.sync()
    assert A[1, 1] == np.float32(10100.25) and A[2, 1] == np.float32(20100.25)
    assert np.count_nonzero(A) == 2
    k64 = backend.kernel(MARK, 2, np.float64)
    with pytest.raises(KernelArgumentError, match="float64"):
        k64.bind(A=np.zeros((4, 3), dtype=np.float32), v=0.0, k=0)
    with pytest.raises(KernelArgumentError, match="contiguous"):
        k64.bind(A=np.zeros((3, 4)).T, v=0.0, k=0)
    two = Kernel("test_two_arrays", ("A", "B"), (), "A[idx] = B[idx + sx] - B[idx - sy];",
                 writes=("A",))
    k2 = backend.kernel(two, 2, np.float64)
    with pytest.raises(KernelArgumentError, match="shape"):
        k2.bind(A=np.zeros((4, 3)), B=np.zeros((3, 4)))
    B = np.arange(12.0).reshape(4, 3)
    A = np.zeros((4, 3))
    backend.launch(k2.bind(A=A, B=B), ((1, 1), (3, 3)))
    backend.sync()
    np.testing.assert_array_equal(A[1:3, 1:3], B[2:4, 1:3] - B[1:3, 0:2])


def test_undeclared_write_does_not_compile(backend):
    """A body that writes an array not declared in ``writes`` is rejected by the compiler
    (read-only arrays are const), so the stream checker's read/write sets cannot lie."""
    liar = Kernel("test_undeclared_write", ("A", "B"), (), "B[idx] = A[idx];", writes=("A",))
    with pytest.raises(BackendError, match="read-only"):
        backend.kernel(liar, 2, np.float64)


def test_strides_in_3d(backend):
    """sx, sy, sz are the flat strides of the padded array (neighbour access by flat index)."""
    lap = Kernel("test_neighbours_3d", ("A", "B"), (),
                 "A[idx] = B[idx + sx] + 10 * B[idx - sy] + 100 * B[idx + sz];", writes=("A",))
    k = backend.kernel(lap, 3, np.float64)
    B = np.random.default_rng(0).random((5, 4, 6))
    A = np.zeros_like(B)
    backend.launch(k.bind(A=A, B=B), ((1, 1, 1), (4, 3, 5)))
    backend.sync()
    expect = B[2:5, 1:3, 1:5] + 10 * B[1:4, 0:2, 1:5] + 100 * B[1:4, 1:3, 2:6]
    np.testing.assert_array_equal(A[1:4, 1:3, 1:5], expect)
    assert np.count_nonzero(A) == expect.size


@pytest.mark.parametrize("nthreads", [1, 2])
def test_one_launch_over_several_boxes(nthreads):
    """A multi-box launch covers exactly its boxes, and ``i_all`` numbers their cells box
    after box in row-major order (what the halo pack/unpack buffers rely on)."""
    bk = make_backend("host", threads=nthreads)
    number = Kernel("test_number_cells", ("A",), (), "A[idx] = (real)(1 + i_all + 1000 * ib);",
                    writes=("A",))
    k = bk.kernel(number, 3, np.float64)
    boxes = [((1, 1, 1), (2, 3, 4)), ((3, 0, 2), (5, 2, 3)), ((0, 3, 0), (1, 4, 6))]
    A = np.zeros((5, 4, 6))
    bk.launch(k.bind(A=A), boxes)
    bk.sync()
    expect, n = np.zeros_like(A), 0
    for b, (lo, hi) in enumerate(boxes):
        for j in itertools.product(*[range(l, h) for l, h in zip(lo, hi)]):
            n += 1
            expect[j] = n + 1000 * b
    np.testing.assert_array_equal(A, expect)
    assert bk.counters["kernels"] == 1


# --- shell and interior ------------------------------------------------------------------------
SIZES = [1, 2, 3, 4, 5]


@pytest.mark.parametrize("local", list(itertools.product(SIZES, SIZES))
                         + list(itertools.product([1, 2, 3, 6], repeat=3)))
def test_shell_and_interior_cover_owned_cells_once(local):
    padded = tuple(n + 2 for n in local)
    shell, interior = shell_and_interior(padded)
    lo_o, hi_o = owned_box(padded)
    assert lo_o == (1,) * len(local) and hi_o == tuple(n + 1 for n in local)
    count = np.zeros(padded, dtype=int)
    in_shell = np.zeros(padded, dtype=bool)
    for lo, hi in shell:
        sl = tuple(slice(l, h) for l, h in zip(lo, hi))
        assert all(h > l for l, h in zip(lo, hi)), "empty shell box listed"
        count[sl] += 1
        in_shell[sl] = True
    lo, hi = interior
    count[tuple(slice(l, max(l, h)) for l, h in zip(lo, hi))] += 1
    own = np.zeros(padded, dtype=bool)
    own[tuple(slice(1, -1) for _ in padded)] = True
    assert np.all(count[own] == 1), f"{local}: owned cells covered {np.unique(count[own])}"
    assert np.all(count[~own] == 0)
    # the shell is exactly the owned cells on a side of the block
    side = np.zeros(padded, dtype=bool)
    for a, n in enumerate(local):
        for i in (1, n):
            side[tuple(i if b == a else slice(1, -1) for b in range(len(local)))] = True
    np.testing.assert_array_equal(in_shell, side)


# --- divergence --------------------------------------------------------------------------------
@pytest.mark.parametrize("make,shape,cfl,ncheck,nonfinite", [
    (geothermal3d, (12, 10, 9), 1.0, 10, False),    # far above the 3D limit 1/sqrt(3)
    (geothermal2d, (24, 12), 0.75, 10, False),      # above 1/sqrt(2): grows over ~40-90 its
    (geothermal3d, (12, 10, 9), 1.0, 1000, True),   # first check long after overflow: NaN
])
def test_divergence_is_reported(make, shape, cfl, ncheck, nonfinite, backend):
    p = make(shape, comm=MPI.COMM_SELF)
    with pytest.raises(SolverDivergedError) as exc:
        solve_forward(p, backend, PTParams(cfl=cfl, re=2 * math.pi, tol=1e-8, ncheck=ncheck,
                                           first_check=ncheck, maxiter=100000))
    msg = str(exc.value)
    m = re.search(r"iteration (\d+)", msg)
    assert m, msg
    it = int(m.group(1))
    assert it % ncheck == 0 and it < 100000
    assert "smaller" in msg and "cfl" in msg
    assert "\n" not in msg
    if nonfinite:
        assert it == ncheck and re.search(r"\b(nan|inf)\b", msg), msg
    else:
        assert it < 1000


def test_stable_cfl_does_not_diverge(backend):
    """Control for the test above: the same problem with the default cfl converges."""
    p = geothermal3d((12, 10, 9), comm=MPI.COMM_SELF)
    s = solve_forward(p, backend, PTParams(tol=1e-8, ncheck=10))
    assert s.result.converged and np.all(np.isfinite(s.Pf))


# --- residual checks ---------------------------------------------------------------------------
def test_checks_follow_the_schedule_and_leave_the_iterates_alone(backend):
    """Checks come at first_check, then a quarter of the iterations done later (at most
    ncheck); the solve stops at the first check below tol; and a check (the step kernel with the
    residual written) changes no iterate: 300 iterations checked at every one or every 100 give
    the same bits."""
    p = geothermal2d((24, 12), comm=MPI.COMM_SELF)
    res = solve_forward(p, backend, PTParams(tol=1e-8, ncheck=50, first_check=8)).result
    due = [next_check(0, 50, 8)]
    while due[-1] < res.iterations:
        due.append(next_check(due[-1], 50, 8))
    assert due[:6] == [8, 16, 24, 32, 40, 50] and next_check(400, 50, 8) == 450
    assert [it for it, _ in res.history] == due
    assert res.converged and all(r >= 1e-8 for _, r in res.history[:-1])
    P = []
    for ncheck in (1, 100):
        s = DarcySolver(p.copy(), backend, PTParams(tol=1e-30, maxiter=300, ncheck=ncheck,
                                                    first_check=ncheck))
        st = s.solve()
        assert st.result.iterations == 300 and len(st.result.history) == 300 // ncheck
        P.append(backend.to_host(st.Pf).copy())
    np.testing.assert_array_equal(P[0], P[1])
