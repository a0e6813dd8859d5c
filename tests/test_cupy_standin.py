"""The CuPy backend's own code (``CupyBackend``, ``backend/cuda_compile.py``) run on the CPU
stand-in of ``tests/cupy_standin`` (issue 19): it constructs, its results are bitwise the host
backend's (forward, gradient, 3 GD steps; overlap on and off; staged and CUDA-aware halos;
1 rank here, 2-4 ranks in the MPI tests), CuPy's preconditions are enforced, and a missing sync
before MPI or a missing event wait is reported as a named :class:`StreamRaceError`.

What the stand-in cannot show (a real GPU must): NVRTC's own parsing and options (``-ftz``,
``-fmad`` on device), device timing and occupancy, the driver, CuPy's own reductions (their
summation order), and MPI reading real device pointers.
"""
from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest
from mpi4py import MPI

import cupy_standin
from cupy_standin import StreamRaceError
from cupy_standin.mpi_spy import spy_on_halos
from hpcinv.backend import make_backend
from hpcinv.backend.cupy_backend import CupyBackend
from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.inverse.optimise import GradientDescent, OptimiserSettings
from hpcinv.inverse.regularisation import GradientSmoother
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.model.problems import periodic_block as periodic_problem
from hpcinv.parallel import decide_cuda_aware
from hpcinv.solvers import DarcySolver, PTParams

PARAMS = PTParams(tol=1e-6, ncheck=10)


@pytest.fixture(autouse=True)
def standin(monkeypatch):
    """The stand-in as ``cupy`` (whatever ``HPCINV_CUPY_STANDIN`` says), a fresh device, and
    MPI's accesses to pinned buffers made visible."""
    # through monkeypatch, so that its undo (last in, first out) also restores the names after
    # a test that put the real CuPy back for a while: the stand-in never outlives this module
    for name, mod in cupy_standin.modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    cupy_standin.reset()
    spy_on_halos(monkeypatch)
    yield sys.modules["cupy"]


def _cupy(cuda_aware=None, comm=None):
    bk = make_backend("cupy", comm=comm)
    decide_cuda_aware(bk, cuda_aware)
    assert isinstance(bk, CupyBackend)
    return bk


# --- construction and CuPy's API ---------------------------------------------------------------
def test_backend_constructs_with_clamped_priorities(standin):
    """Finding 1: no deviceGetStreamPriorityRange (CuPy 14 has none); boundary gets the device's
    highest priority by clamping, the others the default."""
    bk = _cupy()
    prio = {n: s.cp.priority for n, s in bk.streams.items()}
    assert prio == {"compute": 0, "boundary": -5, "interior": 0}
    assert standin.cuda.get_current_stream() == bk.compute.cp      # nothing on the legacy one
    assert bk.describe()["device"] == "CuPy stand-in (CPU)"
    assert bk.free_memory() > 0


def _real():
    """``{dotted module name: the real module}`` for the stand-in's modules."""
    from cupy_standin.real import _real, real_cupy
    real_cupy()
    out = {}
    for path in cupy_standin.API:
        obj = _real[path.split(".")[0]]
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)
        out[path] = obj
    return out


def _keywords(obj):
    """Keyword names a callable accepts: from inspect.signature, else from a Cython
    docstring's first line ``name(a, b=...)``; ``None`` when it cannot be told."""
    import re
    try:
        ps = list(inspect.signature(obj).parameters.values())
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in ps):
            return {p.name for p in ps if p.name != "self"}
    except (TypeError, ValueError):
        pass
    for doc in (obj.__doc__, getattr(getattr(obj, "__init__", None), "__doc__", None)):
        m = re.match(r"^[\w.]+\((.*)\)", (doc or "").strip().split("\n", 1)[0])
        if m:
            names = {a.split("=")[0].split()[-1] for a in m.group(1).split(",") if a.strip()}
            if not any(n.startswith("*") for n in names):
                return names - {"self", "/", ""}
    return None


def test_every_standin_name_exists_in_the_real_cupy_with_its_keywords():
    """The stand-in cannot offer what CuPy 14 does not (checked against the installed wheel)."""
    real = _real()
    assert not hasattr(real["cupy.cuda.runtime"], "deviceGetStreamPriorityRange")
    checked = []
    for module, names in cupy_standin.API.items():
        for name in names:
            assert hasattr(real[module], name), f"{module}.{name} is not in CuPy"
            mine, theirs = getattr(sys.modules[module], name), getattr(real[module], name)
            if not callable(mine) or isinstance(mine, type) and mine.__module__ == "numpy":
                continue
            ours = _keywords(mine.__init__ if isinstance(mine, type) else mine)
            known = _keywords(theirs)
            if known is not None and ours is not None:
                assert ours <= known, f"{module}.{name}: {ours - known} not in CuPy's {known}"
                checked.append(f"{module}.{name}")
    assert len(checked) >= 15, checked


def test_the_real_cupy_refuses_nothing_the_standin_offers(monkeypatch):
    """``cupy_api.refusals`` over every public name (and each method of each class) of the
    stand-in, resolved against the real CuPy: e.g. ``cupy.abs(x=a)`` would be refused (a ufunc
    takes its inputs positionally only), so the stand-in must refuse it too."""
    from cupy_api import refusals
    offered = {f"{module}.{name}": getattr(sys.modules[module], name)
               for module, names in cupy_standin.API.items() for name in names}
    for module, real in _real().items():          # cupy_api resolves through sys.modules
        monkeypatch.setitem(sys.modules, module, real)
    assert refusals(offered["cupy.abs"], "cupy.abs") == []
    assert refusals(lambda x, out=None: x, "cupy.abs")     # the check itself can fail
    found = [r for path, obj in offered.items() for r in refusals(obj, path)]
    assert found == []


@pytest.mark.parametrize("call,exc,match", [
    (lambda cp: cp.empty((4, 4))[:, 1].set(np.zeros(4)), RuntimeError,
     "Cannot set to non-contiguous array"),
    (lambda cp: cp.empty(4).set(np.zeros(5)), ValueError, "Shape mismatch"),
    (lambda cp: cp.empty(4).set(np.zeros(4, np.float32)), TypeError, "cannot be set to"),
    (lambda cp: cp.empty(4).set([0.0] * 4), TypeError, "Only numpy.ndarray"),
    (lambda cp: cp.empty(4).get(out=np.zeros(5)), ValueError, "Shape mismatch"),
    (lambda cp: cp.empty(4).get(out=np.zeros(4, np.float32)), TypeError, "cannot be obtained"),
    (lambda cp: cp.empty(4).get(out=np.zeros((4, 2))[:, 0]), RuntimeError, "non-contiguous"),
    (lambda cp: np.asarray(cp.empty(4)), TypeError, "Implicit conversion"),
    (lambda cp: cp.empty(4) + np.zeros(4), TypeError, "Unsupported type"),
])
def test_array_preconditions_are_cupys(standin, call, exc, match):
    with pytest.raises(exc, match=match):
        call(standin)


_RAW = ("raw float64 a, int64 n", "raw float64 b", "b[i] = a[i] + n;")


@pytest.mark.parametrize("call,exc,match", [
    (lambda cp, k: k(cp.zeros(4), 1, cp.empty(4)), ValueError, "Loop size is undecided"),
    (lambda cp, k: cp.ElementwiseKernel("float64 x", "raw float64 y", "y[i] = x;", "k_o")(
        cp.zeros(4)), ValueError, "Output array size is Undecided"),
    (lambda cp, k: k(cp.zeros(4, np.float32), 1, cp.empty(4), size=4), TypeError,
     "Type is mismatched"),
    (lambda cp, k: k(np.zeros(4), 1, cp.empty(4), size=4), TypeError, "Unsupported type"),
    (lambda cp, k: k(cp.zeros(4), 1, cp.empty(4), size=4, grid=1), TypeError,
     "Wrong arguments"),
    (lambda cp, k: k(cp.zeros(4), size=4), TypeError, "Wrong number of arguments"),
    (lambda cp, k: k(cp.zeros(4), 1, cp.empty(4), size=5), IndexError, "outside it"),
])
def test_kernel_preconditions_are_cupys(standin, call, exc, match):
    k = standin.ElementwiseKernel(*_RAW, name="k", options=("-fmad=false",))
    with pytest.raises(exc, match=match):
        call(standin, k)


def test_kernel_runs_cupys_flat_index_and_refuses_writes_to_in_params(standin):
    k = standin.ElementwiseKernel(*_RAW, name="k_ok")
    out = standin.empty(4)
    k(standin.arange(4, dtype=np.float64), 2, out, size=4)
    np.testing.assert_array_equal(standin.asnumpy(out), [2, 3, 4, 5])
    bad = standin.ElementwiseKernel("raw float64 a", "raw float64 b", "a[i] = b[i];", "k_bad")
    with pytest.raises(Exception, match="read-only|const"):      # CuPy declares in_params const
        bad(standin.zeros(4), standin.empty(4), size=4)
    with pytest.raises(ValueError, match="Can not use 'i'"):   # CuPy's own parser
        standin.ElementwiseKernel("raw float64 i", "raw float64 b", "b[0] = 0;", "k_i")


# --- the stand-in's race detection itself ---------------------------------------------------
def test_unordered_streams_race_and_an_event_orders_them(standin):
    cp = standin
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    a = cp.empty(8)
    with s1:
        a[...] = 1.0
    with s2, pytest.raises(StreamRaceError, match="not ordered with the write by setitem"):
        cp.copyto(cp.empty(8), a)
    with s2:
        s2.wait_event(s1.record())
        cp.copyto(cp.empty(8), a)


def test_a_pooled_block_reused_at_once_races_with_its_old_readers(standin):
    """The stream-ordered pool hands a block freed on stream A out again at once on A; a read
    of the old array on stream B that A never waited for is then a race."""
    cp = standin
    a_s, b_s = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    with a_s:
        old = cp.zeros(100)
    b_s.wait_event(a_s.record())
    with b_s:
        total = cp.sum(old)                   # B reads the old array
    del old, total
    with a_s:
        new = cp.empty(100)                   # the same block, at once
        with pytest.raises(StreamRaceError, match="reused"):
            new[...] = 2.0


# --- bitwise equality with the host backend ---------------------------------------------------
_POINTS = {2: np.array([[0.0, 0.5], [0.2, 0.3], [-0.2, 0.7]]),
           3: np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.4], [-0.2, 0.7, 0.6]])}


def _pipeline(bk, shape, overlap, comm):
    """Local fields of a forward solve, a gradient and 3 GD steps (with one smoothing)."""
    make = geothermal2d if len(shape) == 2 else geothermal3d
    true = make(shape, comm=comm)
    fw = DarcySolver(true, bk, PARAMS, overlap=overlap).solve()
    obs = Observations(true.grid, _POINTS[len(shape)])
    obs.record(fw.Pf, bk)
    model = make(shape, comm=comm, k_barrier=1.0)
    G = AdjointGradient(model, obs, bk, PARAMS, PARAMS, overlap=overlap)
    J, g, _ = G()
    opt = GradientDescent(G, GradientSmoother(model.grid, bk, 1), OptimiserSettings())
    hist = [opt.start(np.zeros(model.grid.decomp.padded_shape))]
    hist += [opt.step() for _ in range(3)]
    return {"Pf": bk.to_host(fw.Pf), "J": J, "g": bk.to_host(g),
            "x": bk.to_host(opt.arrays["x"]), "misfit": [h["misfit"] for h in hist]}


_host_results: dict = {}


def _host(shape, overlap, comm):
    key = (shape, overlap, comm.Get_size())
    if key not in _host_results:
        _host_results[key] = _pipeline(make_backend("host", threads=1), shape, overlap, comm)
    return _host_results[key]


def _assert_bitwise(got, want):
    for k in want:
        assert np.array_equal(np.asarray(got[k]), np.asarray(want[k])), k


@pytest.mark.parametrize("shape", [(31, 17), (13, 11, 9)], ids=["2d", "3d"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "blocking"])
def test_forward_gradient_descent_bitwise_equal_to_host(shape, overlap):
    got = _pipeline(_cupy(), shape, overlap, MPI.COMM_SELF)
    _assert_bitwise(got, _host(shape, overlap, MPI.COMM_SELF))


def _periodic(bk, overlap):
    s = DarcySolver(periodic_problem((9, 7)), bk, PARAMS, overlap=overlap)
    return {"Pf": bk.to_host(s.solve().Pf)}


@pytest.mark.parametrize("cuda_aware", [True, False], ids=["cuda-aware", "staged"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "blocking"])
def test_halo_path_bitwise_equal_to_host(cuda_aware, overlap):
    """One rank with periodic self-neighbours: every halo message goes through MPI, from device
    buffers (``__cuda_array_interface__``) or staged through pinned buffers."""
    bk = _cupy(cuda_aware=cuda_aware)
    assert bk.cuda_aware is cuda_aware
    _assert_bitwise(_periodic(bk, overlap),
                    _periodic(make_backend("host", threads=1), overlap))


# --- races named when the ordering is broken --------------------------------------------------
@pytest.mark.parametrize("cuda_aware,what", [(True, "__cuda_array_interface__"),
                                              (False, "MPI_Isend \\(pinned buffer\\)")])
def test_removing_the_sync_before_mpi_is_a_named_race(monkeypatch, cuda_aware, what):
    bk = _cupy(cuda_aware=cuda_aware)
    sync = bk.sync

    def sync_except_in_halo(stream=None):
        if sys._getframe(1).f_code.co_name != "start":
            sync(stream)
    monkeypatch.setattr(bk, "sync", sync_except_in_halo)
    with pytest.raises(StreamRaceError, match=f"by {what}.* on the host at "
                                              r"hpcinv/parallel/halo.py:\d+ \([^)]*\) is not "
                                              r"ordered with the write by"):
        _periodic(bk, overlap=True)


def test_the_old_overlap_order_is_a_named_race():
    from test_streams import _OldOrderUpdate
    bk = _cupy()
    s = DarcySolver(periodic_problem((9, 7)), bk, PARAMS, overlap=True)
    s.update = _OldOrderUpdate(s.decomp.padded_shape, bk, s.halo, overlap=True)
    with pytest.raises(StreamRaceError, match="kernel darcy_apt_step_2d on stream '#\\d+ "
                                              "priority .* is not ordered with"):
        s.solve()


def test_a_missing_event_wait_is_a_named_race(monkeypatch):
    bk = _cupy()
    monkeypatch.setattr(bk, "wait", lambda stream, event: None)
    with pytest.raises(StreamRaceError, match="not ordered with .* record an event"):
        _periodic(bk, overlap=True)


# --- 2 to 4 ranks -----------------------------------------------------------------------------
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("cuda_aware,overlap", [(True, True), (False, False)],
                         ids=["cuda-aware-overlap", "staged-blocking"])
def test_mpi_bitwise_equal_to_host_2d(cuda_aware, overlap):
    comm = MPI.COMM_WORLD
    got = _pipeline(_cupy(cuda_aware=cuda_aware, comm=comm), (31, 17), overlap, comm)
    _assert_bitwise(got, _host((31, 17), overlap, comm))


@pytest.mark.mpi(min_size=2)
def test_mpi_bitwise_equal_to_host_3d():
    comm = MPI.COMM_WORLD
    got = _pipeline(_cupy(cuda_aware=False, comm=comm), (13, 11, 9), True, comm)
    _assert_bitwise(got, _host((13, 11, 9), True, comm))
