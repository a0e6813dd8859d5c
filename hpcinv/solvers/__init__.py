"""Pseudo-transient solvers: the APT loop (shared by forward and adjoint) and its users."""
from .apt import PTParams, PTResult, pt_coefficients, pt_iterate
from .forward import DarcySolver, ForwardState, solve_forward

__all__ = ["PTParams", "PTResult", "pt_coefficients", "pt_iterate", "DarcySolver",
           "ForwardState", "solve_forward"]
