"""Pseudo-transient solvers: the APT loop (shared by forward and adjoint) and its users."""
from .apt import PTParams, PTResult, pt_coefficients, pt_iterate
from .fields import ForwardState
from .forward import DarcySolver, solve_forward

SOLVER_METHODS = ("apt", "petsc")


def make_darcy_solver(problem, backend=None, params=None, method: str = "apt", **kwargs):
    """The Darcy solver of ``method``: ``"apt"`` (:class:`DarcySolver`, GPUs and CPUs) or
    ``"petsc"`` (:class:`~hpcinv.solvers.petsc.PetscDarcySolver`: the same operator on a DMDA,
    CG + GAMG; CPUs, needs ``pip install hpcinv[petsc]``). Both take the same arguments and
    offer the same interface, so forward, gradient and inversion code use either."""
    if method == "apt":
        return DarcySolver(problem, backend, params, **kwargs)
    if method == "petsc":
        from ..errors import BackendError
        try:
            from .petsc import PetscDarcySolver
            return PetscDarcySolver(problem, backend, params, **kwargs)
        except ImportError as exc:          # petsc4py missing: a one-line error, not a trace
            raise BackendError(f"solver.method = 'petsc': {exc}") from exc
    from ..errors import ConfigError
    raise ConfigError(f"solver.method must be one of {', '.join(SOLVER_METHODS)}, got {method!r}")


__all__ = ["PTParams", "PTResult", "pt_coefficients", "pt_iterate", "DarcySolver",
           "ForwardState", "solve_forward", "make_darcy_solver", "SOLVER_METHODS"]
