"""The adjoint-state gradient against an independent one from direct sparse solves.

The reference (``tests/reference.py``) assembles the same discrete operator with scipy.sparse
from the discretisation's definition (not from the kernels), solves the forward system, the
adjoint system ``A^T lam = S^T dJ/dP`` (``S`` the observation matrix built from
``Observations.cells``), and forms ``dJ/dK = -(dF/dK)^T lam`` with the Jacobian of the residual
w.r.t. K assembled face by face; ``dJ/dlogK = K dJ/dK``. With no fixed side both solves use the
bordered gauge system (the demeaned misfit makes the adjoint rhs sum to zero, so the solve is
consistent). The reference is itself checked against finite differences of its own J.

Also here: Taylor tests with a fixed-pressure side (2D and 3D) and the bitwise decomposition
invariance of a gradient with a fixed-pressure side (MPI).

Tolerances: APT solves at ``tol = 1e-13`` (scaled residual). Measured (host backend, float64):
max|g - gref| / max|gref| = 1.5e-12 .. 6.2e-12 and |J - Jref| / Jref = 3e-14 .. 3.1e-11 over
the CASES below. We assert < 1e-8 and 1e-9: three orders of headroom, while a discretisation,
sign, boundary-condition or gauge error gives 1e-4 .. 1 (e.g. 2.8e-4 for ``2d-fixed-xlo`` when
the fixed face's dKf/dK_c is taken as 1/2 instead of 1, the subtlest one we tried).
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from conftest import problem_from_global
from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.io import gather_cells
from hpcinv.model.geothermal import EXTENTS
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import PTParams
from reference import misfit, observation_matrix, reference_gradient, solve_reference

TIGHT = PTParams(tol=1e-13, ncheck=20, maxiter=400000)
GRAD_BOUND = 1e-8
J_BOUND = 1e-9


def workshop_points(ndim, nz=4):
    """The workshop's 8 x 8 observation grid (x in linspace(-1/3, 1/3, 8), y in
    linspace(0.25, 0.85, 8)); in 3D on ``nz`` levels z in linspace(0.25, 0.75, nz)."""
    axes = [np.linspace(-1 / 3, 1 / 3, 8), np.linspace(0.25, 0.85, 8)]
    if ndim == 3:
        axes.append(np.linspace(0.25, 0.75, nz))
    return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)


def smooth_random(shape, seed, sigma):
    """A lognormal-ish log K: white noise smoothed by a few neighbour averages, scaled to std
    ``sigma`` (moderate contrast, ~e^(+-3 sigma))."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal(shape)
    for _ in range(3):
        s = m.copy()
        for a in range(m.ndim):
            s += np.roll(m, 1, axis=a) + np.roll(m, -1, axis=a)
        m = s / (1 + 2 * m.ndim)
    return sigma * (m - m.mean()) / m.std()


def _sources(shape):
    """The geothermal wells (injection / extraction), as a global array."""
    make = geothermal2d if len(shape) == 2 else geothermal3d
    p = make(shape, comm=MPI.COMM_SELF)
    return p.Qf[p.grid.decomp.owned()].copy()


def _true_K(shape):
    make = geothermal2d if len(shape) == 2 else geothermal3d
    p = make(shape, comm=MPI.COMM_SELF, k_barrier=1e-3)
    return p.K[p.grid.decomp.owned()].copy()


def _local(grid, a_global):
    """Padded local array of this rank from a global cell array."""
    d = grid.decomp
    out = np.zeros(d.padded_shape)
    out[d.owned()] = a_global[tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))]
    return out


def setup(shape, fixed, comm=MPI.COMM_SELF, seed=5, sigma=0.7, backend=None, dims=None):
    """``(G, logK_local, logK_global, Qf, obs, S)``: an AdjointGradient on the geothermal
    sources with a smooth random model, observations recorded from the reference solution of
    the workshop barrier (k_barrier = 1e-3) with the same boundary conditions."""
    nd = len(shape)
    extent = EXTENTS["geothermal2d" if nd == 2 else "geothermal3d"]
    Qf = _sources(shape)
    m = smooth_random(shape, seed, sigma)
    prob = problem_from_global("gradref", np.exp(m), Qf, extent=extent, comm=comm, dims=dims)
    prob.fixed_pressure = dict(fixed)
    grid = prob.grid
    obs = Observations(grid, workshop_points(nd))
    Ptrue = solve_reference(_true_K(shape), Qf, grid.spacing, fixed)
    obs.record(_local(grid, Ptrue))
    S = observation_matrix(shape, obs.cells, getattr(obs, "weights", None))
    G = AdjointGradient(prob, obs, backend, TIGHT, TIGHT)
    return G, _local(grid, m), m, Qf, obs, S


def _reference(G, m, Qf, obs, S):
    grid = G.problem.grid
    return reference_gradient(np.exp(m), Qf, grid.spacing, S, obs.values,
                              G.problem.fixed_pressure, demean=getattr(obs, "demean", True),
                              sigma=getattr(obs, "sigma", None))


CASES = {
    "2d-noflux": ((48, 24), {}),
    "2d-fixed-xlo": ((48, 24), {(0, 0): 1.0}),
    "2d-fixed-2sides": ((40, 20), {(0, 1): -0.5, (1, 1): 2.0}),
    "3d-noflux": ((20, 10, 10), {}),
    "3d-fixed-ztop": ((20, 10, 10), {(2, 1): 0.5}),
}


# --- the reference against finite differences of its own J ------------------------------------
@pytest.mark.parametrize("shape,fixed", [((10, 6), {}), ((10, 6), {(0, 0): 1.0, (1, 1): -2.0}),
                                         ((6, 4, 4), {}), ((6, 4, 4), {(2, 0): 0.5})])
def test_reference_gradient_matches_finite_differences(shape, fixed):
    """Central differences of the direct-solve J w.r.t. log K in every cell (O(h^2), h = 1e-5)
    agree with the reference adjoint gradient: the reference is right on its own terms."""
    rng = np.random.default_rng(11)
    nd = len(shape)
    extent = EXTENTS["geothermal2d" if nd == 2 else "geothermal3d"]
    spacing = tuple((hi - lo) / n for (lo, hi), n in zip(extent, shape))
    Qf = np.zeros(shape)
    Qf[(1,) * nd], Qf[tuple(n - 2 for n in shape)] = 1.0, -1.0
    m = 0.5 * rng.standard_normal(shape)
    cells = np.stack([rng.integers(0, n, 12) for n in shape], axis=1)
    S = observation_matrix(shape, cells)
    values = rng.standard_normal(12)

    def J(mm):
        P = solve_reference(np.exp(mm), Qf, spacing, fixed)
        return misfit(S @ P.ravel(), values, demean=not fixed)[0]

    J0, g, _ = reference_gradient(np.exp(m), Qf, spacing, S, values, fixed, demean=not fixed)
    assert J0 == pytest.approx(J(m), rel=1e-12)
    h = 1e-5
    fd = np.empty(m.size)
    for i in range(m.size):
        e = np.zeros(m.size)
        e[i] = h
        e = e.reshape(shape)
        fd[i] = (J(m + e) - J(m - e)) / (2 * h)
    err = np.max(np.abs(fd - g.ravel())) / np.max(np.abs(g))
    assert err < 1e-7, err


# --- the adjoint gradient against the reference -----------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_adjoint_gradient_matches_direct_solves(case, backend):
    shape, fixed = CASES[case]
    G, m_loc, m, Qf, obs, S = setup(shape, fixed, backend=backend)
    J, g, info = G(m_loc)
    assert info["forward_converged"] and info["adjoint_converged"], info
    Jref, gref, Pref = _reference(G, m, Qf, obs, S)
    g = G.backend.to_host(g, region=G.problem.grid.decomp.owned())
    assert np.max(np.abs(gref)) > 0 and Jref > 0
    assert J == pytest.approx(Jref, rel=J_BOUND)
    err = np.max(np.abs(g - gref)) / np.max(np.abs(gref))
    assert err < GRAD_BOUND, f"{case}: max|g - gref| / max|gref| = {err:.3e}"
    # and the comparison has teeth: the gradient is not dominated by a few cells
    assert np.count_nonzero(np.abs(gref) > 1e-3 * np.max(np.abs(gref))) > gref.size // 10


@pytest.mark.parametrize("case", ["2d-fixed-xlo", "3d-fixed-ztop"])
def test_plain_misfit_with_fixed_side_matches_direct_solves(case, backend):
    """With a fixed-pressure side the plain (not demeaned) misfit, where Observations offers
    it (``demean=False``)."""
    import inspect
    if "demean" not in inspect.signature(Observations).parameters:
        pytest.skip("Observations has no demean option")
    shape, fixed = CASES[case]
    G, m_loc, m, Qf, obs, S = setup(shape, fixed, backend=backend)
    G.obs.demean = False
    J, g, info = G(m_loc)
    Jref, gref, _ = _reference(G, m, Qf, obs, S)
    g = G.backend.to_host(g, region=G.problem.grid.decomp.owned())
    assert J == pytest.approx(Jref, rel=J_BOUND)
    err = np.max(np.abs(g - gref)) / np.max(np.abs(gref))
    assert err < GRAD_BOUND, f"{case}: max|g - gref| / max|gref| = {err:.3e}"


# --- Taylor tests with a fixed-pressure side ----------------------------------------------------
@pytest.mark.parametrize("shape,fixed", [((31, 15), {(0, 0): 1.0}),
                                         ((13, 7, 7), {(1, 1): 0.5, (2, 0): -0.25})])
def test_taylor_fixed_pressure(shape, fixed, backend):
    """|J(m + h dm) - J(m)| falls at rate 1 and |J(m + h dm) - J(m) - h <g, dm>| at rate 2
    (slopes within 0.1) over 5 halvings of h."""
    G, m, _, _, _, _ = setup(shape, fixed, backend=backend, sigma=0.3)
    d = G.problem.grid.decomp
    rng = np.random.default_rng(4)
    dm = _local(G.problem.grid, rng.standard_normal(shape))
    J0, g, info = G(m)
    assert info["forward_converged"] and info["adjoint_converged"]
    gdm = float(np.sum(G.backend.to_host(g, region=d.owned()) * dm[d.owned()]))
    r1, r2 = [], []
    for k in range(6):
        h = 0.02 / 2**k
        Jh = G(m + h * dm)[0]
        r1.append(abs(Jh - J0))
        r2.append(abs(Jh - J0 - h * gdm))
    s1 = np.log2(np.array(r1[:-1]) / np.array(r1[1:]))
    s2 = np.log2(np.array(r2[:-1]) / np.array(r2[1:]))
    assert np.all(np.abs(s1 - 1) < 0.1), s1
    assert np.all(np.abs(s2 - 2) < 0.1), s2


# --- decomposition invariance with a fixed-pressure side ---------------------------------------
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape,fixed", [((23, 11), {(0, 1): 1.5}),
                                         ((11, 7, 6), {(1, 0): -0.5, (2, 1): 1.0})])
def test_gradient_fixed_pressure_independent_of_decomposition(shape, fixed, backend):
    """J and dJ/dlogK on COMM_WORLD (any number of ranks, uneven splits) are bitwise those of a
    single-rank run."""
    world = MPI.COMM_WORLD
    G, m, _, _, _, _ = setup(shape, fixed, comm=world, backend=backend)
    assert G.problem.grid.decomp.size == world.size
    J, g, info = G(m)
    assert info["forward_converged"] and info["adjoint_converged"]
    g_glob = gather_cells(G.problem.grid.decomp, g, G.backend.to_host)
    ok = True
    if world.rank == 0:
        G1, m1, _, _, _, _ = setup(shape, fixed, comm=MPI.COMM_SELF, backend=backend)
        J1, g1, info1 = G1(m1)
        ok = (J == J1 and np.array_equal(g_glob, G1.backend.to_host(
                  g1, region=G1.problem.grid.decomp.owned()))
              and info["forward_iterations"] == info1["forward_iterations"]
              and info["adjoint_iterations"] == info1["adjoint_iterations"])
    assert world.bcast(ok, root=0)
