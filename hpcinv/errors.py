"""Exceptions that carry a one-line message for the user (the CLI prints it and exits 2)."""


class HpcinvError(Exception):
    """Base class: bad input or an environment problem the user can fix."""


class ConfigError(HpcinvError):
    """An invalid configuration value, key or combination."""


class BackendError(HpcinvError):
    """The requested compute backend cannot run here (no compiler, no CuPy, no device)."""


class DecompositionError(HpcinvError):
    """The grid cannot be split over the ranks as asked."""


class SolverDivergedError(HpcinvError):
    """The pseudo-transient iteration produced NaN or a growing residual."""


class MissingExtraError(HpcinvError, ImportError):
    """An optional dependency (a pip extra such as ``torch`` or ``jax``) is not installed."""
