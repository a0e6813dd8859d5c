"""Explicit state ownership: borrowed solver states, forward-solution handles, the true problem
left intact by an inversion, named checkpoint state."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv import config as config_mod
from hpcinv.app.assembly import build
from hpcinv.app.run import Inversion, Reporter, RunDirectory
from hpcinv.inverse import AdjointGradient, LifecycleError, Observations
from hpcinv.inverse.state import StateField
from hpcinv.io import read_attrs
from hpcinv.model.geothermal import workshop_points
from hpcinv.model.problems import geothermal2d
from hpcinv.solvers import DarcySolver, PTParams
from hpcinv.solvers.fields import StaleStateError


def test_second_solve_does_not_change_a_kept_state(backend):
    p = geothermal2d((31, 15), comm=MPI.COMM_SELF)
    s = DarcySolver(p, backend, PTParams(tol=1e-8))
    first = s.solve()
    kept = first.copy()
    P1 = backend.to_host(kept.Pf)
    s.set_source(2.0 * p.Qf)                  # another solution in the same buffers
    s.set_state()
    second = s.solve()
    with pytest.raises(StaleStateError, match="copy"):
        first.Pf                               # noqa: B018  (borrowed, and reused since)
    np.testing.assert_array_equal(backend.to_host(kept.Pf), P1)      # owned: unchanged
    np.testing.assert_array_equal(backend.to_host(second.Pf), 2.0 * P1)  # linear in Qf
    assert not kept.borrowed and second.borrowed


def _objective(backend):
    true = geothermal2d((31, 15), comm=MPI.COMM_SELF)
    obs = Observations(true.grid, workshop_points(2))
    obs.record(DarcySolver(true.copy(), backend, PTParams(tol=1e-9)).solve().Pf, backend)
    return AdjointGradient(geothermal2d((31, 15), comm=MPI.COMM_SELF, k_barrier=1.0), obs,
                           backend, PTParams(tol=1e-9), PTParams(tol=1e-9))


def test_adjoint_gradient_needs_the_latest_forward_solution(backend):
    G = _objective(backend)
    shape = G.decomp.padded_shape
    old = G.forward_solve(np.zeros(shape))
    new = G.forward_solve(np.full(shape, 0.1))
    source = np.zeros(shape)
    with pytest.raises(LifecycleError, match="not the objective's latest"):
        G.adjoint_gradient(old, source)
    G.set_logK(np.zeros(shape))                # the model changed: no forward solution of it
    with pytest.raises(LifecycleError):
        G.adjoint_gradient(new, source)
    fwd = G.forward_solve()
    J, g_call, _ = G(np.zeros(shape))
    assert J > 0 and fwd.serial < G.forward_solve().serial


def test_restore_forward_reproduces_the_gradient(backend):
    G = _objective(backend)
    shape = G.decomp.padded_shape
    m = np.full(shape, 0.2)
    J, g, _ = G(m)
    g = backend.to_host(g)
    kept = backend.clone(G.forward_solve(m).Pf)
    G.forward_solve(np.zeros(shape))           # something else in between
    handle = G.restore_forward(m, kept)
    _, w = G.obs.misfit_from_values(G.obs.sample(handle.Pf, backend))[1:]
    g2, _ = G.adjoint_gradient(handle, G.obs.spread(w, backend, dtype=G.dtype))
    np.testing.assert_array_equal(backend.to_host(g2), g)


def test_state_field_checks_its_location():
    StateField(np.zeros(3), "replicated")
    with pytest.raises(ValueError):
        StateField(np.zeros(3), "edge")
    with pytest.raises(ValueError):
        StateField(np.zeros(3), "face")         # a face field needs its axis
    with pytest.raises(ValueError):
        StateField(np.zeros(3), "cell", 0)


@pytest.mark.parametrize("adaptive", [True, False])
def test_inversion_leaves_the_true_problem_intact_and_names_its_state(tmp_path, adaptive):
    cfg = config_mod.from_dict({"grid": {"nx": 31, "ny": 15}, "parallel": {"backend": "host"},
                                "inversion": {"iterations": 3, "adaptive_tolerance": adaptive},
                                "output": {"figures": False}})
    setup = build(cfg, MPI.COMM_WORLD)
    K_true = setup.true.K.copy()
    assert setup.objective.problem is not setup.true
    run = Inversion(setup, RunDirectory(tmp_path / "run", MPI.COMM_WORLD),
                    Reporter(quiet=True))
    run.run()
    np.testing.assert_array_equal(setup.true.K, K_true)
    assert not np.array_equal(setup.objective.problem.K, K_true)   # the copy did change
    layout = json.loads(read_attrs(tmp_path / "run" / "checkpoint.h5")["state_layout"])
    assert layout["optimiser"]["x"][1] == "cell"
    assert layout["objective"]["forward_qy"][1:] == ["face", 1]
    if adaptive:     # the adjoint subspace (issue 12): solutions and their source weights
        assert layout["objective"]["adjoint_basis0_w"][1] == "replicated"
        assert layout["objective"]["adjoint_basis0_qx"][1:] == ["face", 0]
    else:
        assert layout["objective"]["adjoint_source_weights"][1] == "replicated"
