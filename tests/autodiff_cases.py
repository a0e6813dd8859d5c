"""Shared set-ups of the autodiff tests (PyTorch and JAX): small problems, reference gradients
from :class:`~hpcinv.inverse.AdjointGradient` and a block-wise random model."""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.model.geothermal import workshop_points
from hpcinv.model.problems import geothermal2d, geothermal3d
from hpcinv.solvers import PTParams, solve_forward

#: Tight tolerances: finite differences of the map need solves far below their step size.
TIGHT = PTParams(tol=1e-13, ncheck=10)


def make_case(backend, shape=(31, 15), comm=MPI.COMM_SELF, fixed_side=False, every=1,
              sigma=None):
    """``(new_model, observations with values, target values)``: ``new_model()`` builds a fresh
    K = 1 problem (each map or gradient mutates its problem's K); the target is demeaned
    unless a side is fixed. Problems are on ``geothermal2d`` or
    ``geothermal3d`` (by ``len(shape)``). ``fixed_side``: the left side holds ``Pf = 0.5``
    (plain misfit) instead of all no-flux (demeaned misfit). ``every``: keep every n-th of
    the workshop's observation points."""
    make = geothermal2d if len(shape) == 2 else geothermal3d

    def problem(**kw):
        p = make(shape, comm=comm, **kw)
        if fixed_side:
            p.fixed_pressure = {(0, 0): 0.5}
        return p
    true = problem()
    obs = Observations(true.grid, workshop_points(len(shape))[::every], sigma=sigma,
                       demean=not fixed_side)
    obs.record(solve_forward(true, backend, TIGHT).Pf, backend)
    target = obs.values
    if not fixed_side:
        W = 1.0 / obs.sigma**2
        target = target - W @ target / W.sum()
    return (lambda: problem(k_barrier=1.0)), obs, target


def block_of(decomp, global_array):
    """This rank's owned block of a global array."""
    return global_array[tuple(slice(o, o + n) for o, n in zip(decomp.offset,
                                                               decomp.local_shape))].copy()


def random_block(decomp, seed=0, scale=0.3):
    """This rank's owned block of one global random field (same field for any decomposition)."""
    return block_of(decomp, scale * np.random.default_rng(seed).standard_normal(
        decomp.global_shape))


def reference_gradient(backend, problem, obs, block):
    """``(J, dJ/dlogK owned block)`` from hpcinv's own gradient at the model ``block``."""
    d = problem.grid.decomp
    padded = np.zeros(d.padded_shape)
    padded[d.owned()] = block
    J, g, _ = AdjointGradient(problem, obs, backend, TIGHT, TIGHT)(padded)
    return J, backend.to_host(g, region=d.owned())


def relative_difference(comm, a, b) -> float:
    """Global ``||a - b||_2 / ||b||_2`` over the ranks' blocks."""
    num = comm.allreduce(float(np.sum((a - b) ** 2)), op=MPI.SUM)
    den = comm.allreduce(float(np.sum(b**2)), op=MPI.SUM)
    return (num / den) ** 0.5


def check_against_hpcinv(backend, loss_and_grad, shape=(31, 15), comm=MPI.COMM_SELF, **case):
    """Assert that a framework's ``loss_and_grad(new_model, obs, target, block) -> (J, g)``
    equals hpcinv's misfit (1e-12) and gradient (1e-10, global relative 2-norm) at a random
    model; returns ``g`` (this rank's block). ``case``: options of :func:`make_case`."""
    new_model, obs, target = make_case(backend, shape, comm=comm, **case)
    block = random_block(new_model().grid.decomp)
    J_ref, g_ref = reference_gradient(backend, new_model(), obs, block)
    J, g = loss_and_grad(new_model, obs, target, block)
    assert float(J) == pytest.approx(J_ref, rel=1e-12)
    assert relative_difference(comm, np.asarray(g), g_ref) < 1e-10
    return np.asarray(g)
