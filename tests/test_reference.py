"""The APT solution matches a direct sparse solve of the same discrete operator (2D and 3D).

Tolerance: the solver stops when max|div q - Qf| / max|Qf| < tol. The pressure error that
remains is bounded by the inverse operator's norm times that residual; on the grids used here
the measured max|Pf - Pref| / max|Pref| at tol = 1e-10 is at most ~1.2e-8 (geothermal2d 40x23,
~115 tol), 3.4e-10 in 3D, <= 6e-10 for the lognormal fields (K contrast 2e5..2e6), and the
flux error relative to max|qref| is of the same size. We assert < 1e3 * tol, which leaves
roughly an order of magnitude of headroom and still fails for any discretisation mismatch
(those give O(1e-2..1) errors), for a wrong gauge, or for an unconverged solve.
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from conftest import global_fields, owned, owned_faces, problem_from_global
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import PTParams, solve_forward
from reference import fluxes, kmax_local, residual, solve_reference

TOL = 1e-10
BOUND = 1e3 * TOL


def lognormal_problem(shape, seed=1, sigma=2.0, extent=None):
    """Random lognormal K (contrast ~1e5..1e6 for sigma = 2) with a well pair at two corners."""
    rng = np.random.default_rng(seed)
    K = np.exp(sigma * rng.standard_normal(shape))
    Qf = np.zeros(shape)
    Qf[(2,) * len(shape)] = 1.0 / np.prod([1.0 / n for n in shape])
    Qf[tuple(n - 3 for n in shape)] = -Qf[(2,) * len(shape)]
    return problem_from_global("lognormal", K, Qf, extent=extent, comm=MPI.COMM_SELF)


def random_source_problem(shape, seed=7, sigma=1.0):
    """Lognormal K and a dense zero-mean random source (exercises every cell's equation)."""
    rng = np.random.default_rng(seed)
    K = np.exp(sigma * rng.standard_normal(shape))
    Qf = rng.standard_normal(shape)
    Qf -= Qf.mean()
    return problem_from_global("random-source", K, Qf, comm=MPI.COMM_SELF)


PROBLEMS = {
    "geothermal2d-31x17": lambda: geothermal2d((31, 17), comm=MPI.COMM_SELF),
    "geothermal2d-40x23": lambda: geothermal2d((40, 23), comm=MPI.COMM_SELF),
    "geothermal3d-15x9x11": lambda: geothermal3d((15, 9, 11), comm=MPI.COMM_SELF),
    "geothermal3d-12x10x13": lambda: geothermal3d((12, 10, 13), comm=MPI.COMM_SELF),
    "lognormal2d-33x21": lambda: lognormal_problem((33, 21)),
    "lognormal2d-aniso": lambda: lognormal_problem((24, 16), seed=3,
                                                   extent=((0.0, 3.0), (-1.0, 0.5))),
    "lognormal3d-12x10x9": lambda: lognormal_problem((12, 10, 9)),
    "randsrc2d-20x14": lambda: random_source_problem((20, 14)),
    "randsrc3d-9x8x7": lambda: random_source_problem((9, 8, 7)),
}


def rel(a, b, scale):
    return float(np.max(np.abs(a - b)) / scale)


# --- the reference itself ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["geothermal2d-31x17", "lognormal3d-12x10x9",
                                  "randsrc2d-20x14"])
def test_reference_solves_its_equations(name):
    """The direct solution satisfies div(-Kf grad P) = Qf (checked through an independent
    flux-difference evaluation) and the gauge sum(Kmax_loc P) = 0."""
    p = PROBLEMS[name]()
    K, Qf = global_fields(p)
    P = solve_reference(K, Qf, p.grid.spacing)
    assert np.max(np.abs(residual(K, Qf, P, p.grid.spacing))) < 1e-11 * np.max(np.abs(Qf))
    c = kmax_local(K)
    assert abs(np.sum(c * P)) < 1e-12 * np.sum(c * np.abs(P))
    assert np.max(np.abs(P)) > 0


def test_kmax_local_by_hand():
    K = np.array([[1.0, 5.0, 1.0],
                  [2.0, 1.0, 1.0],
                  [1.0, 1.0, 7.0]])
    expect = np.array([[5.0, 5.0, 5.0],
                       [2.0, 5.0, 7.0],
                       [2.0, 7.0, 7.0]])
    np.testing.assert_array_equal(kmax_local(K), expect)


def test_reference_fluxes_vanish_on_walls():
    p = PROBLEMS["geothermal3d-15x9x11"]()
    K, Qf = global_fields(p)
    q = fluxes(K, solve_reference(K, Qf, p.grid.spacing), p.grid.spacing)
    for a, qa in enumerate(q):
        assert qa.shape[a] == K.shape[a] + 1
        assert np.all(np.take(qa, 0, axis=a) == 0) and np.all(np.take(qa, -1, axis=a) == 0)
        assert np.max(np.abs(qa)) > 0


# --- APT vs direct ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_apt_matches_direct_solve(name, backend):
    p = PROBLEMS[name]()
    K, Qf = global_fields(p)
    h = p.grid.spacing
    Pref = solve_reference(K, Qf, h)
    s = solve_forward(p, backend, PTParams(tol=TOL, ncheck=10, maxiter=50000))
    assert s.result.converged and s.result.residual < TOL
    Pf = np.asarray(owned(s.Pf))
    # the APT conserves the gauge the reference imposes
    c = kmax_local(K)
    assert abs(np.sum(c * Pf)) < 1e-12 * np.sum(c * np.abs(Pf))
    err = rel(Pf, Pref, np.max(np.abs(Pref)))
    assert err < BOUND, f"{name}: max|Pf - Pref|/max|Pref| = {err:.3e}"
    # fluxes: q_a = -Kf grad Pref on every face, zero on the walls
    qref = fluxes(K, Pref, h)
    qscale = max(np.max(np.abs(x)) for x in qref)
    for a in range(K.ndim):
        qa = owned_faces(np.asarray(s.q[a]), a)
        assert qa.shape == qref[a].shape
        assert np.all(np.take(qa, 0, axis=a) == 0) and np.all(np.take(qa, -1, axis=a) == 0)
        errq = rel(qa, qref[a], qscale)
        assert errq < BOUND, f"{name}: flux q{'xyz'[a]} error {errq:.3e}"


def test_tighter_tolerance_gives_smaller_error(backend):
    """The error is governed by tol: 100x smaller tol -> clearly smaller error (not a fluke)."""
    p = PROBLEMS["geothermal2d-40x23"]()
    K, Qf = global_fields(p)
    Pref = solve_reference(K, Qf, p.grid.spacing)
    errs = []
    for tol in (1e-6, 1e-8):
        s = solve_forward(p, backend, PTParams(tol=tol, ncheck=10))
        errs.append(rel(owned(s.Pf), Pref, np.max(np.abs(Pref))))
    assert errs[1] < errs[0] / 20, errs
    assert errs[0] < 1e3 * 1e-6


# --- fixed-pressure sides ---------------------------------------------------------------------
# (name, problem factory, {(axis, side): Pb}): one and several fixed sides, 2D and 3D, nonzero Pb
# (distinct per side, so a side/axis mix-up shows), K from the workshop barrier (contrast 1e6)
# and from lognormal fields.
FIXED_CASES = [
    ("geothermal2d-31x17-left", lambda: geothermal2d((31, 17), comm=MPI.COMM_SELF),
     {(0, 0): 2.5}),
    ("geothermal2d-40x23-top", lambda: geothermal2d((40, 23), comm=MPI.COMM_SELF),
     {(1, 1): -1.5}),
    ("lognormal2d-aniso-3sides", lambda: lognormal_problem((24, 16), seed=3,
                                                           extent=((0.0, 3.0), (-1.0, 0.5))),
     {(0, 0): 1.0, (0, 1): -2.0, (1, 0): 0.75}),
    ("randsrc2d-20x14-all", lambda: random_source_problem((20, 14)),
     {(0, 0): 1.0, (0, 1): 2.0, (1, 0): -3.0, (1, 1): 0.5}),
    ("geothermal3d-15x9x11-zlo", lambda: geothermal3d((15, 9, 11), comm=MPI.COMM_SELF),
     {(2, 0): 3.0}),
    ("lognormal3d-12x10x9-xy", lambda: lognormal_problem((12, 10, 9)),
     {(0, 1): -1.0, (1, 0): 2.0}),
    ("randsrc3d-9x8x7-4sides", lambda: random_source_problem((9, 8, 7)),
     {(0, 0): 1.0, (1, 1): -0.5, (2, 0): 0.25, (2, 1): 2.0}),
]


def _fixed_case(name):
    for n, make, fixed in FIXED_CASES:
        if n == name:
            p = make()
            p.fixed_pressure = dict(fixed)
            return p
    raise KeyError(name)


@pytest.mark.parametrize("name", [c[0] for c in FIXED_CASES])
def test_reference_with_fixed_sides_solves_its_equations(name):
    """The direct solution satisfies the flux-difference residual (computed independently of
    the sparse matrix, with the half-cell boundary fluxes) and is not gauge-shifted: adding a
    constant breaks it (the system is nonsingular)."""
    p = _fixed_case(name)
    K, Qf = global_fields(p)
    h, fixed = p.grid.spacing, p.fixed_pressure
    P = solve_reference(K, Qf, h, fixed)
    scale = max(np.max(np.abs(Qf)), max(2 * np.max(K) * abs(v) / min(h) ** 2
                                        for v in fixed.values()))
    assert np.max(np.abs(residual(K, Qf, P, h, fixed))) < 1e-11 * scale
    assert np.max(np.abs(residual(K, Qf, P + 1.0, h, fixed))) > 1e-3 * np.min(K)
    q = fluxes(K, P, h, fixed)
    for a, qa in enumerate(q):
        for side in (0, 1):
            wall = np.take(qa, -side, axis=a)
            if (a, side) in fixed:
                assert np.max(np.abs(wall)) > 0
            else:
                assert np.all(wall == 0)


def test_reference_fixed_side_by_hand():
    """1 x n column: K = 1, no source, P(lower y) = 1, P(upper y) = 0: the exact solution is
    linear between the boundary faces, P(y_c) = 1 - y_c, and the fixed faces enter with half a
    cell's distance."""
    n = 5
    K, Qf = np.ones((1, n)), np.zeros((1, n))
    h = (1.0, 1.0 / n)
    P = solve_reference(K, Qf, h, {(1, 0): 1.0, (1, 1): 0.0})
    yc = (np.arange(n) + 0.5) / n
    np.testing.assert_allclose(P[0], 1.0 - yc, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", [c[0] for c in FIXED_CASES])
def test_apt_matches_direct_solve_fixed_pressure(name, backend):
    p = _fixed_case(name)
    K, Qf = global_fields(p)
    h, fixed = p.grid.spacing, p.fixed_pressure
    Pref = solve_reference(K, Qf, h, fixed)
    s = solve_forward(p, backend, PTParams(tol=TOL, ncheck=10, maxiter=50000))
    assert s.result.converged and s.result.residual < TOL
    Pf = np.asarray(owned(s.Pf))
    err = rel(Pf, Pref, np.max(np.abs(Pref)))
    assert err < BOUND, f"{name}: max|Pf - Pref|/max|Pref| = {err:.3e}"
    qref = fluxes(K, Pref, h, fixed)
    qscale = max(np.max(np.abs(x)) for x in qref)
    for a in range(K.ndim):
        qa = owned_faces(np.asarray(s.q[a]), a)
        assert qa.shape == qref[a].shape
        for side in (0, 1):
            if (a, side) not in fixed:
                assert np.all(np.take(qa, -side, axis=a) == 0)
        errq = rel(qa, qref[a], qscale)
        assert errq < BOUND, f"{name}: flux q{'xyz'[a]} error {errq:.3e}"
