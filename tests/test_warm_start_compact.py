"""Compact warm-start solutions (issue 20): a kept solution holds its pressure in the solver
dtype and its fluxes in float32 (``hpcinv/inverse/subspace.py``).

* the kept arrays have those dtypes, and attaching the strategies allocates exactly what their
  ``memory_fields()`` report (the counter of the backend);
* a checkpoint of the older format (float64 fluxes under the same names) restarts: the
  gradients that follow are bitwise those of the uninterrupted objective;
* a run's checkpoint stores the fluxes as float32 and the pressures in the solver dtype;
* gradients with subspace warm starts are bitwise the same on 1 and 2-4 ranks
  (``mpiexec -n 2 python -m pytest --with-mpi tests/test_warm_start_compact.py``).
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.inverse.subspace import FLUX_DTYPE, kept_fields
from hpcinv.inverse.warm_start import (PreviousSolution, RescaledAdjointStart,
                                       SubspaceAdjointStart, SubspaceForwardStart)
from hpcinv.model.geothermal import workshop_points
from hpcinv.model.problems import geothermal2d
from hpcinv.solvers import DarcySolver, PTParams

SHAPE = (31, 15)


def _objective(backend, comm, fs, ad):
    true = geothermal2d(SHAPE, comm=comm)
    obs = Observations(true.grid, workshop_points(2))
    obs.record(DarcySolver(true.copy(), backend, PTParams(tol=1e-9)).solve().Pf, backend)
    return AdjointGradient(geothermal2d(SHAPE, comm=comm, k_barrier=1.0), obs, backend,
                           PTParams(tol=1e-6), PTParams(tol=1e-6), forward_start=fs,
                           adjoint_start=ad)


def _models(G, n=3):
    """``n`` replicated smooth models (padded local arrays of ``G``'s decomposition)."""
    d = G.decomp
    x, y = np.meshgrid(*(np.arange(n_) / n_ for n_ in SHAPE), indexing="ij")
    out = []
    for k in range(n):
        glob = 0.3 * (k + 1) * np.sin(3 * x + k) * np.cos(2 * y)
        local = np.zeros(d.padded_shape)
        local[d.owned()] = glob[tuple(slice(o, o + m) for o, m in zip(d.offset, d.local_shape))]
        out.append(local)
    return out


def test_kept_solutions_are_float32_fluxes_and_count_as_reported(backend):
    G = _objective(backend, MPI.COMM_SELF, SubspaceForwardStart(2), SubspaceAdjointStart(2))
    x = _models(G)
    for m in x:
        G(m)
    for st in (G.forward_start, G.adjoint_start):
        P, q = st.solution.P, st.solution.q
        assert P.dtype == np.float64 and {a.dtype for a in q} == {FLUX_DTYPE}
        assert len(st.subspace) == 2
        for Pi, qi in st.subspace.fields:
            assert Pi.dtype == np.float64 and {a.dtype for a in qi} == {FLUX_DTYPE}
    solver = G.solver
    cells = int(np.prod(solver.K.shape))
    fs, ad = PreviousSolution(), RescaledAdjointStart()
    before = backend.memory.snapshot()["current_bytes"]
    fs.attach(solver)
    ad.attach(solver)
    held = backend.memory.snapshot()["current_bytes"] - before
    assert held == (fs.memory_fields(2) + ad.memory_fields(2)) * cells * 8
    assert kept_fields(2) == 2.0 and kept_fields(3) == 2.5 and kept_fields(3, f64=2) == 4


def test_a_checkpoint_with_float64_fluxes_restarts_bitwise(backend):
    """The state of an older checkpoint (fluxes in float64, as kept before issue 20) loads into
    a new objective: its next gradients are bitwise those of the objective it was saved from."""
    strategies = lambda: (SubspaceForwardStart(2), SubspaceAdjointStart(2))  # noqa: E731
    G = _objective(backend, MPI.COMM_SELF, *strategies())
    x = _models(G, 4)
    for m in x[:2]:
        G(m)
    old = {name: (np.array(backend.to_host(f.array), dtype=np.float64)
                  if f.location != "replicated" else f.array)
           for name, f in G.state().items()}
    assert any(name.endswith("_qx") for name in old)
    H = _objective(backend, MPI.COMM_SELF, *strategies())
    H.load_state(old)
    for m in x[2:]:
        _, g1, i1 = G(m)
        _, g2, i2 = H(m)
        np.testing.assert_array_equal(backend.to_host(g1), backend.to_host(g2))
        assert i1 == i2


def test_a_run_checkpoints_float32_fluxes(tmp_path):
    from hpcinv.app.cli import main
    cfg = tmp_path / "c.toml"
    cfg.write_text("[grid]\nnx = 31\nny = 15\n[inversion]\niterations = 2\n"
                   "[output]\nfigures = false\n")
    assert main(["invert", str(cfg), "-q", "-o", str(tmp_path / "r")]) == 0
    with h5py.File(tmp_path / "r" / "checkpoint.h5") as f:
        dtypes = {name: f[name].dtype for name in f if name.startswith("objective.")}
    q = {n: dt for n, dt in dtypes.items() if "_q" in n}
    P = {n: dt for n, dt in dtypes.items() if n.endswith("_Pf")}
    assert "objective.forward_qx" in q and "objective.adjoint_Pf" in P, sorted(dtypes)
    assert set(q.values()) == {np.dtype(np.float32)}
    assert set(P.values()) == {np.dtype(np.float64)}


@pytest.mark.mpi(min_size=2)
def test_gradients_with_subspaces_are_bitwise_on_any_decomposition(backend):
    comm = MPI.COMM_WORLD
    G1 = _objective(backend, MPI.COMM_SELF, SubspaceForwardStart(2), SubspaceAdjointStart(2))
    Gw = _objective(backend, comm, SubspaceForwardStart(2), SubspaceAdjointStart(2))
    d = Gw.decomp
    mine = tuple(slice(o + 1, o + 1 + n) for o, n in zip(d.offset, d.local_shape))
    for m1, mw in zip(_models(G1, 4), _models(Gw, 4)):
        J1, g1, i1 = G1(m1)
        Jw, gw, iw = Gw(mw)
        assert J1 == Jw and i1 == iw
        np.testing.assert_array_equal(backend.to_host(gw)[d.owned()],
                                      backend.to_host(g1)[mine])
