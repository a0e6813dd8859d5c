"""Host syncs, launch plans and events per iteration and per gradient (issue 19, finding 5).

Every host wait goes through :meth:`Backend.count_sync` (``counters["syncs"]``); new launch
plans are counted in ``counters["plans"]`` (on GPUs the first plan of a kernel over a box list
uploads its geometry: one host sync). Expected numbers, from the code's structure:

* an APT iteration block of ``ncheck`` iterations: one sync per halo exchange (before MPI
  reads the packed send buffer) and one for the residual check (``max_abs``); a solve adds
  nothing after its last check (the check already synchronised every stream);
* a gradient (one rank, no neighbours): one sync per residual check of the forward and the
  adjoint solve, plus 5: the model read (``set_logK``), the two source scales (``max_abs`` of
  the forward and the adjoint source), the sampling at the observations (``gather``) and the
  assembled gradient (``_assemble_gradient``); no new launch plans once the forward's and the
  adjoint's step bindings exist (before: 6 per gradient, i.e. 6 geometry uploads and host
  syncs on a GPU, and one sync more per solve).
"""
from __future__ import annotations


import numpy as np
import pytest
from mpi4py import MPI
from test_gpu_selection import fake_cupy

from hpcinv.backend import HostBackend, cuda_compile
from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.model.problems import geothermal2d
from hpcinv.model.problems import periodic_block as periodic_problem
from hpcinv.physics.darcy import apt_step_kernel
from hpcinv.solvers import DarcySolver, PTParams, solve_forward
from hpcinv.solvers.apt import next_check

PARAMS = PTParams(tol=1e-6, ncheck=10)


def _checks(iterations: int, ncheck: int) -> int:
    """Residual checks of a solve of ``iterations`` (at :func:`next_check`'s iterations; the
    last one is a check)."""
    n, due = 1, next_check(0, ncheck, PARAMS.first_check)
    while due < iterations:
        n, due = n + 1, next_check(due, ncheck, PARAMS.first_check)
    return n


@pytest.mark.parametrize("periodic", [True, False], ids=["halo", "no-halo"])
def test_syncs_per_iteration_block(periodic):
    """A solve: one sync per iteration with a halo exchange (a periodic self-neighbour on one
    rank), none without, and one per residual check."""
    bk = HostBackend(threads=1)
    problem = periodic_problem((12, 9)) if periodic else geothermal2d((12, 9),
                                                                      comm=MPI.COMM_SELF)
    s = DarcySolver(problem, bk, PARAMS, overlap=periodic)
    bk.synchronize()
    bk.reset_counters()
    res = s.solve().result
    c = bk.reset_counters()
    assert res.converged and res.iterations > 2 * PARAMS.ncheck
    exchanges = res.iterations if periodic else 0
    assert c["syncs"] == exchanges + _checks(res.iterations, PARAMS.ncheck), (c, res.iterations)
    assert c["reductions"] == _checks(res.iterations, PARAMS.ncheck)


def _gradient():
    bk = HostBackend(threads=1)
    true = geothermal2d((15, 9), comm=MPI.COMM_SELF)
    obs = Observations(true.grid, np.array([[0.0, 0.5], [0.2, 0.3], [-0.2, 0.7]]))
    obs.record(solve_forward(true, bk, PARAMS).Pf, bk)
    prob = geothermal2d((15, 9), comm=MPI.COMM_SELF)
    return bk, AdjointGradient(prob, obs, bk, PARAMS, PTParams(tol=1e-6, ncheck=10, cfl=0.5))


def test_syncs_and_plans_per_gradient():
    bk, G = _gradient()
    m = np.zeros(G.decomp.padded_shape)
    G(m)                                          # the first gradient binds and plans
    for k in (1, 2):
        bk.reset_counters()
        _, _, info = G(m + 0.01 * k)
        c = bk.reset_counters()
        checks = _checks(info["forward_iterations"], PARAMS.ncheck) \
            + _checks(info["adjoint_iterations"], PARAMS.ncheck)
        assert c["syncs"] == checks + 5, (c, info)
        assert c["plans"] == 0, c                 # forward/adjoint switches reuse bindings


def test_switching_parameters_reuses_the_bindings():
    bk, G = _gradient()
    s = G.solver
    s.set_params(G.forward_params)
    fwd = s._bound
    s.set_params(G.adjoint_params)
    assert s._bound is not fwd                    # other damp/beta: other bindings
    s.set_params(G.forward_params)
    assert s._bound is fwd


# --------------------------------------------------------------------------- events

class _EventCountingBackend(HostBackend):
    """The host backend, counting the events made and checking that records reuse them."""

    def __init__(self):
        super().__init__(threads=1)
        self.made, self.recorded = [], []

    def new_event(self):
        ev = object()
        self.made.append(ev)
        return ev

    def record(self, stream, event=None):
        self.recorded.append(event)
        return super().record(stream, event)


def test_overlapped_steps_reuse_three_events():
    """Three events per solver, re-recorded every step (on GPUs: CUDA events without timing,
    made once), and the solution is bitwise the one of the plain host backend."""
    bk = _EventCountingBackend()
    s = DarcySolver(periodic_problem((9, 7)), bk, PARAMS, overlap=True)
    st = s.solve()
    P = bk.to_host(st.Pf)
    assert len(bk.made) == 3
    assert len(bk.recorded) == 3 * st.result.iterations
    assert all(any(e is m for m in bk.made) for e in bk.recorded)
    ref = DarcySolver(periodic_problem((9, 7)), HostBackend(threads=1), PARAMS, overlap=True)
    np.testing.assert_array_equal(P, ref.backend.to_host(ref.solve().Pf))


def test_cupy_backend_events_have_no_timing(monkeypatch):
    """``CupyBackend.new_event`` asks CuPy for ``Event(disable_timing=True)``."""
    from hpcinv.backend.cupy_backend import CupyBackend
    made = []

    class Cp:
        class cuda:
            @staticmethod
            def Event(**kwargs):
                made.append(kwargs)
                return kwargs
    bk = object.__new__(CupyBackend)
    bk.xp = Cp
    bk.new_event()
    assert made == [{"disable_timing": True}]


# --------------------------------------------------------------------------- launch geometry

def test_geometry_uploaded_once_per_box_list(monkeypatch):
    """The CuPy kernel uploads a box list's geometry once for all its bindings (each upload
    is a counted host sync), and picks the 32-bit unravelling for small arrays."""
    cp = fake_cupy()
    made, synced = [], []
    cp.asarray = lambda a: (made.append(a), np.asarray(a))[1]
    cp.cuda.get_current_stream = lambda: type("S", (), {"synchronize": lambda self: None})()
    ek_calls = []

    def elementwise_kernel(in_params, out_params, operation, name=None, **kw):
        ek_calls.append(kw["preamble"])
        return lambda *a, **k: None
    cp.ElementwiseKernel = elementwise_kernel
    monkeypatch.setattr(cuda_compile, "import_cupy", lambda: cp)
    ck = cuda_compile.CudaKernel(apt_step_kernel(2, False), 2, np.float64,
                         count_sync=lambda: synced.append(1))
    s = DarcySolver(periodic_problem((6, 5)), HostBackend(threads=1), PARAMS)
    args = dict(Pf=s.Pf, q=s.q, Pf_new=s.Pf_new, q_new=s.q_new, K=s.K, Qf=s.Qf, R=s.R,
                beta=s.beta, **s.geometry)
    boxes = [((1, 1), (7, 6))]
    for damp in (0.5, 0.25):                      # two parameter sets: two bindings
        b = ck.bind(damp=damp, **args)
        b.plan(boxes)
        assert b.plan(boxes).geometry[4] is True  # index32: 8 x 7 cells
    ck.bind(damp=0.5, **args).plan([((1, 1), (2, 6))])
    assert len(made) == 2 and len(synced) == 2
    ck.elementwise(True)
    assert "typedef unsigned int hpcinv_uidx;" in ek_calls[-1]
    assert "typedef ptrdiff_t hpcinv_uidx;" in ek_calls[0]
