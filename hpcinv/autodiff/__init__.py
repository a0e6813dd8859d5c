"""hpcinv as a differentiable layer for PyTorch and JAX, with gradients from hpcinv's adjoint.

* :class:`ObservationMap` (no framework needed): ``log K -> observations`` and its VJP.
* :class:`DarcyObservationsTorch` (extra ``torch``): a ``torch.nn.Module``.
* :func:`darcy_observations_jax` (extra ``jax``): a ``jax.custom_vjp`` function.

The framework layers are imported on first use, so hpcinv works without either framework;
using one that is missing raises :class:`~hpcinv.errors.MissingExtraError` naming the
``pip install`` that fixes it.
"""
from __future__ import annotations

import importlib

from ..errors import MissingExtraError
from .core import ObservationMap, SolveNotConvergedError, Tape

#: public name -> (module of this package, the framework it needs, the pip extra)
_LAZY = {"DarcyObservationsTorch": ("torch_layer", "torch", "PyTorch", "torch"),
         "darcy_observations_jax": ("jax_layer", "jax", "JAX", "jax")}

__all__ = ["ObservationMap", "SolveNotConvergedError", "Tape", *_LAZY]


def require(module: str, label: str, extra: str):
    """Import a framework or raise :class:`MissingExtraError` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{label} is not installed ({exc}): pip install "
                                f"\"hpcinv[{extra}]\"") from None


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, framework, label, extra = _LAZY[name]
    require(framework, label, extra)
    return getattr(importlib.import_module(f".{module}", __name__), name)
