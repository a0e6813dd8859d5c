"""JAX rule: hpcinv's Darcy observation map as a ``jax.custom_vjp`` function whose VJP is
hpcinv's adjoint solve, run through host callbacks on the CPU (see
:mod:`hpcinv.autodiff.core` for the map, the gauge and the MPI contract).

    jax.config.update("jax_enable_x64", True)      # the solver computes in float64
    F = darcy_observations_jax(problem, observations)
    d = F(logK)                   # logK: (owned block) float64 array -> d: (nobs,)
    g = jax.grad(lambda m: 0.5 * jnp.sum((F(m) - d_obs) ** 2))(logK)     # jit works too

The callbacks are ``io_callback(..., ordered=True)``: they run exactly once each, in program
order, which keeps the solver's collective MPI calls matched across ranks and makes the
warm-start state (a side effect) well defined. Consequently ``jax.vmap`` over the map is not
supported (one model per call); batch with a Python loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from ..errors import ConfigError
from .core import ObservationMap, Tape


def _check_device(x):
    """Concrete arrays must be on the CPU (tracers carry no placement: the callback moves the
    data to the host itself)."""
    try:
        devices = x.devices()
    except (AttributeError, jax.errors.ConcretizationTypeError):   # numpy input, or a tracer
        return
    off = sorted({d.platform for d in devices} - {"cpu"})
    if off:
        raise ConfigError(f"logK lives on {', '.join(off)}, but the JAX rule hands the model "
                          "to hpcinv's solver through a host callback on the CPU: move it with "
                          "jax.device_put(logK, jax.devices('cpu')[0])")


def darcy_observations_jax(problem, observations, **kwargs):
    """A JAX function ``logK -> d`` (or ``(d, P)`` with ``return_pressure=True``),
    differentiable in reverse mode with hpcinv's adjoint.

    Args: as :class:`~hpcinv.autodiff.core.ObservationMap`. The returned function carries the
    map as its ``op`` attribute (``op.info``: iterations of the last solves).

    Raises:
        ConfigError: float64 solver without ``jax_enable_x64``; at call time a wrong shape,
            dtype or device of ``logK``.
    """
    op = ObservationMap(problem, observations, **kwargs)
    dt = op.dtype
    if dt == np.float64 and jnp.asarray(0.0).dtype != np.float64:      # x64 disabled
        raise ConfigError("the solver computes in float64 but JAX has 64-bit types disabled: "
                          "call jax.config.update('jax_enable_x64', True) first, or build the "
                          "map with dtype=numpy.float32")
    d_spec = jax.ShapeDtypeStruct((op.nobs,), dt)
    P_spec = jax.ShapeDtypeStruct(op.local_shape, dt)
    tape_spec = jax.ShapeDtypeStruct(tuple(op.decomp.padded_shape), dt)
    outputs = (d_spec, P_spec) if op.return_pressure else (d_spec,)

    def forward_cb(logK):
        d, P, tape = op.forward(np.asarray(logK))
        outs = (d, P) if op.return_pressure else (d,)
        return (*outs, np.asarray(op.backend.to_host(tape.Pf), dtype=dt))

    def vjp_cb(logK, Pf, *cotangents):
        padded = np.zeros(op.decomp.padded_shape)
        padded[op.decomp.owned()] = np.asarray(logK)
        return op.vjp(Tape(padded, np.asarray(Pf)), *(np.asarray(c) for c in cotangents))

    def run_forward(logK):
        _check_device(logK)
        op.check_logK(jnp.shape(logK), jnp.result_type(logK))
        *outs, Pf = io_callback(forward_cb, (*outputs, tape_spec), logK, ordered=True)
        return tuple(outs), Pf

    @jax.custom_vjp
    def F(logK):
        outs, _ = run_forward(logK)
        return outs if op.return_pressure else outs[0]

    def F_fwd(logK):
        outs, Pf = run_forward(logK)
        return (outs if op.return_pressure else outs[0]), (logK, Pf)

    def F_bwd(residuals, cotangent):
        logK, Pf = residuals
        cts = cotangent if op.return_pressure else (cotangent,)
        return (io_callback(vjp_cb, P_spec, logK, Pf, *cts, ordered=True),)

    F.defvjp(F_fwd, F_bwd)
    F.op = op
    return F
