"""Residuals of the discrete Darcy system and their hand-derived transposes, side by side.

Unknowns ``u = (q, Pf)``, parameter ``K`` (cell centres). With ``Kf = (K_l + K_r)/2`` on the
face between cells ``l`` and ``r`` along axis ``a`` (spacing ``d_a``)::

    Rq_a[f] = q_a[f] + Kf[f] (Pf[r] - Pf[l]) / d_a      active faces; 0 on no-flux walls
    (on a fixed-pressure wall: Kf = K of the cell, the ghost holds Pb, distance d_a / 2)
    RPf[c]  = sum_a (q_a[hi(c)] - q_a[lo(c)]) / d_a - Qf[c]   (q = 0 on wall faces)

Transposes (accumulated, ``+=``), for a face cotangent ``Rq_bar`` and a cell cotangent
``RPf_bar``; every sum runs over the active faces of cell ``c`` only::

    Pf_bar[c] += sum_{f = lo(c)} Kf Rq_bar[f] / d_a - sum_{f = hi(c)} Kf Rq_bar[f] / d_a
    q_bar[f]  += Rq_bar[f]
    K_bar[c]  += sum_{f in faces(c)} (Pf[r] - Pf[l]) Rq_bar[f] / (2 d_a)
    q_bar[f]  += (RPf_bar[l] - RPf_bar[r]) / d_a

All kernels loop over owned cells and *gather* from the faces of their cell, so no two cells
write one location: a cell writes its lower faces, and its upper faces where it is the last
owned cell along that axis. Values on subdomain-boundary faces are computed by both ranks from
ghost values (the face cotangents are stored on both sides), so the cell-gather form needs no
reverse (accumulating) halo exchange. The no-flux wall masks are their own transposes.

The dual-weighted reduced residual (``hpcinv.inverse.misfit_error``) eliminates ``q``: with
``A = -div(Kf grad .)`` (the operator both solves invert), ``E[c] = psi[c] (Qf - A Pf)[c]``,
whose sum over the cells is the first-order error ``J(P*) - J(Pf)`` of a misfit for the adjoint
``psi`` of that misfit.
"""
from __future__ import annotations

from ..backend.kernel import Kernel
from .darcy import FACE_K, FACE_KINDS, all_axes

# --- flux residual Rq = q + Kf grad Pf, and its transposes -----------------------------------
_FLUX_RESIDUAL = r"""
    {
        const ptrdiff_t s = @s#@;""" + FACE_KINDS + FACE_K + r"""
        @Rq#@[idx] = lo_wall ? (real)0
            : @q#@[idx] + (real)0.5 * (K_lo + Kc) * (Pf[idx] - Pf[idx - s]) * inv_lo;
        if (@i#@ == @n#l@)
            @Rq#@[idx + s] = hi_wall ? (real)0
                : @q#@[idx + s] + (real)0.5 * (Kc + K_hi) * (Pf[idx + s] - Pf[idx]) * inv_hi;
    }
"""

_FLUX_RESIDUAL_ADJOINT = r"""
    {
        const ptrdiff_t s = @s#@;""" + FACE_KINDS + FACE_K + r"""
        const real b_lo = lo_wall ? (real)0 : @Rq#_bar@[idx];
        const real b_hi = hi_wall ? (real)0 : @Rq#_bar@[idx + s];
        const real w_lo = lo_fix ? (real)1 : (real)0.5;     /* dKf/dK of this cell */
        const real w_hi = hi_fix ? (real)1 : (real)0.5;
        P_acc += (real)0.5 * (K_lo + Kc) * inv_lo * b_lo - (real)0.5 * (Kc + K_hi) * inv_hi * b_hi;
        K_acc += w_lo * (Pf[idx] - Pf[idx - s]) * inv_lo * b_lo
               + w_hi * (Pf[idx + s] - Pf[idx]) * inv_hi * b_hi;
        @q#_bar@[idx] += b_lo;
        if (@i#@ == @n#l@) @q#_bar@[idx + s] += b_hi;
    }
"""

# --- pressure residual RPf = div q - Qf, and its transpose ------------------------------------
_PRESSURE_RESIDUAL = r"""
    {
        const ptrdiff_t s = @s#@;""" + FACE_KINDS + r"""
        div += ((hi_wall ? (real)0 : @q#@[idx + s]) - (lo_wall ? (real)0 : @q#@[idx])) * @inv_d#@;
    }
"""

_PRESSURE_RESIDUAL_ADJOINT = r"""
    {
        const ptrdiff_t s = @s#@;""" + FACE_KINDS + r"""
        /* a fixed-pressure wall has no cell beyond it: its cotangent is zero */
        const real b_lo = lo_fix ? (real)0 : RPf_bar[idx - s];
        const real b_hi = hi_fix ? (real)0 : RPf_bar[idx + s];
        if (!lo_wall) @q#_bar@[idx] += (b_lo - RPf_bar[idx]) * @inv_d#@;
        if (@i#@ == @n#l@ && !hi_wall) @q#_bar@[idx + s] += (RPf_bar[idx] - b_hi) * @inv_d#@;
    }
"""


# --- dual-weighted reduced residual E = psi (Qf + div(Kf grad Pf)) ----------------------------
_REDUCED_RESIDUAL = r"""
    {
        const ptrdiff_t s = @s#@;""" + FACE_KINDS + FACE_K + r"""
        const real F_lo = lo_wall ? (real)0
            : (real)0.5 * (K_lo + Kc) * (Pf[idx] - Pf[idx - s]) * inv_lo;
        const real F_hi = hi_wall ? (real)0
            : (real)0.5 * (Kc + K_hi) * (Pf[idx + s] - Pf[idx]) * inv_hi;
        div += (F_hi - F_lo) * @inv_d#@;
    }
"""


def _names(ndim, fmt):
    return tuple(fmt.replace("#", a) for a in "xyz"[:ndim])


def _geometry(ndim):
    return _names(ndim, "inv_d#"), _names(ndim, "n#l") + ("wall", "fixed")


def flux_residual_kernel(ndim: int) -> Kernel:
    """``Rq = q + Kf grad Pf`` on the active faces of a box of cells (0 on walls).

    Arrays: ``Pf, K`` (cells), ``q*`` and ``Rq*`` (faces). Scalars ``inv_d*`` (1/m); ints
    ``n*l`` (last owned padded index), ``wall`` (wall bits, see ``darcy.WALL_BITS``).
    """
    scal, ints = _geometry(ndim)
    return Kernel(f"darcy_flux_residual_{ndim}d",
                  ("Pf", "K") + _names(ndim, "q#") + _names(ndim, "Rq#"), scal,
                  "    const real Kc = K[idx];\n" + all_axes(_FLUX_RESIDUAL), ints=ints,
                  writes=_names(ndim, "Rq#"))


def flux_residual_adjoint_kernel(ndim: int) -> Kernel:
    """Transposes of ``Rq`` w.r.t. ``Pf``, ``q`` and ``K``: accumulates ``Pf_bar``, ``q*_bar``
    and ``K_bar`` from ``Rq*_bar`` (linearised at ``Pf``, ``K``)."""
    scal, ints = _geometry(ndim)
    body = ("    const real Kc = K[idx];\n    real P_acc = (real)0, K_acc = (real)0;\n"
            + all_axes(_FLUX_RESIDUAL_ADJOINT)
            + "    Pf_bar[idx] += P_acc;\n    K_bar[idx] += K_acc;\n")
    return Kernel(f"darcy_flux_residual_adjoint_{ndim}d",
                  ("Pf", "K", "Pf_bar", "K_bar") + _names(ndim, "Rq#_bar") + _names(ndim, "q#_bar"),
                  scal, body, ints=ints, writes=("Pf_bar", "K_bar") + _names(ndim, "q#_bar"))


def pressure_residual_kernel(ndim: int) -> Kernel:
    """``RPf = div q - Qf`` on a box of cells. Arrays: ``q*`` (faces), ``Qf``, ``RPf`` (cells)."""
    scal, ints = _geometry(ndim)
    body = ("    real div = (real)0;\n" + all_axes(_PRESSURE_RESIDUAL)
            + "    RPf[idx] = div - Qf[idx];\n")
    return Kernel(f"darcy_pressure_residual_{ndim}d", _names(ndim, "q#") + ("Qf", "RPf"), scal,
                  body, ints=ints, writes=("RPf",))


def pressure_residual_adjoint_kernel(ndim: int) -> Kernel:
    """Transpose of ``RPf`` w.r.t. ``q``: accumulates ``q*_bar`` from ``RPf_bar`` (whose ghost
    layer must be current: one halo exchange before the launch)."""
    scal, ints = _geometry(ndim)
    return Kernel(f"darcy_pressure_residual_adjoint_{ndim}d",
                  ("RPf_bar",) + _names(ndim, "q#_bar"), scal,
                  all_axes(_PRESSURE_RESIDUAL_ADJOINT), ints=ints, writes=_names(ndim, "q#_bar"))


def _reduced_residual(ndim: int, name: str, weight: str, args: tuple) -> Kernel:
    scal, ints = _geometry(ndim)
    body = ("    const real Kc = K[idx];\n    real div = (real)0;\n" + all_axes(_REDUCED_RESIDUAL)
            + f"    E[idx] = {weight}(Qf[idx] + div);\n")
    return Kernel(f"darcy_{name}_{ndim}d", args, scal, body, ints=ints, writes=("E",))


def weighted_reduced_residual_kernel(ndim: int) -> Kernel:
    """``E = psi (Qf - A Pf)`` with ``A Pf = -div(Kf grad Pf)`` (fluxes eliminated: the residual
    of the pressure alone, ``Kf grad Pf`` from the flux residual's face formula). Arrays:
    ``Pf, K`` (ghosts valid; a fixed-pressure side's ghost holds its pressure), ``Qf``, ``psi``
    (read at the cell only), ``E`` (written on the box)."""
    return _reduced_residual(ndim, "weighted_reduced_residual", "psi[idx] * ",
                             ("Pf", "K", "Qf", "psi", "E"))


def reduced_residual_kernel(ndim: int) -> Kernel:
    """``E = Qf - A Pf``, the unweighted :func:`weighted_reduced_residual_kernel` (the forward
    warm start's guard compares the max-norms of two starts)."""
    return _reduced_residual(ndim, "reduced_residual", "", ("Pf", "K", "Qf", "E"))


def all_kernels(ndim: int):
    """Every kernel of this module (the nvcc compile test iterates over these)."""
    return [flux_residual_kernel(ndim), flux_residual_adjoint_kernel(ndim),
            pressure_residual_kernel(ndim), pressure_residual_adjoint_kernel(ndim),
            weighted_reduced_residual_kernel(ndim), reduced_residual_kernel(ndim)]
