"""PyTorch layer: hpcinv's Darcy observation map as a ``torch.nn.Module`` whose backward is
hpcinv's adjoint solve (a ``torch.autograd.Function``; see :mod:`hpcinv.autodiff.core` for the
map, the gauge and the MPI contract).

    layer = DarcyObservationsTorch(problem, observations)   # or return_pressure=True
    d = layer(logK)             # logK: (owned block of this rank) float64 tensor -> d: (nobs,)
    loss = 0.5 * ((d - d_obs) ** 2).sum()
    loss.backward()             # one adjoint APT solve; logK.grad has the block's shape

Tensors must live where the solver computes: on the CPU for the host backend, on the
solver's GPU (``cuda:<backend.device_id>``) for the CuPy backend. The model and the cotangents
(a few fields per call) cross the host, as every model update of the solver does; the thousands
of solver iterations stay on the device.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..errors import ConfigError
from .core import ObservationMap

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _numpy_dtype(t: torch.Tensor, what: str):
    if t.dtype not in _DTYPES:
        raise ConfigError(f"{what} has dtype {t.dtype}; the solver takes torch.float64 or "
                          "torch.float32 tensors")
    return np.dtype(_DTYPES[t.dtype])


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's values on the host (a view for CPU tensors: the map copies what it keeps)."""
    return t.detach().to("cpu").numpy()


class _DarcyFunction(torch.autograd.Function):
    """``logK -> d (, P)``; backward = one adjoint solve through :meth:`ObservationMap.vjp`."""

    @staticmethod
    def forward(ctx, logK, op: ObservationMap):
        d, P, tape = op.forward(_to_numpy(logK))
        ctx.op, ctx.tape, ctx.device = op, tape, logK.device
        out = torch.from_numpy(d).to(logK.device)
        if P is None:
            return out
        return out, torch.from_numpy(P).to(logK.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_d, v_P=None):
        g = ctx.op.vjp(ctx.tape, _to_numpy(v_d), None if v_P is None else _to_numpy(v_P))
        return torch.from_numpy(g).to(ctx.device), None


class DarcyObservationsTorch(torch.nn.Module):
    """``log K`` (this rank's owned block) ``-> simulated observations (nobs,)`` [and the
    owned pressure block], differentiable with hpcinv's adjoint.

    Args: as :class:`~hpcinv.autodiff.core.ObservationMap` (``problem``, ``observations``,
    ``backend``, ``params``, ``adjoint_params``, ``warm_start``, ``return_pressure``,
    ``dtype``...).

    Attributes:
        op: the :class:`ObservationMap` (``op.info``: iterations of the last solves;
            ``op.local_shape``: the expected input shape).
        device: the ``torch.device`` the solver's backend uses.
    """

    def __init__(self, problem, observations, **kwargs):
        super().__init__()
        self.op = ObservationMap(problem, observations, **kwargs)
        bk = self.op.backend
        self.device = (torch.device("cuda", bk.device_id) if bk.name == "cupy"
                       else torch.device("cpu"))

    def forward(self, logK: torch.Tensor):
        if not isinstance(logK, torch.Tensor):
            raise ConfigError(f"logK must be a torch.Tensor, got {type(logK).__name__}")
        if logK.device != self.device:
            raise ConfigError(
                f"logK is on device {logK.device}, but the solver's backend "
                f"({self.op.backend.name}) computes on {self.device}: move it with "
                f".to({str(self.device)!r}) or build the layer with a matching backend")
        self.op.check_logK(tuple(logK.shape), _numpy_dtype(logK, "logK"))
        return _DarcyFunction.apply(logK, self.op)

    def extra_repr(self) -> str:
        return (f"grid={tuple(self.op.problem.grid.shape)}, block={self.op.local_shape}, "
                f"nobs={self.op.nobs}, dtype={self.op.dtype}, device={self.device}")
