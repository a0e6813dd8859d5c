"""The JAX rule: check_grads in reverse mode, equality with hpcinv's own gradient (1 and N
ranks, eager and jitted), and the errors for bad inputs, disabled float64 or a missing extra."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from mpi4py import MPI

from autodiff_cases import TIGHT, check_against_hpcinv, make_case, random_block
from hpcinv.autodiff import darcy_observations_jax
from hpcinv.errors import ConfigError, MissingExtraError

jax.config.update("jax_enable_x64", True)


def _map(backend, new_model, obs, **kw):
    return darcy_observations_jax(new_model(), obs, backend=backend, params=TIGHT,
                                  adjoint_params=TIGHT, **kw)


def _jax_loss_and_grad(backend, jit):
    """``(new_model, obs, target, block) -> (J, g)`` by ``jax.value_and_grad`` through a fresh
    map (for :func:`check_against_hpcinv`)."""
    def run(new_model, obs, target, block):
        F = _map(backend, new_model, obs)
        W = 1 / obs.sigma**2
        vg = jax.value_and_grad(lambda m: 0.5 * jnp.sum(W * (F(m) - target) ** 2))
        return (jax.jit(vg) if jit else vg)(jnp.asarray(block))
    return run


@pytest.mark.parametrize("fixed_side", [False, True])
@pytest.mark.parametrize("return_pressure", [False, True])
def test_check_grads(backend, fixed_side, return_pressure):
    new_model, obs, _ = make_case(backend, (12, 8), fixed_side=fixed_side, every=5)
    F = _map(backend, new_model, obs, return_pressure=return_pressure)
    m = jnp.asarray(random_block(F.op.decomp, seed=1))
    check_grads(F, (m,), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("fixed_side", [False, True])
def test_equals_hpcinv_gradient(backend, jit, fixed_side):
    check_against_hpcinv(backend, _jax_loss_and_grad(backend, jit), fixed_side=fixed_side)


def test_pressure_output_is_gauge_fixed(backend):
    """Without a fixed side, P and d share one constant: d equals P sampled at the points."""
    new_model, obs, _ = make_case(backend, (31, 15), every=7)
    F = _map(backend, new_model, obs, return_pressure=True)
    d, P = F(jnp.asarray(random_block(F.op.decomp)))
    cells = obs.cells[:, 0, :]                        # nearest rule: one corner per point
    np.testing.assert_allclose(np.asarray(P)[tuple(cells.T)], np.asarray(d), rtol=0, atol=1e-14)
    W = 1 / obs.sigma**2
    assert abs(float(W @ np.asarray(d))) < 1e-12 * float(np.max(np.abs(d)))


@pytest.mark.mpi(min_size=2)
def test_equals_hpcinv_gradient_mpi(backend):
    check_against_hpcinv(backend, _jax_loss_and_grad(backend, jit=True), comm=MPI.COMM_WORLD)


@pytest.fixture(scope="module")
def small_map():
    from hpcinv.backend import make_backend
    bk = make_backend("host", threads=1)
    new_model, obs, _ = make_case(bk, (15, 9), every=3)
    return _map(bk, new_model, obs), new_model, obs, bk


@pytest.mark.parametrize("bad,match", [
    (jnp.zeros((16, 9)), r"shape \(16, 9\).*owned block \(15, 9\)"),
    (jnp.zeros((15, 9), dtype=jnp.float32), "dtype float32.*float64"),
    (jnp.zeros((15, 9), dtype=jnp.int32), "dtype int32"),
])
def test_bad_inputs(small_map, bad, match):
    F = small_map[0]
    with pytest.raises(ConfigError, match=match):
        F(bad)
    with pytest.raises(ConfigError, match=match):      # at trace time, under jit too
        jax.jit(F)(bad)


def test_float64_needs_x64(small_map):
    _, new_model, obs, bk = small_map
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ConfigError, match="jax_enable_x64"):
            darcy_observations_jax(new_model(), obs, backend=bk)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_missing_extra(monkeypatch):
    import hpcinv.autodiff as ad
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(MissingExtraError, match=r'pip install "hpcinv\[jax\]"'):
        ad.darcy_observations_jax


def test_ad_through_the_solver_agrees_with_the_adjoint():
    """Independent check of the adjoint gradient: JAX reverse-mode AD through a JAX copy of the
    APT loop (benchmarks/ad_vs_adjoint.py --check: forward equal to 1e-12, gradients to 1e-6
    at tol 1e-11, plain scan and nested checkpointing)."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "ad_vs_adjoint.py"),
                          "--check"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "check passed" in run.stdout + run.stderr
