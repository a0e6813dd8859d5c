"""The PyTorch layer: gradcheck, equality with hpcinv's own gradient (1 and N ranks), tapes,
warm starts and the errors for bad inputs or a missing extra."""
import sys

import numpy as np
import pytest
import torch
from mpi4py import MPI

from autodiff_cases import (TIGHT, block_of, check_against_hpcinv, make_case, random_block,
                            reference_gradient, relative_difference)
from hpcinv.autodiff import DarcyObservationsTorch
from hpcinv.errors import ConfigError, MissingExtraError
from hpcinv.solvers import PTParams


def _layer(backend, new_model, obs, **kw):
    return DarcyObservationsTorch(new_model(), obs, backend=backend, params=TIGHT,
                                  adjoint_params=TIGHT, **kw)


def _torch_loss_and_grad(backend):
    """``(new_model, obs, target, block) -> (J, g)`` through a fresh layer (for
    :func:`check_against_hpcinv`)."""
    def run(new_model, obs, target, block):
        return _loss_and_grad(_layer(backend, new_model, obs), block, target, 1 / obs.sigma**2)
    return run


def _loss_and_grad(layer, block, target, W):
    x = torch.tensor(block, requires_grad=True)
    d = layer(x)
    loss = 0.5 * (torch.from_numpy(W) * (d - torch.from_numpy(target)) ** 2).sum()
    loss.backward()
    return loss.item(), x.grad.numpy()


@pytest.mark.parametrize("fixed_side", [False, True])
@pytest.mark.parametrize("return_pressure", [False, True])
def test_gradcheck(backend, fixed_side, return_pressure):
    new_model, obs, _ = make_case(backend, (12, 8), fixed_side=fixed_side, every=5)
    layer = _layer(backend, new_model, obs, return_pressure=return_pressure)
    x = torch.tensor(random_block(layer.op.decomp, seed=1), requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("shape,fixed_side,sigma", [((31, 15), False, None),
                                                    ((31, 15), False, "varying"),
                                                    ((31, 15), True, None),
                                                    ((11, 7, 7), False, None)])
def test_equals_hpcinv_gradient(backend, shape, fixed_side, sigma):
    nobs = len(make_case(backend, (5, 5) if len(shape) == 2 else (5, 5, 5))[1])
    sig = np.linspace(0.5, 2.0, nobs) if sigma else None
    check_against_hpcinv(backend, _torch_loss_and_grad(backend), shape, fixed_side=fixed_side,
                         sigma=sig)


@pytest.mark.mpi(min_size=2)
def test_equals_hpcinv_gradient_mpi(backend):
    comm = MPI.COMM_WORLD
    g = check_against_hpcinv(backend, _torch_loss_and_grad(backend), comm=comm)
    # and the same numbers as one rank holding the whole grid
    serial_model, serial_obs, _ = make_case(backend, (31, 15))
    _, g_serial = reference_gradient(backend, serial_model(), serial_obs,
                                     random_block(serial_model().grid.decomp))
    decomp = make_case(backend, (31, 15), comm=comm)[0]().grid.decomp
    assert relative_difference(comm, g, block_of(decomp, g_serial)) < 1e-10


@pytest.mark.mpi(min_size=2)
def test_cotangent_must_be_replicated(backend):
    comm = MPI.COMM_WORLD
    new_model, obs, target = make_case(backend, (15, 9), comm=comm, every=4)
    layer = _layer(backend, new_model, obs)
    d = layer(torch.zeros(layer.op.local_shape, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ConfigError, match="differs between MPI ranks"):
        (d.sum() * (comm.rank + 1)).backward()      # a loss that is not the same on all ranks


def test_tape_belongs_to_its_forward_call(backend):
    """Backward of an earlier call after a later forward call uses the earlier model."""
    new_model, obs, target = make_case(backend, (15, 9), every=3)
    layer = _layer(backend, new_model, obs)
    W = 1 / obs.sigma**2
    a, b = (random_block(layer.op.decomp, seed=s) for s in (4, 5))
    _, g_alone = _loss_and_grad(layer, a, target, W)
    xa, xb = (torch.tensor(m, requires_grad=True) for m in (a, b))
    la = 0.5 * ((layer(xa) - torch.from_numpy(target)) ** 2).sum()
    layer(xb).sum().backward()
    la.backward()
    assert np.array_equal(xa.grad.numpy(), g_alone)


def test_warm_start_saves_iterations(backend):
    new_model, obs, target = make_case(backend, (31, 15), every=2)
    W = 1 / obs.sigma**2
    warm, cold = (_layer(backend, new_model, obs, warm_start=w) for w in (True, False))
    m = random_block(warm.op.decomp)
    dm = 0.02 * random_block(warm.op.decomp, seed=9)
    _loss_and_grad(warm, m, target, W)
    J_w, g_w = _loss_and_grad(warm, m + dm, target, W)
    J_c, g_c = _loss_and_grad(cold, m + dm, target, W)
    info_w = dict(warm.op.info)
    assert info_w["forward_iterations"] < cold.op.info["forward_iterations"]
    assert info_w["adjoint_iterations"] < cold.op.info["adjoint_iterations"]
    assert J_w == pytest.approx(J_c, rel=1e-9)
    assert relative_difference(MPI.COMM_SELF, g_w, g_c) < 1e-8


def test_float32_solver(backend):
    new_model, obs, target = make_case(backend, (15, 9), every=3)
    loose = PTParams(tol=1e-5)                        # float32 resolves ~1e-7 of max|Qf|
    layer = DarcyObservationsTorch(new_model(), obs, backend=backend, dtype=np.float32,
                                   params=loose, adjoint_params=loose)
    x = torch.zeros(layer.op.local_shape, dtype=torch.float32, requires_grad=True)
    d = layer(x)
    assert d.dtype == torch.float32 and d.shape == (len(obs),)
    d.sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.shape == x.shape


@pytest.fixture(scope="module")
def small_layer():
    from hpcinv.backend import make_backend
    bk = make_backend("host", threads=1)
    new_model, obs, _ = make_case(bk, (15, 9), every=3)
    return _layer(bk, new_model, obs)


@pytest.mark.parametrize("bad,match", [
    (lambda s: torch.zeros(s[0] + 1, s[1], dtype=torch.float64), r"shape \(16, 9\).*\(15, 9\)"),
    (lambda s: torch.zeros(s[0] * s[1], dtype=torch.float64), r"owned block \(15, 9\)"),
    (lambda s: torch.zeros(s, dtype=torch.float32), "dtype float32.*float64"),
    (lambda s: torch.zeros(s, dtype=torch.int64), "dtype torch.int64"),
    (lambda s: torch.zeros(s, dtype=torch.float64, device="meta"), "device meta.*cpu"),
    (lambda s: np.zeros(s), "must be a torch.Tensor"),
])
def test_bad_inputs(small_layer, bad, match):
    with pytest.raises(ConfigError, match=match):
        small_layer(bad(small_layer.op.local_shape))


def test_bad_cotangents(small_layer):
    tape = small_layer.op.forward(np.zeros(small_layer.op.local_shape))[2]
    with pytest.raises(ConfigError, match="shape"):
        small_layer.op.vjp(tape, np.zeros(3))
    with pytest.raises(ConfigError, match="not finite"):
        small_layer.op.vjp(tape, np.full(small_layer.op.nobs, np.nan))
    with pytest.raises(ConfigError, match="return_pressure"):
        small_layer.op.vjp(tape, None, np.zeros(small_layer.op.local_shape))


def test_missing_extra(monkeypatch):
    import hpcinv.autodiff as ad
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch -> ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "hpcinv\[torch\]"'):
        ad.DarcyObservationsTorch
    with pytest.raises(AttributeError):
        ad.no_such_layer
