"""The short public API: forward solves and gradients in a few lines.

    from hpcinv import problems, forward, gradient
    from hpcinv.backend import make_backend
    from hpcinv.inverse import Observations
    from hpcinv.model.geothermal import workshop_points
    bk = make_backend("auto")                            # GPU if CuPy sees one, else host
    true = problems.geothermal2d()                       # MPI.COMM_WORLD, dims chosen for you
    state = forward(true, bk)                            # APT solve; state.Pf is the local block
    obs = Observations(true.grid, workshop_points(2))
    obs.record(state.Pf, bk)                             # read through the backend
    model = problems.geothermal2d(k_barrier=1.0)          # K = 1 everywhere
    J, g, info = gradient(model, obs, backend=bk)         # dJ/dlogK: a backend array (local
    g_host = bk.to_host(g)                                # block); a NumPy copy
"""
from __future__ import annotations

from .inverse.gradient import AdjointGradient
from .solvers import DarcySolver, PTParams


def forward(problem, backend=None, params: PTParams | None = None, **solver_kwargs):
    """Solve the problem's steady Darcy flow from zero fields; a
    :class:`~hpcinv.solvers.ForwardState` (local padded arrays, iterations, residual)."""
    return DarcySolver(problem, backend, params, **solver_kwargs).solve()


def gradient(problem, observations, logK=None, backend=None, params: PTParams | None = None,
             adjoint_params: PTParams | None = None, tikhonov=None, **solver_kwargs):
    """``(J, dJ/dlogK, info)`` at ``logK`` (padded local array; default: the problem's K).

    One forward and one adjoint APT solve; the misfit is demeaned over the observations when no
    side fixes the pressure (see :class:`~hpcinv.inverse.Observations`).
    """
    G = AdjointGradient(problem, observations, backend, params, adjoint_params, tikhonov,
                        **solver_kwargs)
    return G(logK)
