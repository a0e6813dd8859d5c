"""Library messages in the config's words: the library names its parameters (``cfl``,
``dgamma``), the config layer names TOML keys (``solver.cfl``, ``inversion.dgamma``)."""
from __future__ import annotations

import re

from ..errors import ConfigError

#: Library parameter names that are keys of a config section, for error messages.
PT_KEYS = ("cfl", "re", "tol", "maxiter", "ncheck", "first_check")
OPTIMISER_KEYS = ("method", "dgamma", "logK_min", "logK_max", "lbfgs_memory",
                  "gradient_accuracy")


class library_names:
    """Context manager: a :class:`ConfigError` raised by library code, whose message names the
    library's parameters (``dgamma``), is raised again naming the config keys
    (``inversion.dgamma``)."""

    def __init__(self, section: str, keys):
        self.section, self.keys = section, keys

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, ConfigError):
            msg = str(exc)
            for key in self.keys:
                msg = re.sub(rf"(?<![\w.]){key}\b", f"{self.section}.{key}", msg)
            raise ConfigError(msg) from None
        return False


def pt_params(section):
    """The :class:`~hpcinv.solvers.PTParams` of ``[solver]`` or ``[adjoint]`` (the section's
    ``cfl``, ``re``, ``tol``, ``maxiter``, ``ncheck``, ``first_check``; ``None`` left for the
    solver's own default)."""
    from ..solvers import PTParams
    return PTParams(cfl=section.cfl, re=section.re, tol=section.tol, maxiter=section.maxiter,
                    ncheck=section.ncheck, first_check=section.first_check)


def check_optimiser_settings(v):
    """The ``[inversion]`` keys the optimisers themselves check, with the config's names."""
    from ..inverse.optimise import OptimiserSettings
    from ..inverse.tolerance import check_gradient_accuracy
    with library_names("inversion", OPTIMISER_KEYS):
        OptimiserSettings(method=v.method, dgamma=v.dgamma, logK_min=v.logK_min,
                          logK_max=v.logK_max, lbfgs_memory=v.lbfgs_memory).validate()
        if v.gradient_accuracy is not None:
            check_gradient_accuracy(v.gradient_accuracy)
