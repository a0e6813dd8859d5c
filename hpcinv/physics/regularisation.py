"""Regularisation kernels on cell fields: explicit diffusion smoothing and the Tikhonov term.

All kernels loop over owned cells of padded local arrays and read face neighbours (one halo
exchange of the input before the launch). Whether a cell or face lies on the *global* boundary
is decided from global indices: ``g_a = i_a + go_a`` (``go_a`` = rank offset - 1, since padded
index 1 is the first owned cell) and the global sizes ``gn_a``, so no masks are stored.

Smoothing, one step of the workshop's ``smooth_d!`` (``L`` the undivided Laplacian stencil)::

    A2[c] = A[c] + coef * sum_a (A[c - s_a] - 2 A[c] + A[c + s_a])    c interior
    A2[c] = A[c]                                                      c on the global boundary

i.e. ``S = I + coef M L`` with ``M`` the diagonal interior mask. Its transpose
``S^T = I + coef L^T M``, in gather form per cell ``c``::

    (S^T y)[c] = (1 - 2 ndim coef) y[c] + coef sum_{n nbr of c, n interior} y[n]   c interior
    (S^T y)[c] = y[c]                   + coef sum_{n nbr of c, n interior} y[n]   otherwise

Tikhonov, ``J_reg = alpha/2 V sum_{interior faces} ((m_r - m_l) / d_a)**2`` (``V`` the cell
volume): each cell adds the energy of its lower interior faces to ``E`` (every face counted
once) and ``G += scale * sum_{interior faces f of c} (m_c - m_nbr(f)) / d_a**2`` with
``scale = alpha V``: the gradient ``alpha V (-Lap_N m)``, ``Lap_N`` the 5/7-point Laplacian with
zero-gradient (no-flux) boundaries.
"""
from __future__ import annotations

from ..backend.kernel import Kernel
from .darcy import all_axes


def _names(ndim, fmt):
    return tuple(fmt.replace("#", a) for a in "xyz"[:ndim])


def _ints(ndim):
    return _names(ndim, "go#") + _names(ndim, "gn#")


_SMOOTH_AXIS = r"""
    {
        const ptrdiff_t s = @s#@;
        const long long g = (long long)@i#@ + @go#@;
        inner = inner && g > 0 && g < @gn#@ - 1;
        lap += A[idx - s] - (real)2 * Ac + A[idx + s];
    }
"""

_SMOOTH_BODY = ("    const real Ac = A[idx];\n    bool inner = true;\n    real lap = (real)0;\n"
                + all_axes(_SMOOTH_AXIS)
                + "    A2[idx] = inner ? Ac + coef * lap : Ac;\n")

_SMOOTH_T_FLAGS = r"""
    const long long g@#@ = (long long)@i#@ + @go#@;
    const bool in@#@ = g@#@ > 0 && g@#@ < @gn#@ - 1;
    nout += in@#@ ? 0 : 1;
"""

_SMOOTH_T_AXIS = r"""
    {
        const ptrdiff_t s = @s#@;
        const bool others = (nout - (in@#@ ? 0 : 1)) == 0;
        const bool lo_in = others && g@#@ - 1 > 0 && g@#@ - 1 < @gn#@ - 1;
        const bool hi_in = others && g@#@ + 1 > 0 && g@#@ + 1 < @gn#@ - 1;
        acc += (lo_in ? y[idx - s] : (real)0) + (hi_in ? y[idx + s] : (real)0);
    }
"""

_SMOOTH_T_BODY = ("    int nout = 0;\n" + all_axes(_SMOOTH_T_FLAGS)
                  + "    real acc = (real)0;\n" + all_axes(_SMOOTH_T_AXIS)
                  + "    const real yc = y[idx];\n"
                  + "    y2[idx] = (nout == 0 ? yc - (real)(2 * NDIM) * coef * yc : yc)"
                    " + coef * acc;\n")

_TIKHONOV_AXIS = r"""
    {
        const ptrdiff_t s = @s#@;
        const long long g = (long long)@i#@ + @go#@;
        const real dlo = g > 0 ? mc - m[idx - s] : (real)0;
        const real dhi = g < @gn#@ - 1 ? mc - m[idx + s] : (real)0;
        gsum += (dlo + dhi) * @inv_d#2@;
        e += dlo * dlo * @inv_d#2@;
    }
"""

_TIKHONOV_BODY = ("    const real mc = m[idx];\n    real gsum = (real)0, e = (real)0;\n"
                  + all_axes(_TIKHONOV_AXIS)
                  + "    G[idx] += scale * gsum;\n    E[idx] = e;\n")


def smooth_kernel(ndim: int) -> Kernel:
    """One explicit diffusion step ``A2 = S A`` over a box of owned cells (ghosts of ``A``
    current). Scalar ``coef``; ints ``go*`` (rank offset - 1), ``gn*`` (global sizes)."""
    return Kernel(f"reg_smooth_{ndim}d", ("A", "A2"), ("coef",), _SMOOTH_BODY, ints=_ints(ndim),
                  writes=("A2",))


def smooth_transpose_kernel(ndim: int) -> Kernel:
    """``y2 = S^T y`` (ghosts of ``y`` current); same arguments as :func:`smooth_kernel`."""
    return Kernel(f"reg_smooth_transpose_{ndim}d", ("y", "y2"), ("coef",), _SMOOTH_T_BODY,
                  ints=_ints(ndim), writes=("y2",))


def tikhonov_kernel(ndim: int) -> Kernel:
    """``G += scale * (-Lap_N m) `` and ``E = `` lower-interior-face energy per cell (ghosts of
    ``m`` current). Scalars ``inv_d*2`` (1/d_a**2), ``scale``; ints as :func:`smooth_kernel`."""
    return Kernel(f"reg_tikhonov_{ndim}d", ("m", "G", "E"), _names(ndim, "inv_d#2") + ("scale",),
                  _TIKHONOV_BODY, ints=_ints(ndim), writes=("G", "E"))


def all_kernels(ndim: int):
    """Every kernel of this module (the nvcc compile test iterates over these)."""
    return [smooth_kernel(ndim), smooth_transpose_kernel(ndim), tikhonov_kernel(ndim)]
