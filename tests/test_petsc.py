"""The PETSc solver (``hpcinv.solvers.petsc``): same discrete operator, same decomposition.

Skipped where petsc4py does not import (``pip install 'hpcinv[petsc]'``, see docs/petsc.md).

Checks:
- the DMDA blocks are hpcinv's blocks (ownership ranges, and PETSc's own natural-to-global map
  puts every global cell where hpcinv's decomposition has it: no transpose, no rank swap);
- the solution equals the direct sparse reference (``tests/reference.py``) and the APT solution,
  2D and 3D, all-no-flux (same gauge ``sum(Kmax_loc Pf) = 0``) and with fixed-pressure sides;
  fluxes too; the reported APT-style residual is below the tolerance;
- on 2+ ranks (several process grids) the gathered solution equals a COMM_SELF solve;
- ``AdjointGradient`` with the PETSc solver swapped in gives the APT gradient and the direct
  reference gradient.

Tolerances: PETSc stops on the same criterion as APT (max|div q - Qf| / max|Qf| < tol). As in
``test_reference.py`` we bound max|Pf - Pref| / max|Pref| by 1e3 * tol (measured here: see the
numbers in the assertion messages; typically 1e-2 .. 1e1 * tol). Across decompositions GAMG
builds different aggregates, so results agree to the solver tolerance, not bitwise.
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from conftest import owned, owned_faces, problem_from_global
from hpcinv.io import gather_cells
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import PTParams, solve_forward
from hpcinv.inverse.warm_start import warm_starts
from hpcinv.solvers.petsc import PetscDarcySolver
from hpcinv.solvers.petsc_setup import PetscParams, global_ids, petsc_available
from reference import fluxes, solve_reference

if not petsc_available():
    print("\ntests/test_petsc.py: petsc4py is not importable; PETSc tests skipped "
          "(pip install 'hpcinv[petsc]', see docs/petsc.md)")
pytestmark = pytest.mark.skipif(not petsc_available(),
                                reason="petsc4py not importable: pip install 'hpcinv[petsc]'")

TOL = 1e-10
BOUND = 1e3 * TOL


def lognormal(shape, seed=1, sigma=2.0, comm=MPI.COMM_SELF, dims=None, fixed=None):
    rng = np.random.default_rng(seed)
    K = np.exp(sigma * rng.standard_normal(shape))
    Qf = np.zeros(shape)
    Qf[(2,) * len(shape)] = float(np.prod(shape))
    Qf[tuple(n - 3 for n in shape)] = -float(np.prod(shape))
    p = problem_from_global("lognormal", K, Qf, comm=comm, dims=dims)
    p.fixed_pressure = dict(fixed or {})
    return p


def geo(shape, comm=MPI.COMM_SELF, dims=None, fixed=None):
    make = geothermal2d if len(shape) == 2 else geothermal3d
    p = make(shape, comm=comm, dims=dims)
    p.fixed_pressure = dict(fixed or {})
    return p


CASES = {
    "geo2d-noflux": lambda **kw: geo((40, 23), **kw),
    "geo2d-fixed-xlo": lambda **kw: geo((40, 23), fixed={(0, 0): 1.0}, **kw),
    "geo2d-fixed-2sides": lambda **kw: geo((33, 20), fixed={(0, 1): -0.5, (1, 1): 2.0}, **kw),
    "geo3d-noflux": lambda **kw: geo((15, 9, 11), **kw),
    "geo3d-fixed-ztop": lambda **kw: geo((15, 9, 11), fixed={(2, 1): 0.5}, **kw),
    "lognormal2d-noflux": lambda **kw: lognormal((33, 21), **kw),
    "lognormal3d-fixed-ylo": lambda **kw: lognormal((12, 10, 9), fixed={(1, 0): 1.0}, **kw),
}


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --- layout --------------------------------------------------------------------------------
def _check_layout(problem, backend):
    s = PetscDarcySolver(problem, backend, PetscParams(tol=TOL))
    d = s.decomp
    PETSc = s.PETSc
    # PETSc's natural ordering with the DMDA's x fastest is hpcinv's C order (last axis
    # fastest), because the DMDA axes are hpcinv's reversed: fill the natural vector with the
    # C-order flat index of each global cell and let PETSc scatter it to its global vector.
    nat = s.da.createNaturalVec()
    lo, hi = nat.getOwnershipRange()
    nat.setArray(np.arange(lo, hi, dtype=float))
    g = s.da.createGlobalVec()
    s.da.naturalToGlobal(nat, g)
    got = g.getArray(readonly=True).reshape(d.local_shape)
    idx = np.ix_(*[np.arange(o, o + n) for o, n in zip(d.offset, d.local_shape)])
    want = np.ravel_multi_index(idx, d.global_shape).astype(float)
    np.testing.assert_array_equal(got, want)
    # the matrix rows of this rank are its cells, in the order global_ids says
    assert s.A.getOwnershipRange() == (int(global_ids(d)[d.owned()].min()),
                                       int(global_ids(d)[d.owned()].max()) + 1)
    assert tuple(s.da.getProcSizes()) == tuple(reversed(d.dims))
    return s, PETSc


@pytest.mark.parametrize("shape", [(9, 7), (7, 6, 5)])
def test_layout_single_rank(shape, backend):
    _check_layout(geo(shape), backend)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape", [(11, 8), (9, 7, 6)])
@pytest.mark.parametrize("split", ["auto", "first", "last"])
def test_layout_mpi(shape, split, backend):
    n = MPI.COMM_WORLD.Get_size()
    dims = {"auto": None, "first": [n] + [1] * (len(shape) - 1),
            "last": [1] * (len(shape) - 1) + [n]}[split]
    _check_layout(geo(shape, comm=MPI.COMM_WORLD, dims=dims), backend)


# --- solution against the direct reference and APT ------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_and_apt(case, backend):
    problem = CASES[case]()
    spacing, fixed = problem.grid.spacing, problem.fixed_pressure
    K, Qf = owned(problem.K).copy(), owned(problem.Qf).copy()
    s = PetscDarcySolver(problem, backend, PetscParams(tol=TOL))
    st = s.solve()
    assert st.result.converged and st.result.residual < TOL, st.result
    Pref = solve_reference(K, Qf, spacing, fixed)
    P = owned(backend.to_host(st.Pf))
    err = rel(P, Pref)
    assert err < BOUND, f"{case}: max|P - Pref| / max|Pref| = {err:.2e}"
    qref = fluxes(K, Pref, spacing, fixed)
    qmax = max(np.max(np.abs(q)) for q in qref)
    for a in range(problem.grid.ndim):
        qerr = np.max(np.abs(owned_faces(backend.to_host(st.q[a]), a) - qref[a])) / qmax
        assert qerr < BOUND, f"{case}: flux {a} error {qerr:.2e}"
    if not fixed:   # the APT gauge
        from reference import kmax_local
        assert abs(np.sum(kmax_local(K) * P)) <= 1e-12 * np.sum(kmax_local(K) * np.abs(P))
    apt = solve_forward(CASES[case](), backend, PTParams(tol=TOL, ncheck=20, maxiter=400000))
    assert apt.result.converged
    err_apt = rel(P, owned(backend.to_host(apt.Pf)))
    assert err_apt < 2 * BOUND, f"{case}: PETSc vs APT {err_apt:.2e}"


def test_reports_apt_residual_and_timings(backend):
    """The reported residual is recomputed from q (hpcinv's kernels): tighten and loosen tol."""
    problem = geo((40, 23))
    s = PetscDarcySolver(problem, backend, PetscParams(tol=1e-4))
    r1 = s.solve().result
    assert r1.converged and r1.residual < 1e-4
    s.set_params(PetscParams(tol=1e-11))
    r2 = s.solve().result
    assert r2.converged and r2.residual < 1e-11 and r2.iterations > r1.iterations
    assert s.timings["assemble"] == 0.0 and s.timings["setup"] == 0.0   # nothing redone
    assert set(s.describe()) >= {"ksp_type", "pc_type", "petsc_version"}
    # APT params are accepted (their tol is used), as AdjointGradient passes them
    s.set_params(PTParams(tol=1e-6))
    assert s.solve().result.residual < 1e-6


def test_l2_norm_mode_and_options(backend):
    problem = geo((31, 17), fixed={(0, 0): 1.0})
    Pref = solve_reference(owned(problem.K), owned(problem.Qf), problem.grid.spacing,
                           problem.fixed_pressure)
    s = PetscDarcySolver(problem, backend, PetscParams(tol=1e-12, norm="l2", pc_type="jacobi",
                                                       options={"ksp_max_it": 5000}))
    st = s.solve()
    assert s.ksp.getPC().getType() == "jacobi"
    assert rel(owned(backend.to_host(st.Pf)), Pref) < 1e-7
    s2 = PetscDarcySolver(problem, backend, PetscParams(tol=1e-10,
                                                        options={"pc_gamg_threshold": 0.01}))
    assert s2.solve().result.converged


def test_warm_start_and_set_permeability(backend):
    problem = geo((40, 23))
    s = PetscDarcySolver(problem, backend, PetscParams(tol=1e-10))
    P = backend.to_host(s.solve().Pf)
    s.set_state(P)
    r = s.solve().result
    assert r.converged and r.iterations <= 1, r
    K2 = problem.K.copy()
    K2 *= 2.0
    s.set_permeability(K2)
    st = s.solve()
    assert s.timings["assemble"] > 0 and s.timings["setup"] > 0
    # doubling K halves the pressure (the gauge scales along)
    assert rel(owned(backend.to_host(st.Pf)), owned(P) / 2) < 1e-7


# --- MPI: the gathered solution equals a single-rank solve ----------------------------------
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["geo2d-noflux", "geo2d-fixed-2sides", "geo3d-noflux",
                                  "lognormal3d-fixed-ylo"])
@pytest.mark.parametrize("split", ["auto", "last"])
def test_mpi_matches_single_rank(case, split, backend):
    comm = MPI.COMM_WORLD
    tol = 1e-12
    serial = CASES[case]()
    nd = serial.grid.ndim
    dims = None if split == "auto" else [1] * (nd - 1) + [comm.Get_size()]
    par = CASES[case](comm=comm, dims=dims)
    st = PetscDarcySolver(par, backend, PetscParams(tol=tol)).solve()
    assert st.result.converged, st.result
    Pg = gather_cells(par.grid.decomp, st.Pf, backend.to_host)
    ref = PetscDarcySolver(serial, backend, PetscParams(tol=tol)).solve()
    if comm.Get_rank() == 0:
        err = rel(Pg, owned(backend.to_host(ref.Pf)))
        Pref = solve_reference(owned(serial.K), owned(serial.Qf), serial.grid.spacing,
                               serial.fixed_pressure)
        assert err < 1e-10, f"{case} {split}: MPI vs COMM_SELF {err:.2e}"
        assert rel(Pg, Pref) < 1e-9


# --- AdjointGradient with the PETSc solver ----------------------------------------------------
def _gradient_setup(shape, fixed, comm=MPI.COMM_SELF, backend=None):
    from test_gradient_reference import TIGHT, setup
    return setup(shape, fixed, comm=comm, backend=backend), TIGHT


def _swap_in_petsc(G, backend, tol):
    """Replace the APT solver of an AdjointGradient by the PETSc one (same problem)."""
    G.solver = PetscDarcySolver(G.problem, backend, PetscParams(tol=tol))
    G.forward_params = G.solver.params
    G.adjoint_params = PetscParams(tol=tol)
    return G


@pytest.mark.parametrize("case", ["2d-noflux", "2d-fixed-xlo", "3d-noflux", "3d-fixed-ztop"])
def test_adjoint_gradient_with_petsc(case, backend):
    from test_gradient_reference import CASES as GCASES, _reference
    shape, fixed = GCASES[case]
    (G_apt, m_loc, m, Qf, obs, S), _ = _gradient_setup(shape, fixed, backend=backend)
    J_apt, g_apt, _ = G_apt(m_loc)
    g_apt = backend.to_host(g_apt, region=G_apt.problem.grid.decomp.owned())
    (G, m_loc, m, Qf, obs, S), _ = _gradient_setup(shape, fixed, backend=backend)
    _swap_in_petsc(G, backend, 1e-12)
    J, g, info = G(m_loc)
    assert info["forward_converged"] and info["adjoint_converged"], info
    g = backend.to_host(g, region=G.problem.grid.decomp.owned())
    Jref, gref, _ = _reference(G, m, Qf, obs, S)
    err_apt = rel(g, g_apt)
    err_ref = rel(g, gref)
    assert J == pytest.approx(J_apt, rel=1e-9)
    assert J == pytest.approx(Jref, rel=1e-9)
    assert err_apt < 1e-8, f"{case}: PETSc vs APT gradient {err_apt:.2e}"
    assert err_ref < 1e-8, f"{case}: PETSc vs reference gradient {err_ref:.2e}"
    # a second evaluation at another model (set_permeability -> reassembly) also matches
    J2, g2, _ = G(m_loc * 0.5)
    G_apt.set_logK(m_loc * 0.5)
    J2_apt, g2_apt, _ = G_apt()
    own = G.problem.grid.decomp.owned()
    assert rel(backend.to_host(g2, region=own), backend.to_host(g2_apt, region=own)) < 1e-8


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["2d-noflux", "3d-fixed-ztop"])
def test_adjoint_gradient_with_petsc_mpi(case, backend):
    from test_gradient_reference import CASES as GCASES, _reference
    shape, fixed = GCASES[case]
    (G, m_loc, m, Qf, obs, S), _ = _gradient_setup(shape, fixed, comm=MPI.COMM_WORLD,
                                                   backend=backend)
    _swap_in_petsc(G, backend, 1e-12)
    J, g, info = G(m_loc)
    gg = gather_cells(G.problem.grid.decomp, g, backend.to_host)
    if MPI.COMM_WORLD.Get_rank() == 0:
        Jref, gref, _ = _reference(G, m, Qf, obs, S)
        assert J == pytest.approx(Jref, rel=1e-9)
        err = rel(gg, gref)
        assert err < 1e-8, f"{case}: PETSc (MPI) vs reference gradient {err:.2e}"


def test_adjoint_gradient_warm_start_with_petsc(backend):
    """Warm starts (set_state with the previous forward/adjoint solution) work with PETSc and
    need fewer iterations for a nearby model."""
    from test_gradient_reference import CASES as GCASES, setup
    shape, fixed = GCASES["2d-fixed-xlo"]
    G, m_loc, *_ = setup(shape, fixed, backend=backend)
    cold = _swap_in_petsc(G, backend, 1e-12)
    _, g_cold, _ = cold(m_loc * 1.01)
    G2, *_ = setup(shape, fixed, backend=backend)
    warm = _swap_in_petsc(G2, backend, 1e-12)
    G2.use_warm_starts(*warm_starts(True))
    _, _, i1 = warm(m_loc)
    _, g_warm, i2 = warm(m_loc * 1.01)
    own = G.problem.grid.decomp.owned()
    assert rel(backend.to_host(g_warm, region=own), backend.to_host(g_cold, region=own)) < 1e-8
    assert i2["forward_iterations"] < i1["forward_iterations"], (i1, i2)
