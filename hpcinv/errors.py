"""Exceptions that carry a one-line message for the user: the CLI prints it and exits with the
exception's ``exit_code`` (2 unless a subclass says otherwise; the list is in the README)."""


class HpcinvError(Exception):
    """Base class: bad input or an environment problem the user can fix (exit status 2)."""
    exit_code = 2


class ConfigError(HpcinvError):
    """An invalid configuration value, key or combination."""


class BackendError(HpcinvError):
    """The requested compute backend cannot run here (no compiler, no CuPy, no device)."""


class GpuUnusableError(BackendError):
    """A GPU is there, but CuPy cannot compile or run a kernel on it (NVRTC or the CUDA
    runtime not found, a driver too old for them). ``--backend auto`` falls back to the host
    backend with a warning; ``--backend cupy`` stops with the one-line fix."""


class DecompositionError(HpcinvError):
    """The grid cannot be split over the ranks as asked."""


class SolverDivergedError(HpcinvError):
    """The pseudo-transient iteration produced NaN or a growing residual."""


class MissingExtraError(HpcinvError, ImportError):
    """An optional dependency (a pip extra such as ``torch`` or ``jax``) is not installed."""


class OutputIOError(HpcinvError):
    """Writing or reading run output failed (disk full, quota, I/O error, a damaged checkpoint
    with no usable fallback): exit status 4. Raised on every rank (collectively)."""
    exit_code = 4


class RunLockedError(HpcinvError):
    """Another run holds the output directory's lock (``DIR/.hpcinv.lock``): exit status 5."""
    exit_code = 5


class InnerSolveError(HpcinvError):
    """An inversion stopped because its forward/adjoint solves kept failing to converge
    (exit status 1, like an unconverged ``hpcinv forward``)."""
    exit_code = 1


class OutputDirError(HpcinvError):
    """The output directory cannot take this run (exit status 2): the path is a file, or lies
    under one, or is not writable; it holds another command's run, a finished run (without
    ``--overwrite``) or files hpcinv did not record as its own. Storage failures while probing
    it (disk full, quota, I/O error) are :class:`OutputIOError` (exit status 4) instead."""


class Interrupted(HpcinvError):
    """SIGTERM or SIGINT outside the inversion loop (start-up, a single solve, the final
    evaluation): exit status 3 for SIGTERM, 130 for SIGINT (:mod:`hpcinv.app.interrupt`)."""

    def __init__(self, signum: int):
        import signal
        self.signum = signum
        self.exit_code = 3 if signum == signal.SIGTERM else 128 + signum
        super().__init__(signal.Signals(signum).name)
