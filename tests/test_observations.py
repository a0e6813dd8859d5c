"""Observation operator (nearest / bi-trilinear), its transpose, the weighted (demeaned) misfit
and its derivative, input validation, and bitwise decomposition invariance under MPI."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.errors import ConfigError
from hpcinv.model.grid import Grid
from hpcinv.inverse.observations import Observations
from hpcinv.model.geothermal import workshop_points
from hpcinv.io import gather_cells

SHAPES = [(13, 9), (7, 6, 5)]
EXTENT = {2: ((-1.0, 1.0), (0.0, 1.0)), 3: ((-1.0, 1.0), (0.0, 1.0), (0.0, 1.0))}


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-300)


def grid(shape, comm=MPI.COMM_SELF):
    return Grid(shape, EXTENT[len(shape)], comm=comm)


def local(g, glob):
    """Padded local block of a global (unpadded) array; ghosts zero."""
    d = g.decomp
    out = np.zeros(d.padded_shape)
    out[d.owned()] = glob[tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))]
    return out


def random_points(g, n, rng, margin=0.0):
    lo = np.array([a for a, _ in g.extent]) - margin
    hi = np.array([b for _, b in g.extent]) + margin
    pts = lo + (hi - lo) * rng.random((n, g.ndim))
    return np.clip(pts, [a for a, _ in g.extent], [b for _, b in g.extent])


def test_workshop_points():
    p2, p3 = workshop_points(2), workshop_points(3)
    assert p2.shape == (64, 2) and p3.shape == (256, 3)
    assert p2[:, 0].min() == pytest.approx(-1 / 3) and p2[:, 0].max() == pytest.approx(1 / 3)
    assert p2[:, 1].min() == pytest.approx(0.25) and p2[:, 1].max() == pytest.approx(0.85)
    assert sorted(set(np.round(p3[:, 2], 12))) == pytest.approx([0.25, 5 / 12, 7 / 12, 0.75])
    with pytest.raises(ConfigError):
        workshop_points(1)


def test_nearest_is_the_workshop_rule():
    g = grid((13, 9))
    glob = np.arange(13)[:, None] * 100.0 + np.arange(9)[None, :]
    pts = np.array([[-1.0, 0.0], [1.0, 1.0], [0.01, 0.5], [-0.99, 0.98]])
    obs = Observations(g, pts)
    dx, dy = g.spacing
    expect = []
    for x, y in pts:
        i = int(np.clip(np.floor((x - (-1 + dx / 2)) / dx), 0, 12))
        j = int(np.clip(np.floor((y - dy / 2) / dy), 0, 8))
        expect.append(glob[i, j])
    assert np.array_equal(obs.sample(local(g, glob)), expect)


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_is_exact_for_affine_fields(shape):
    g = grid(shape)
    nd = len(shape)
    coef = np.array([0.3, -1.7, 2.2][:nd])
    centres = np.meshgrid(*[g.global_centres(a) for a in range(nd)], indexing="ij")
    glob = 0.5 + sum(c * x for c, x in zip(coef, centres))
    rng = np.random.default_rng(1)
    # inside the hull of the centres: exact
    lo = np.array([c[0] for c in (g.global_centres(a) for a in range(nd))])
    hi = np.array([c[-1] for c in (g.global_centres(a) for a in range(nd))])
    pts = lo + (hi - lo) * rng.random((40, nd))
    sim = Observations(g, pts, method="linear").sample(local(g, glob))
    np.testing.assert_allclose(sim, 0.5 + pts @ coef, rtol=0, atol=1e-13)
    # in the boundary half-cells the coordinate is clamped to the first/last centre
    pts = random_points(g, 60, rng, margin=0.2)
    sim = Observations(g, pts, method="linear").sample(local(g, glob))
    np.testing.assert_allclose(sim, 0.5 + np.clip(pts, lo, hi) @ coef, rtol=0, atol=1e-13)


def test_linear_at_centres_equals_nearest():
    g = grid((13, 9))
    glob = np.random.default_rng(2).standard_normal((13, 9))
    pts = np.stack(np.meshgrid(g.global_centres(0)[[0, 4, 12]], g.global_centres(1)[[0, 3, 8]],
                               indexing="ij"), -1).reshape(-1, 2)
    P = local(g, glob)
    np.testing.assert_allclose(Observations(g, pts, method="linear").sample(P),
                               Observations(g, pts + 1e-12).sample(P), rtol=0, atol=1e-10)


def _dot_test(g, method, seed):
    """<S P, r> (full-length, same on every rank) and <P, S^T r> (owned cells, SUM)."""
    rng = np.random.default_rng(seed)
    pts = random_points(g, 37, rng, margin=0.1)
    pts[:3] = [a for a, _ in g.extent]          # a corner and coincident points
    pts[3] = pts[4]
    glob = rng.standard_normal(g.shape)
    r = rng.standard_normal(len(pts))
    obs = Observations(g, pts, method=method)
    P = local(g, glob)
    lhs = float(obs.sample(P) @ r)
    St = obs.spread(r)
    own = g.decomp.owned()
    rhs = g.comm.allreduce(float(np.sum(P[own] * St[own])), op=MPI.SUM)
    return lhs, rhs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_transpose_dot(shape, method):
    lhs, rhs = _dot_test(grid(shape), method, seed=len(shape))
    assert abs(lhs) > 1e-3
    assert rel(lhs, rhs) < 1e-12


def _misfit_setup(shape, method, demean, sigma, comm=MPI.COMM_SELF, seed=5):
    g = grid(shape, comm)
    rng = np.random.default_rng(seed)
    pts = random_points(g, 25, rng, margin=0.05)
    values = rng.standard_normal(len(pts))
    sig = 0.3 + rng.random(len(pts)) if sigma else None
    obs = Observations(g, pts, values=values, sigma=sig, method=method, demean=demean)
    P = local(g, rng.standard_normal(g.shape))
    dP = local(g, rng.standard_normal(g.shape))
    return g, obs, P, dP


@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("demean", [True, False])
@pytest.mark.parametrize("sigma", [False, True])
def test_misfit_derivative_by_finite_differences(method, demean, sigma):
    g, obs, P, dP = _misfit_setup((13, 9), method, demean, sigma)
    J, src = obs.misfit_and_source(P)
    gdP = float(np.sum(src[g.decomp.owned()] * dP[g.decomp.owned()]))
    h = 1e-3     # J is quadratic in P: the central difference is exact up to rounding
    fd = (obs.misfit(P + h * dP) - obs.misfit(P - h * dP)) / (2 * h)
    assert rel(fd, gdP) < 1e-8
    # and the explicit formula
    sim = obs.sample(P)
    s = obs.sigma
    d = sim - obs.values
    if demean:
        d = d - np.sum(d / s**2) / np.sum(1 / s**2)
    assert J == pytest.approx(0.5 * np.sum((d / s) ** 2), rel=1e-13)


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_demeaned_misfit_is_gauge_invariant(method):
    g, obs, P, _ = _misfit_setup((13, 9), method, True, True)
    J1, src1 = obs.misfit_and_source(P)
    J2, _ = obs.misfit_and_source(P + 123.0)
    assert J1 == pytest.approx(J2, rel=1e-10)
    assert abs(src1.sum()) < 1e-13 * np.abs(src1).sum()
    g, obs, P, _ = _misfit_setup((13, 9), method, False, True)
    assert obs.misfit(P + 1.0) != pytest.approx(obs.misfit(P), rel=1e-3)


def test_unweighted_demeaning_matches_the_previous_rule():
    g, obs, P, _ = _misfit_setup((13, 9), "nearest", True, False)
    sim = obs.sample(P)
    r = (sim - sim.mean()) - (obs.values - obs.values.mean())
    np.testing.assert_allclose(obs.residuals(P), r, rtol=0, atol=1e-13)


def test_record_and_float32_source():
    g = grid((13, 9))
    obs = Observations(g, workshop_points(2), method="linear")
    with pytest.raises(ConfigError, match="no values"):
        obs.misfit(np.zeros(g.decomp.padded_shape))
    P = local(g, np.random.default_rng(0).standard_normal(g.shape))
    obs.record(P)
    J, src = obs.misfit_and_source(P.astype(np.float32))
    assert src.dtype == np.float32 and src.shape == g.decomp.padded_shape
    assert obs.misfit(P) == 0.0


@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_arrays_give_the_host_results(backend, method, dtype):
    """With ``backend=``, Pf is a backend array (read by ``backend.gather``) and the adjoint
    source is a new backend array: bitwise the results of host arrays."""
    g, obs, P, _ = _misfit_setup((13, 9), method, True, True)
    P = P.astype(dtype)
    Pd = backend.upload(P)
    assert np.array_equal(obs.sample(Pd, backend), obs.sample(P))
    assert np.array_equal(obs.residuals(Pd, backend), obs.residuals(P))
    assert obs.misfit(Pd, backend) == obs.misfit(P)
    J, src = obs.misfit_and_source(P)
    Jd, srcd = obs.misfit_and_source(Pd, backend)
    assert Jd == J and srcd.dtype == src.dtype == dtype
    assert np.array_equal(backend.to_host(srcd), src)
    r = np.random.default_rng(1).standard_normal(len(obs))
    assert np.array_equal(backend.to_host(obs.spread(r, backend)), obs.spread(r))
    ref = Observations(g, obs.points, method=method)
    ref.record(P)
    obs2 = Observations(g, obs.points, method=method)
    obs2.record(Pd, backend)
    assert np.array_equal(obs2.values, ref.values)


@pytest.mark.parametrize("kwargs,match", [
    (dict(points=[[1.5, 0.5]]), r"point 0 \(1.5, 0.5\) lies outside the domain"),
    (dict(points=[[0.0, 0.5], [0.0, -0.01]]), r"point 1 .* outside"),
    (dict(points=[[np.nan, 0.5]]), "not finite"),
    (dict(points=[[0.0, 0.5, 0.5]]), r"shape \(n, 2\)"),
    (dict(points=np.zeros((0, 2))), r"shape \(n, 2\)"),
    (dict(points=[[0.0, 0.5]], values=[np.nan]), "value 0 .* not finite"),
    (dict(points=[[0.0, 0.5]], values=[np.inf]), "not finite"),
    (dict(points=[[0.0, 0.5]], values=[1.0, 2.0]), r"values must have shape \(1,\)"),
    (dict(points=[[0.0, 0.5]], sigma=0.0), "sigma 0 must be positive"),
    (dict(points=[[0.0, 0.5], [0.1, 0.5]], sigma=[1.0, -2.0]), "sigma 1 must be positive"),
    (dict(points=[[0.0, 0.5]], sigma=np.nan), "sigma 0 must be positive and finite"),
    (dict(points=[[0.0, 0.5]], sigma=[1.0, 1.0]), "sigma must be a scalar or have shape"),
    (dict(points=[[0.0, 0.5]], method="cubic"), "unknown observation method"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match) as exc:
        Observations(grid((13, 9)), **kwargs)
    assert "\n" not in str(exc.value)


def test_points_on_the_walls_are_accepted():
    g = grid((13, 9))
    for method in ("nearest", "linear"):
        obs = Observations(g, [[-1.0, 0.0], [1.0, 1.0]], method=method)
        assert obs.sample(local(g, np.ones(g.shape))) == pytest.approx([1.0, 1.0])


# --------------------------------------------------------------------------------------- MPI

@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape", SHAPES)
def test_transpose_dot_distributed(shape):
    for method in ("nearest", "linear"):
        lhs, rhs = _dot_test(grid(shape, MPI.COMM_WORLD), method, seed=len(shape))
        assert rel(lhs, rhs) < 1e-12, method


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_bitwise_independent_of_decomposition(shape, method):
    world = MPI.COMM_WORLD
    g, obs, P, _ = _misfit_setup(shape, method, True, True, comm=world)
    sim = obs.sample(P)
    J, src = obs.misfit_and_source(P)
    src_glob = gather_cells(g.decomp, src)
    # every rank holds the same full-length values
    assert all(np.array_equal(sim, s) for s in world.allgather(sim))
    assert len(set(world.allgather(J))) == 1
    if world.rank == 0:
        g1, obs1, P1, _ = _misfit_setup(shape, method, True, True)
        J1, src1 = obs1.misfit_and_source(P1)
        assert np.array_equal(sim, obs1.sample(P1))
        assert J == J1
        assert np.array_equal(src_glob, src1[g1.decomp.owned()])
