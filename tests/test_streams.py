"""The device-work model: kernels bound by name, streams and events, the stream checker, and the
launch and sync counts of one APT iteration.

The checker tests build a :class:`CheckedHostBackend` directly (what ``HPCINV_STREAM_CHECK=1``
selects), so they run in every test stage.
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.backend import HostBackend, KernelArgumentError, StreamRaceError
from hpcinv.backend.checker import CheckedHostBackend, DeviceWorkOutsideBackendError
from hpcinv.parallel import Decomposition, HaloExchange
from hpcinv.physics.darcy import apt_step_kernel
from hpcinv.model.problems import periodic_block as periodic_problem
from hpcinv.solvers import DarcySolver, PTParams
from hpcinv.solvers.overlap import OverlappedUpdate


# --- kernels bound by name --------------------------------------------------------------------
@pytest.fixture(scope="module")
def step2d(backend):
    s = DarcySolver(periodic_problem((6, 5)), backend, PTParams(tol=1e-6))
    return s, backend.kernel(apt_step_kernel(2), 2, np.float64)


def _args(s):
    return dict(Pf=s.Pf, q=s.q, Pf_new=s.Pf_new, q_new=s.q_new, K=s.K, Qf=s.Qf, R=s.R,
                damp=s.damp, beta=s.beta, **s.geometry)


def test_positional_launch_is_refused(step2d):
    """The old positional call with two same-shape arrays swapped is an error, not physics."""
    s, k = step2d
    with pytest.raises(KernelArgumentError, match="bound by name"):
        k((1, 1), (7, 6), s.Pf_new, *s.q, s.Pf, *s.q_new, s.K, s.Qf, s.R)


def test_swapped_buffers_sharing_memory_are_refused(step2d):
    s, k = step2d
    args = _args(s)
    args["Pf_new"] = s.Pf                       # new and old pressure: the same buffer
    with pytest.raises(KernelArgumentError, match="'Pf_new' and 'Pf' share memory"):
        k.bind(**args)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.pop("beta"), "missing arguments beta"),
    (lambda a: a.update(betta=1.0), "unknown argument 'betta' \\(did you mean 'beta'\\?\\)"),
    (lambda a: a.update(damp=a["K"]), "'damp' takes a number"),
    (lambda a: a.update(K=0.5), "array argument 'K'"),
    (lambda a: a.update(q=a["q"][:1]), "q= must be a list of 2 values"),
    (lambda a: a.update(qx=a["q"][0]), "'qx' given twice"),
    (lambda a: a.update(wall=1.5), "'wall' takes an integer"),
])
def test_bad_bindings_name_the_argument(step2d, change, message):
    s, k = step2d
    args = _args(s)
    change(args)
    with pytest.raises(KernelArgumentError, match=message):
        k.bind(**args)


def test_grouped_and_single_names_bind_the_same(step2d):
    s, k = step2d
    a = _args(s)
    single = dict(a)
    single.pop("q")
    single.update(qx=s.q[0], qy=s.q[1])
    def values(bound):
        return [getattr(v, "value", v) for v in bound.prepared]
    assert values(k.bind(**a)) == values(k.bind(**single))


# --- the stream checker -----------------------------------------------------------------------
def _checked():
    return CheckedHostBackend(threads=1)


def _periodic_field(d):
    rng = np.random.default_rng(1)
    f = np.zeros(d.padded_shape)
    f[d.owned()] = rng.standard_normal(d.local_shape)
    return f


def test_pack_without_waiting_for_the_producer_is_a_race():
    """The bug the checker exists for: a field produced on one stream (an upload, a setter, the
    smoother) packed for MPI on another stream with no event between them."""
    bk = _checked()
    d = Decomposition((6, 5), comm=MPI.COMM_SELF, periods=(True, True))
    halo = HaloExchange(d, bk, np.float64)
    field = bk.upload(_periodic_field(d))          # produced on 'compute'
    with pytest.raises(StreamRaceError) as err:
        halo.start(field, bk.streams["boundary"])  # packed on 'boundary', no wait
        halo.finish()
        bk.synchronize()
    msg = str(err.value)
    assert "stream 'boundary'" in msg and "stream 'compute'" in msg and "halo_pack" in msg
    assert "tests/test_streams.py" in msg          # the call sites are named


def test_pack_after_an_event_is_not_a_race():
    bk = _checked()
    d = Decomposition((6, 5), comm=MPI.COMM_SELF, periods=(True, True))
    halo = HaloExchange(d, bk, np.float64)
    host = _periodic_field(d)
    field = bk.upload(host)
    boundary = bk.streams["boundary"]
    bk.wait(boundary, bk.record(bk.compute))
    halo.start(field, boundary)
    halo.finish()
    got = bk.to_host(field, stream=boundary)
    np.testing.assert_array_equal(got[0, 1:-1], host[-2, 1:-1])    # periodic ghosts
    np.testing.assert_array_equal(got[1:-1, -1], host[1:-1, 1])


class _OldOrderUpdate(OverlappedUpdate):
    """The overlapped step as it was before the fix: shell and pack on the boundary stream
    without waiting for the work that produced the step's inputs."""

    def __call__(self, bound, field):
        bk = self.backend
        boundary, interior = bk.streams["boundary"], bk.streams["interior"]
        bk.launch(bound, self.shell, boundary)
        bk.launch(bound, self.interior, interior)
        self.halo.start(field, boundary)
        self.halo.finish()
        bk.wait(bk.compute, bk.record(boundary))
        bk.wait(bk.compute, bk.record(interior))


def _solve(bk, update_cls=None):
    s = DarcySolver(periodic_problem((9, 7)), bk, PTParams(tol=1e-6, ncheck=20), overlap=True)
    if update_cls is not None:
        s.update = update_cls(s.decomp.padded_shape, bk, s.halo, overlap=True)
    state = s.solve()
    return bk.to_host(state.Pf), state.result.iterations


def test_old_ordering_fails_under_the_checker_and_passes_without_it_by_luck():
    """Reintroducing the old ordering is caught, with the race named; the normal host
    backend runs every stream in program order, so there it gives the right answer."""
    P_ok, it_ok = _solve(_checked())
    with pytest.raises(StreamRaceError, match="darcy_apt_step_2d on stream '(boundary|interior)'"
                                              ".* is not ordered with the write by "
                                              "darcy_apt_step_2d on stream"):
        _solve(_checked(), _OldOrderUpdate)
    P_lucky, it_lucky = _solve(HostBackend(threads=1), _OldOrderUpdate)
    assert it_lucky == it_ok
    np.testing.assert_array_equal(P_lucky, P_ok)      # bitwise, as in checked mode


def test_checked_solve_is_bitwise_the_normal_solve():
    for overlap in (True, False):
        out = []
        for bk in (_checked(), HostBackend(threads=1)):
            s = DarcySolver(periodic_problem((8, 6, 5)), bk, PTParams(tol=1e-7, ncheck=10),
                            overlap=overlap)
            st = s.solve()
            out.append((bk.to_host(st.Pf), st.result.iterations))
        assert out[0][1] == out[1][1]
        np.testing.assert_array_equal(out[0][0], out[1][0])


def test_direct_write_outside_the_backend_is_refused():
    bk = _checked()
    a = bk.zeros((4, 4), np.float64)
    with pytest.raises(DeviceWorkOutsideBackendError, match="test_streams.py"):
        a[1:3] = 1.0
    with pytest.raises(DeviceWorkOutsideBackendError):
        a *= 2.0
    with pytest.raises(DeviceWorkOutsideBackendError):
        np.copyto(a, 1.0)
    bk.fill(a, 2.0)
    assert bk.to_host(a).sum() == 32.0


def test_unsynchronised_host_read_is_a_race():
    bk = _checked()
    a = bk.zeros((64, 64), np.float64)
    bk.synchronize()
    boundary = bk.streams["boundary"]
    bk.fill(a, 1.0, stream=boundary)
    with pytest.raises(StreamRaceError, match="the host"):
        float(a[3, 3])                 # the host reads while 'boundary' may still write:
        bk.synchronize()               # reported at once, or when the fill runs
    bk.synchronize()
    assert float(a[3, 3]) == 1.0       # after a sync the host may read


def test_disjoint_boxes_on_two_streams_are_not_a_race():
    """Interior and shell of one field are written concurrently: footprints, not whole arrays,
    decide what conflicts."""
    bk = _checked()
    s = DarcySolver(periodic_problem((8, 7)), bk, PTParams(tol=1e-6), overlap=True)
    for _ in range(3):
        s.step()
    bk.synchronize()


# --- launch and sync counts -------------------------------------------------------------------
def _counts(bk, shape, overlap, check):
    s = DarcySolver(periodic_problem(shape), bk, PTParams(tol=1e-12), overlap=overlap)
    s.step(check)
    bk.synchronize()
    bk.reset_counters()
    s.step(check)
    return bk.reset_counters()


@pytest.mark.parametrize("shape", [(10, 9), (8, 7, 6)])
@pytest.mark.parametrize("overlap", [True, False])
def test_launches_and_syncs_per_iteration(shape, overlap):
    """With a neighbour on every side (6 in 3D): shell, interior, pack and unpack with overlap
    (one full-box launch, pack, unpack without), one host sync (before MPI reads the send
    buffer), one more on a residual check. Host memory goes to MPI directly: no copies."""
    backend = HostBackend(threads=1)
    c = _counts(backend, shape, overlap, check=False)
    assert c["kernels"] == (4 if overlap else 3)
    assert c["syncs"] == 1 and c["copies"] == 0 and c["maps"] == 0
    c = _counts(backend, shape, overlap, check=True)
    assert c["kernels"] == (4 if overlap else 3) and c["syncs"] == 2 and c["reductions"] == 1


def test_staged_exchange_adds_two_copies_not_launches():
    """Device memory without CUDA-aware MPI: one device-to-host copy of the packed faces and one
    host-to-device copy of the received faces per iteration, nothing else."""
    bk = _checked()
    assert bk.cuda_aware is False
    c = _counts(bk, (8, 7, 6), True, check=False)
    assert c["kernels"] == 4 and c["copies"] == 2 and c["syncs"] == 1
