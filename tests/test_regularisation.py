"""Gradient smoothing (the workshop's smooth_d!) and its transpose, the Tikhonov term and its
gradient: numpy references, dot tests, Taylor test, and bitwise decomposition invariance."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.errors import ConfigError
from hpcinv.model.grid import Grid
from hpcinv.inverse.regularisation import GradientSmoother, Tikhonov
from hpcinv.io import gather_cells

SHAPES = [(13, 9), (7, 6, 5)]


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-300)


def grid(shape, comm=MPI.COMM_SELF):
    return Grid(shape, [(0.0, 1.3 + a) for a in range(len(shape))], comm=comm)


def local(g, glob):
    d = g.decomp
    out = np.zeros(d.padded_shape)
    out[d.owned()] = glob[tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))]
    return out


def rand(g, seed):
    return local(g, np.random.default_rng(seed).standard_normal(g.shape))


def dot(g, a, b):
    own = g.decomp.owned()
    return g.comm.allreduce(float(np.sum(a[own] * b[own])), op=MPI.SUM)


def smooth_ref(A, c, n):
    """The workshop's smooth_d!: inner points only, undivided second differences."""
    A = A.copy()
    nd = A.ndim
    inner = tuple(slice(1, -1) for _ in range(nd))
    for _ in range(n):
        lap = np.zeros_like(A[inner])
        for a in range(nd):
            lo = tuple(slice(0, -2) if b == a else slice(1, -1) for b in range(nd))
            hi = tuple(slice(2, None) if b == a else slice(1, -1) for b in range(nd))
            lap += A[lo] - 2 * A[inner] + A[hi]
        A2 = A.copy()
        A2[inner] = A[inner] + c * lap
        A = A2
    return A


# ------------------------------------------------------------------------------- smoothing

@pytest.mark.parametrize("shape", SHAPES)
def test_smoothing_matches_reference(backend, shape):
    g = grid(shape)
    A = rand(g, 1)
    own = g.decomp.owned()
    S = GradientSmoother(g, backend, steps=3)
    assert S.coef == pytest.approx(0.8 / (2 * len(shape)))
    out = backend.to_host(S.apply(A))
    ref = smooth_ref(A[own], S.coef, 3)
    np.testing.assert_allclose(out[own], ref, rtol=0, atol=1e-13)
    # boundary cells unchanged, bitwise
    edge = np.ones(shape, bool)
    edge[tuple(slice(1, -1) for _ in shape)] = False
    assert np.array_equal(out[own][edge], A[own][edge])
    assert np.array_equal(A, rand(g, 1))          # input not modified
    A_dev = backend.upload(A)
    assert np.array_equal(backend.to_host(S.apply(A_dev)), out)    # backend input
    assert np.array_equal(backend.to_host(A_dev), A)               # not modified either
    S.apply(A_dev, out=A_dev)                     # in place
    assert np.array_equal(backend.to_host(A_dev, region=own), out[own])


def test_smoothing_preserves_constants_and_zero_steps(backend):
    g = grid((13, 9))
    C = local(g, np.full(g.shape, 2.5))
    assert np.array_equal(backend.to_host(GradientSmoother(g, backend, steps=5).apply(C)), C)
    A = rand(g, 2)
    assert np.array_equal(backend.to_host(GradientSmoother(g, backend, steps=0).apply(A)), A)


@pytest.mark.parametrize("coef,ndim,ok", [(0.25, 2, True), (0.2500001, 2, False),
                                          (1 / 6, 3, True), (0.2, 3, False), (-0.1, 2, False),
                                          (np.nan, 2, False), (0.0, 2, True)])
def test_smoothing_coefficient_validated(backend, coef, ndim, ok):
    g = grid((5, 4, 3)[:ndim])
    if ok:
        GradientSmoother(g, backend, steps=1, coef=coef)
    else:
        with pytest.raises(ConfigError, match="smoothing coefficient"):
            GradientSmoother(g, backend, steps=1, coef=coef)


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_smoothing_steps_validated(backend, steps):
    with pytest.raises(ConfigError, match="steps"):
        GradientSmoother(grid((5, 4)), backend, steps=steps)


def _smooth_dot(g, backend, seed):
    S = GradientSmoother(g, backend, steps=4, coef=0.9 / (2 * g.ndim))
    x, y = rand(g, seed), rand(g, seed + 1)
    h = backend.to_host
    return dot(g, h(S.apply(x)), y), dot(g, x, h(S.apply_transpose(y)))


@pytest.mark.parametrize("shape", SHAPES)
def test_smoothing_transpose_dot(backend, shape):
    lhs, rhs = _smooth_dot(grid(shape), backend, 3)
    assert abs(lhs) > 1e-3
    assert rel(lhs, rhs) < 1e-12


def test_smoothing_is_not_symmetric_at_the_boundary(backend):
    """So apply_transpose is really needed (and really differs from apply)."""
    g = grid((7, 6))
    S = GradientSmoother(g, backend, steps=1)
    x = rand(g, 9)
    own = g.decomp.owned()
    assert not np.allclose(backend.to_host(S.apply(x), region=own),
                           backend.to_host(S.apply_transpose(x), region=own))


# -------------------------------------------------------------------------------- Tikhonov

def tikhonov_ref(g, m, alpha):
    V = np.prod(g.spacing)
    return 0.5 * alpha * V * sum(np.sum((np.diff(m, axis=a) / h) ** 2)
                                 for a, h in enumerate(g.spacing))


@pytest.mark.parametrize("shape", SHAPES)
def test_tikhonov_value_and_symmetry(backend, shape):
    g = grid(shape)
    T = Tikhonov(g, backend, alpha=0.7)
    m = rand(g, 4)
    own = g.decomp.owned()
    h = backend.to_host
    J, G = T.value_and_gradient(m)
    assert J == pytest.approx(tikhonov_ref(g, m[own], 0.7), rel=1e-13)
    # linear: J = 1/2 <m, H m>, H symmetric
    assert J == pytest.approx(0.5 * dot(g, m, h(G)), rel=1e-12)
    x, y = rand(g, 5), rand(g, 6)
    lhs, rhs = dot(g, h(T.gradient(x)), y), dot(g, x, h(T.gradient(y)))
    assert abs(lhs) > 1e-3 and rel(lhs, rhs) < 1e-12
    # constants are in the null space
    J0, G0 = T.value_and_gradient(local(g, np.full(shape, 3.0)))
    assert J0 == 0.0 and not np.any(h(G0, region=own))


@pytest.mark.parametrize("shape", SHAPES)
def test_tikhonov_taylor(backend, shape):
    g = grid(shape)
    T = Tikhonov(g, backend, alpha=1e-2)
    m, dm = rand(g, 7), rand(g, 8)
    J0, G = T.value_and_gradient(m)
    gdm = dot(g, backend.to_host(G), dm)
    hs = [1e-3 / 2**k for k in range(5)]
    r1 = [abs(T.value(m + h * dm) - J0) for h in hs]
    r2 = [abs(T.value(m + h * dm) - J0 - h * gdm) for h in hs]
    s1 = np.log2(np.array(r1[:-1]) / np.array(r1[1:]))
    s2 = np.log2(np.array(r2[:-1]) / np.array(r2[1:]))
    assert np.all(np.abs(s1[-2:] - 1) < 0.1), s1
    assert np.all(np.abs(s2 - 2) < 0.1), s2


def test_tikhonov_finite_differences_per_cell(backend):
    g = grid((6, 5))
    T = Tikhonov(g, backend, alpha=2.0)
    m = rand(g, 10)
    G = backend.to_host(T.gradient(m))
    h = 1e-4
    for c in [(1, 1), (3, 2), (6, 5), (1, 5), (4, 1)]:   # corners, edges, interior
        e = np.zeros_like(m)
        e[c] = 1.0
        fd = (T.value(m + h * e) - T.value(m - h * e)) / (2 * h)
        assert fd == pytest.approx(G[c], rel=1e-7, abs=1e-9)


def test_tikhonov_accumulates_and_validates(backend):
    g = grid((6, 5))
    T = Tikhonov(g, backend, alpha=1.0)
    m = rand(g, 11)
    h = backend.to_host
    G = h(T.gradient(m))
    base = rand(g, 12)
    acc = T.gradient(m, out=backend.upload(base), accumulate=True)
    own = g.decomp.owned()
    assert np.array_equal(h(acc, region=own), base[own] + G[own])
    assert np.array_equal(h(T.gradient(m, out=backend.upload(base)), region=own), G[own])
    for bad in (-1.0, np.inf, "x"):
        with pytest.raises(ConfigError, match="alpha"):
            Tikhonov(g, backend, alpha=bad)
    with pytest.raises(ConfigError, match="padded local shape"):
        T.gradient(np.zeros((3, 3)))


# --------------------------------------------------------------------------------------- MPI

@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape", SHAPES)
def test_transpose_and_symmetry_distributed(backend, shape):
    g = grid(shape, MPI.COMM_WORLD)
    lhs, rhs = _smooth_dot(g, backend, 3)
    assert rel(lhs, rhs) < 1e-12
    T = Tikhonov(g, backend, alpha=0.7)
    x, y = rand(g, 5), rand(g, 6)
    h = backend.to_host
    assert rel(dot(g, h(T.gradient(x)), y), dot(g, x, h(T.gradient(y)))) < 1e-12


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shape", SHAPES)
def test_bitwise_independent_of_decomposition(backend, shape):
    world = MPI.COMM_WORLD
    g = grid(shape, world)
    A = rand(g, 1)
    S = GradientSmoother(g, backend, steps=5)
    T = Tikhonov(g, backend, alpha=0.3)
    h = backend.to_host
    sm = gather_cells(g.decomp, S.apply(A), h)
    smT = gather_cells(g.decomp, S.apply_transpose(A), h)
    J, G = T.value_and_gradient(A)
    Gg = gather_cells(g.decomp, G, h)
    assert len(set(world.allgather(J))) == 1
    if world.rank == 0:
        g1 = grid(shape)
        A1 = rand(g1, 1)
        own = g1.decomp.owned()
        assert np.array_equal(sm, h(GradientSmoother(g1, backend, steps=5).apply(A1), own))
        assert np.array_equal(smT, h(GradientSmoother(g1, backend, steps=5)
                                     .apply_transpose(A1), own))
        J1, G1 = Tikhonov(g1, backend, alpha=0.3).value_and_gradient(A1)
        assert np.array_equal(Gg, h(G1, own))
        assert J == pytest.approx(J1, rel=1e-13)   # one SUM reduction: equal to rounding only
