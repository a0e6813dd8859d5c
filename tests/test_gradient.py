"""The adjoint-state gradient: Taylor test (rate 2 with the gradient, 1 without) and
decomposition invariance of J and dJ/dlogK."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.backend import make_backend
from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.inverse.regularisation import Tikhonov
from hpcinv.io import gather_cells
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import PTParams, solve_forward

TIGHT = PTParams(tol=1e-13, ncheck=20, maxiter=400000)


def _observation_points(ndim):
    axes = [np.linspace(-1 / 3, 1 / 3, 8), np.linspace(0.25, 0.85, 8)]
    if ndim == 3:
        axes.append(np.array([0.35, 0.65]))
    return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)


def _setup(make, shape, comm, alpha=0.0):
    bk = make_backend("host")
    true = make(shape, comm=comm)
    obs = Observations(true.grid, _observation_points(len(shape)))
    obs.record(solve_forward(true, bk, TIGHT).Pf, bk)
    prob = make(shape, comm=comm)
    d = prob.grid.decomp
    rng = np.random.default_rng(3)
    own = tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))
    m = np.zeros(d.padded_shape)
    dm = np.zeros(d.padded_shape)
    m[d.owned()] = 0.3 * rng.standard_normal(shape)[own]
    dm[d.owned()] = rng.standard_normal(shape)[own]
    tik = Tikhonov(prob.grid, bk, alpha) if alpha else None
    return AdjointGradient(prob, obs, bk, TIGHT, TIGHT, tik), m, dm, d


@pytest.mark.parametrize("alpha", [0.0, 1e-4])
@pytest.mark.parametrize("make,shape", [(geothermal2d, (31, 15)), (geothermal3d, (13, 7, 7))])
def test_taylor(make, shape, alpha):
    G, m, dm, d = _setup(make, shape, MPI.COMM_SELF, alpha)
    J0, g, info = G(m)
    assert info["forward_converged"] and info["adjoint_converged"]
    ghosts = np.ones(d.padded_shape, bool)
    ghosts[d.owned()] = False
    g = G.backend.to_host(g)
    assert not np.any(g[ghosts])                      # the gradient lives on owned cells only
    gdm = float(np.sum(g[d.owned()] * dm[d.owned()]))
    hs = [0.02 / 2**k for k in range(6)]
    r1, r2 = [], []
    for h in hs:
        Jh = G(m + h * dm)[0]
        r1.append(abs(Jh - J0))
        r2.append(abs(Jh - J0 - h * gdm))
    s1 = np.log2(np.array(r1[:-1]) / np.array(r1[1:]))
    s2 = np.log2(np.array(r2[:-1]) / np.array(r2[1:]))
    assert np.all(np.abs(s1[-2:] - 1) < 0.1), s1
    assert np.all(np.abs(s2 - 2) < 0.1), s2


def test_misfit_is_invariant_to_a_pressure_constant():
    G, m, dm, d = _setup(geothermal2d, (15, 7), MPI.COMM_SELF)
    G(m)
    P = G.backend.to_host(G.Pf_forward)
    J1, rhs1 = G.obs.misfit_and_source(P)
    J2, rhs2 = G.obs.misfit_and_source(P + 123.0)
    assert J1 == pytest.approx(J2, rel=1e-10)
    assert abs(rhs1.sum()) < 1e-12 * np.abs(rhs1).sum()


@pytest.mark.mpi(min_size=2)
def test_gradient_independent_of_decomposition():
    world = MPI.COMM_WORLD
    G, m, _, d = _setup(geothermal2d, (23, 11), world)
    J, g, _ = G(m)
    g_glob = gather_cells(d, g, G.backend.to_host)
    if world.rank == 0:
        G1, m1, _, d1 = _setup(geothermal2d, (23, 11), MPI.COMM_SELF)
        J1, g1, _ = G1(m1)
        assert J == J1
        assert np.array_equal(g_glob, G1.backend.to_host(g1, region=d1.owned()))


def test_cli_gradient_writes_global_datasets(tmp_path):
    import h5py

    from hpcinv.app.cli import main
    out = tmp_path / "g"
    assert main(["gradient", "--nx", "31", "--ny", "15", "-q", "-o", str(out)]) == 0
    with h5py.File(out / "gradient.h5") as f:
        g, gs = f["dJ_dlogK"][...], f["dJ_dlogK_smoothed"][...]
        assert g.shape == gs.shape == (31, 15)
        assert f.attrs["J"] > 0
        assert f.attrs["forward_iterations"] > 0 and f.attrs["adjoint_iterations"] > 0
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    # smoothing damps the gradient's roughness: compare total variation
    assert np.abs(np.diff(gs, axis=0)).sum() < np.abs(np.diff(g, axis=0)).sum()


def test_cli_gradient_fixed_pressure_side(tmp_path):
    import h5py

    from hpcinv.app.cli import main
    cfg = tmp_path / "c.toml"
    cfg.write_text("[boundary]\nx_lo = 0.0\n[grid]\nnx = 31\nny = 15\n")
    out = tmp_path / "g"
    assert main(["gradient", str(cfg), "-q", "-o", str(out)]) == 0
    with h5py.File(out / "gradient.h5") as f:
        assert np.all(np.isfinite(f["dJ_dlogK"][...]))


def test_nonfinite_logK_is_rejected():
    from hpcinv.errors import ConfigError
    G, m, _, _ = _setup(geothermal2d, (15, 7), MPI.COMM_SELF)
    m[3, 3] = np.nan
    with pytest.raises(ConfigError, match="logK must be finite"):
        G(m)
