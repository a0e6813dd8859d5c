"""Exceptions that carry a one-line message for the user: the CLI prints it and exits with the
exception's ``exit_code`` (2 unless a subclass says otherwise; the list is in the README).

Messages show values as the user wrote them: :func:`plain` turns NumPy scalars and arrays into
Python numbers and lists first, so no message reads ``np.int64(3)``."""


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


class PermeabilityRangeError(HpcinvError):
    """K (or ``exp(log K)`` of an inversion's model) outside the normal numbers of the solver's
    float dtype: it would underflow to 0 (or lose precision as a subnormal) or overflow to inf.

    Attributes: ``low``, ``high`` (the extreme values found: of K, or of log K when ``log``),
    ``dtype`` (its name), ``log`` (the values are log K), ``overflow`` (True: too large;
    False: too small)."""

    def __init__(self, message, low, high, dtype, log=False, overflow=False):
        super().__init__(message)
        self.low, self.high, self.dtype = float(low), float(high), str(dtype)
        self.log, self.overflow = bool(log), bool(overflow)


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


def plain(value):
    """``value`` with NumPy scalars and arrays (also inside lists, tuples and dicts) turned into
    Python numbers and lists: what a message shows, and what the config stores."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class OutputDirError(HpcinvError):
    """The output directory cannot take this run (exit status 2): the path is a file, or lies
    under one, or is not writable; it holds another command's run, a finished run (without
    ``--overwrite``) or files hpcinv did not record as its own. Storage failures while probing
    it (disk full, quota, I/O error) are :class:`OutputIOError` (exit status 4) instead."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT outside the inversion loop (start-up, a single solve, the final
    evaluation): exit status 3 for SIGTERM, 130 for SIGINT (:mod:`hpcinv.app.interrupt`).

    Not an :class:`HpcinvError`: a signal may arrive inside any ``except Exception`` block (a
    write that turns errors into an I/O error, a library probe) and must stop the run, not be
    reported as that block's failure. A :class:`KeyboardInterrupt`, not only a
    :class:`BaseException`, because CPython's C code keeps only that one when a signal handler
    raises inside it: the compiler's constant folding (``2 ** 31`` in a module compiled from
    source, which every import is under ``PYTHONDONTWRITEBYTECODE`` or from a read-only
    install) clears any other exception, and the SIGTERM was lost (CI: a forward solve went on
    after the signal). Catch it before ``KeyboardInterrupt``."""

    def __init__(self, signum: int):
        import signal
        self.signum = signum
        self.exit_code = 3 if signum == signal.SIGTERM else 128 + signum
        super().__init__(signal.Signals(signum).name)
