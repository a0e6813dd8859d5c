"""Steady Darcy flow on a staggered grid: the APT iteration as one fused kernel.

Discretisation (cell-centred Pf, K, Qf; face fluxes q), for each axis a with spacing d_a::

    q_a[face] = -Kf * (Pf[right] - Pf[left]) / d_a,   Kf = (K[left] + K[right]) / 2
    div(q)[cell] - Qf[cell] = sum_a (q_a[upper face] - q_a[lower face]) / d_a - Qf[cell] = 0

with, on each side of the box, either q . n = 0 (no flux) or a fixed pressure Pb held in the
ghost layer (the face flux then uses the cell's K and half a cell's distance). Array layout: every local array has the padded shape
of the cell block (one ghost layer); ``q_a`` at padded index ``j`` along ``a`` is the face
between cells ``j - 1`` and ``j`` (index 0 unused), so one flat index serves every array.

Accelerated pseudo-transient (APT) iteration (Räss et al. 2022), one step::

    q  <- q - (q + Kf grad Pf) * damp                     damp = 1 / (1 + theta)
    Pf <- Pf - (div q - Qf) * beta / Kmax_loc              Kmax_loc: max of K over the cell
                                                           and its face neighbours

The step is fused into one kernel over cells that reads the old ``(Pf, q)`` and writes new
``(Pf, q)`` buffers (ping-pong): each cell recomputes the new fluxes on all of its faces and
stores its lower faces (and its upper faces where it is the last owned cell). A face on a
subdomain boundary is computed from ghost values by both neighbouring ranks with the same
function, so fields are bitwise identical for any decomposition; one halo exchange of Pf
per step suffices.
"""
from __future__ import annotations

import re

from ..backend.kernel import Kernel

# Side bits, for the ``wall`` (no-flux) and ``fixed`` (fixed-pressure) masks of a local block:
# a set bit marks a physical boundary of that kind on that side (axis, 0 = lower / 1 = upper).
WALL_BITS = {(0, 0): 1, (0, 1): 2, (1, 0): 4, (1, 1): 8, (2, 0): 16, (2, 1): 32}

#: The kinds of the two faces of a cell along one axis (needs ``s`` and the per-axis names).
#: A fixed-pressure face has its pressure Pb in the ghost cell, half a cell from the centre.
FACE_KINDS = r"""
        const bool lo_wall = (@i#@ == 1) & ((wall & @LO@) != 0);      /* '&': vectorises */
        const bool hi_wall = (@i#@ == @n#l@) & ((wall & @HI@) != 0);
        const bool lo_fix = (@i#@ == 1) & ((fixed & @LO@) != 0);
        const bool hi_fix = (@i#@ == @n#l@) & ((fixed & @HI@) != 0);
        const real inv_lo = lo_fix ? (real)2 * @inv_d#@ : @inv_d#@;
        const real inv_hi = hi_fix ? (real)2 * @inv_d#@ : @inv_d#@;
"""

#: Face permeability partners: the cell's own K on a fixed-pressure face (needs ``Kc``).
FACE_K = r"""
        const real K_lo = lo_fix ? Kc : K[idx - s];
        const real K_hi = hi_fix ? Kc : K[idx + s];
"""

_PREAMBLE = r"""
/* New flux on one face from old values: q - (q + Kf * (P_r - P_l) / d) * damp. */
HPCINV_INLINE real apt_face_flux(real q, real K_l, real K_r, real P_l, real P_r,
                                 real inv_d, real damp)
{
    const real Kf = (real)0.5 * (K_l + K_r);
    return q - (q + Kf * (P_r - P_l) * inv_d) * damp;
}
"""

# Per axis: the new fluxes on the lower and upper face, the store, the divergence and Kmax.
_AXIS = r"""
    {
        const ptrdiff_t s = @s#@;""" + FACE_KINDS + FACE_K + r"""
        const real q_lo = lo_wall ? (real)0
            : apt_face_flux(@q#@[idx], K_lo, Kc, Pf[idx - s], Pc, inv_lo, damp);
        const real q_hi = hi_wall ? (real)0
            : apt_face_flux(@q#@[idx + s], Kc, K_hi, Pc, Pf[idx + s], inv_hi, damp);
        @q#_new@[idx] = q_lo;
        if (@i#@ == @n#l@) @q#_new@[idx + s] = q_hi;
        div += (q_hi - q_lo) * @inv_d#@;
        Kmax = fmax(Kmax, fmax(K[idx - s], K[idx + s]));
    }
"""


def axis_text(template: str, axis: int) -> str:
    """Instantiate a per-axis kernel fragment: in ``@name@`` placeholders ``#`` becomes the
    axis letter (``@q#@`` -> ``qx``); ``@LO@``/``@HI@`` become the axis's wall bits."""
    def sub(m):
        word = m.group(1)
        if word in ("LO", "HI"):
            return str(WALL_BITS[(axis, 0 if word == "LO" else 1)])
        return word.replace("#", "xyz"[axis])
    return re.sub(r"@([\w#]+)@", sub, template)


def all_axes(template: str) -> str:
    """The fragment for x and y, and for z under ``#if NDIM == 3`` (one text for 2D and 3D)."""
    return (axis_text(template, 0) + axis_text(template, 1) + "#if NDIM == 3\n"
            + axis_text(template, 2) + "#endif\n")


_STEP_BODY = (r"""
    const real Kc = K[idx], Pc = Pf[idx];
    real Kmax = Kc, div = (real)0;
""" + all_axes(_AXIS) + r"""
    const real RPf = div - Qf[idx];
#ifdef STORE_RESIDUAL
    R[idx] = RPf;
#endif
    Pf_new[idx] = Pc - RPf * (beta / Kmax);
""")


def apt_step_kernel(ndim: int, store_residual: bool = False) -> Kernel:
    """The fused forward APT step over a box of owned cells.

    Arrays (padded local shape): ``Pf, qx, qy[, qz]`` (old), ``Pf_new, qx_new, qy_new[, qz_new]``
    (new), ``K``, ``Qf``, ``R`` (residual ``div q - Qf``, written only by the
    ``store_residual`` variant). Scalars: ``inv_dx, inv_dy[, inv_dz]`` (1/m), ``damp``,
    ``beta``. Ints: ``nxl, nyl[, nzl]`` (last owned padded index per axis), ``wall`` and ``fixed``
    (no-flux and fixed-pressure sides, bits of :data:`WALL_BITS`; the ghost layer of ``Pf`` on
    a fixed-pressure side holds the boundary pressure).
    """
    ax = "xyz"[:ndim]
    arrays = (("Pf",) + tuple(f"q{a}" for a in ax) + ("Pf_new",) + tuple(f"q{a}_new" for a in ax)
              + ("K", "Qf", "R"))
    k = Kernel(f"darcy_apt_step_{ndim}d", arrays,
               tuple(f"inv_d{a}" for a in ax) + ("damp", "beta"), _STEP_BODY,
               ints=tuple(f"n{a}l" for a in ax) + ("wall", "fixed"), preamble=_PREAMBLE,
               writes=("Pf_new",) + tuple(f"q{a}_new" for a in ax) + ("R",))
    return k.variant("res", STORE_RESIDUAL="1") if store_residual else k


def all_kernels(ndim: int):
    """Every kernel of this module for ``ndim`` (the nvcc compile test iterates over these)."""
    return [apt_step_kernel(ndim, False), apt_step_kernel(ndim, True)]
