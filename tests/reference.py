"""Independent reference: the discrete Darcy operator assembled with scipy.sparse.

Written from the discretisation's definition, not from hpcinv's kernels:

    q_a(face between cells l and r) = -0.5 * (K_l + K_r) * (P_r - P_l) / d_a
    residual(cell) = sum_a (q_a(upper face) - q_a(lower face)) / d_a - Qf(cell)

with zero flux through the walls of the box. The operator ``A`` with ``A @ P = div q`` is
singular (constants are its null space); the APT iteration started from ``Pf = 0`` keeps
``sum(Kmax_loc * Pf) = 0`` because its update is ``Pf -= beta * RPf / Kmax_loc`` and
``sum(RPf) = -sum(Qf) = 0``. The reference fixes the gauge the same way, by solving the
bordered system

    [ A    c ] [P]   [Qf]
    [ c^T  0 ] [l] = [ 0]       c = Kmax_loc (flattened)

directly with ``scipy.sparse.linalg.spsolve``.

Fixed-pressure sides (``fixed = {(axis, side): Pb}``, side 0 lower / 1 upper) follow the same
definition as the kernels: the boundary face of cell ``c`` carries the cell's own ``K`` over half
a cell's distance,

    lower side:  q = -K_c (P_c - Pb) / (d_a / 2)       upper side:  q = -K_c (Pb - P_c) / (d_a / 2)

so both add ``2 K_c / d_a**2`` to the diagonal and ``2 K_c Pb / d_a**2`` to the right-hand
side: ``A(K) P = Qf + b(K)``. With at least one fixed side ``A`` is nonsingular and no gauge is
imposed.

Gradient (:func:`reference_gradient`): with the residual ``F(P, K) = A(K) P - b(K) - Qf`` and a
misfit ``J(P)``, solve ``A P = Qf + b``, then ``A^T lam = dJ/dP`` (same bordered system in the
all-no-flux case: the right-hand side sums to zero, so the solve is consistent and the border
multiplier vanishes), and ``dJ/dK = -(dF/dK)^T lam`` with the sparse Jacobian ``dF/dK``
assembled face by face (:func:`residual_jacobian_K`).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla


def kmax_local(K: np.ndarray) -> np.ndarray:
    """Max of K over each cell and its face neighbours inside the domain."""
    out = K.copy()
    for a in range(K.ndim):
        n = K.shape[a]
        lo = [slice(None)] * K.ndim
        hi = [slice(None)] * K.ndim
        lo[a], hi[a] = slice(0, n - 1), slice(1, n)
        lo, hi = tuple(lo), tuple(hi)
        out[lo] = np.maximum(out[lo], K[hi])    # upper neighbour
        out[hi] = np.maximum(out[hi], K[lo])    # lower neighbour
    return out


def _check_fixed(fixed, ndim):
    fixed = dict(fixed or {})
    for (a, side), v in fixed.items():
        assert a in range(ndim) and side in (0, 1) and np.isfinite(v), (a, side, v)
    return fixed


def _boundary_ids(ids: np.ndarray, axis: int, side: int) -> np.ndarray:
    """Flat indices of the cells along one side of the box."""
    return np.take(ids, -1 if side else 0, axis=axis).ravel()


def divergence_operator(K: np.ndarray, spacing, fixed=None) -> sp.csr_matrix:
    """Sparse ``A`` with ``(A @ P.ravel())`` = ``div(-Kf grad P)`` on interior faces, no-flux walls
    (and, on the ``fixed`` sides, the diagonal part ``2 K_c / d**2`` of the boundary flux)."""
    shape = K.shape
    N = K.size
    ids = np.arange(N).reshape(shape)
    rows, cols, vals = [], [], []
    for a, d in enumerate(spacing):
        n = shape[a]
        lo = [slice(None)] * K.ndim
        hi = [slice(None)] * K.ndim
        lo[a], hi[a] = slice(0, n - 1), slice(1, n)
        l, r = ids[tuple(lo)].ravel(), ids[tuple(hi)].ravel()
        Kf = 0.5 * (K[tuple(lo)] + K[tuple(hi)]).ravel()
        t = Kf / (d * d)
        # face flux q = -Kf (P_r - P_l)/d enters cell r as -q/d (lower face) and cell l as +q/d.
        # div(cell l) += q/d = -t (P_r - P_l);  div(cell r) -= q/d = t (P_r - P_l)
        rows += [l, l, r, r]
        cols += [r, l, r, l]
        vals += [-t, t, t, -t]
    for (a, side) in _check_fixed(fixed, K.ndim):
        c = _boundary_ids(ids, a, side)
        rows.append(c)
        cols.append(c)
        vals.append(2.0 * K.ravel()[c] / spacing[a] ** 2)
    rows, cols, vals = (np.concatenate(v) for v in (rows, cols, vals))
    return sp.csr_matrix((vals, (rows, cols)), shape=(N, N))


def boundary_source(K: np.ndarray, spacing, fixed=None) -> np.ndarray:
    """``b(K)``: the fixed-pressure part of the right-hand side, ``2 K_c Pb / d**2`` in each
    cell along a fixed side (summed where a cell touches several), zero elsewhere."""
    b = np.zeros(K.size)
    ids = np.arange(K.size).reshape(K.shape)
    for (a, side), Pb in _check_fixed(fixed, K.ndim).items():
        c = _boundary_ids(ids, a, side)
        b[c] += 2.0 * K.ravel()[c] * Pb / spacing[a] ** 2
    return b.reshape(K.shape)


def _solve(A: sp.spmatrix, rhs: np.ndarray, K: np.ndarray, gauge: bool) -> np.ndarray:
    """``A x = rhs``; with ``gauge`` (all-no-flux), the bordered system fixing
    ``sum(Kmax_loc * x) = 0`` (rhs must sum to zero for a consistent system)."""
    N = K.size
    if not gauge:
        return spla.spsolve(sp.csc_matrix(A), rhs)
    c = kmax_local(K).ravel()
    B = sp.bmat([[A, sp.csr_matrix(c[:, None])], [sp.csr_matrix(c[None, :]), None]],
                format="csc")
    x = spla.spsolve(B, np.concatenate([rhs, [0.0]]))
    return x[:N]


def solve_reference(K: np.ndarray, Qf: np.ndarray, spacing, fixed=None) -> np.ndarray:
    """Pressure of the discrete problem: with no ``fixed`` side, the gauge
    ``sum(Kmax_loc * P) = 0``; with fixed-pressure sides ``{(axis, side): Pb}``, the unique
    solution of ``A P = Qf + b``."""
    K = np.asarray(K, dtype=np.float64)
    Qf = np.asarray(Qf, dtype=np.float64)
    assert K.shape == Qf.shape and len(spacing) == K.ndim
    fixed = _check_fixed(fixed, K.ndim)
    A = divergence_operator(K, spacing, fixed)
    rhs = Qf.ravel() + boundary_source(K, spacing, fixed).ravel()
    return _solve(A, rhs, K, gauge=not fixed).reshape(K.shape)


def fluxes(K: np.ndarray, P: np.ndarray, spacing, fixed=None):
    """Face fluxes ``q_a = -Kf dP/d_a``, shape ``n_a + 1`` along ``a``, zero on no-flux walls;
    on a fixed side the half-cell flux ``-K_c (P_c - Pb) / (d/2)`` (lower) or
    ``-K_c (Pb - P_c) / (d/2)`` (upper)."""
    fixed = _check_fixed(fixed, K.ndim)
    out = []
    for a, d in enumerate(spacing):
        n = K.shape[a]
        shape = list(K.shape)
        shape[a] += 1
        q = np.zeros(shape)
        lo = [slice(None)] * K.ndim
        hi = [slice(None)] * K.ndim
        mid = [slice(None)] * K.ndim
        lo[a], hi[a], mid[a] = slice(0, n - 1), slice(1, n), slice(1, n)
        lo, hi, mid = tuple(lo), tuple(hi), tuple(mid)
        q[mid] = -0.5 * (K[lo] + K[hi]) * (P[hi] - P[lo]) / d
        for side in (0, 1):
            if (a, side) in fixed:
                Pb = fixed[(a, side)]
                Kc, Pc = np.take(K, -side, axis=a), np.take(P, -side, axis=a)
                face = [slice(None)] * K.ndim
                face[a] = -side
                q[tuple(face)] = (-Kc * (Pc - Pb) if side == 0 else -Kc * (Pb - Pc)) / (0.5 * d)
        out.append(q)
    return out


def residual(K: np.ndarray, Qf: np.ndarray, P: np.ndarray, spacing, fixed=None) -> np.ndarray:
    """``div q - Qf`` from :func:`fluxes` (independent of :func:`divergence_operator`)."""
    q = fluxes(K, P, spacing, fixed)
    div = np.zeros(K.shape)
    for a, d in enumerate(spacing):
        div += np.diff(q[a], axis=a) / d
    return div - Qf


# --- gradient of a point-observation misfit by direct sparse solves ----------------------------
def residual_jacobian_K(K: np.ndarray, P: np.ndarray, spacing, fixed=None) -> sp.csr_matrix:
    """Sparse ``dF/dK`` of ``F(P, K) = A(K) P - b(K) - Qf`` (rows: cells' equations, columns:
    cells' K), assembled face by face. An interior face ``(l, r)`` along ``a`` contributes
    ``Kf (P_l - P_r) / d**2`` to ``F_l`` and its negative to ``F_r`` with
    ``dKf/dK_l = dKf/dK_r = 1/2``; a fixed face of cell ``c`` contributes
    ``2 K_c (P_c - Pb) / d**2`` to ``F_c``."""
    fixed = _check_fixed(fixed, K.ndim)
    ids = np.arange(K.size).reshape(K.shape)
    Pf = P.ravel()
    rows, cols, vals = [], [], []
    for a, d in enumerate(spacing):
        n = K.shape[a]
        lo = [slice(None)] * K.ndim
        hi = [slice(None)] * K.ndim
        lo[a], hi[a] = slice(0, n - 1), slice(1, n)
        l, r = ids[tuple(lo)].ravel(), ids[tuple(hi)].ravel()
        g = 0.5 * (Pf[l] - Pf[r]) / (d * d)
        rows += [l, l, r, r]
        cols += [l, r, l, r]
        vals += [g, g, -g, -g]
    for (a, side), Pb in fixed.items():
        c = _boundary_ids(ids, a, side)
        rows.append(c)
        cols.append(c)
        vals.append(2.0 * (Pf[c] - Pb) / spacing[a] ** 2)
    rows, cols, vals = (np.concatenate(v) for v in (rows, cols, vals))
    return sp.csr_matrix((vals, (rows, cols)), shape=(K.size, K.size))


def observation_matrix(shape, cells, weights=None) -> sp.csr_matrix:
    """Sparse ``S`` (nobs x ncells): ``cells`` are global cell indices, ``(nobs, ndim)`` or
    ``(nobs, ncorner, ndim)``, with optional ``(nobs, ncorner)`` weights (default 1)."""
    cells = np.asarray(cells, dtype=np.int64)
    nd = len(shape)
    cells = cells.reshape(len(cells), -1, nd)
    nobs, nc = cells.shape[:2]
    w = np.ones((nobs, nc)) if weights is None else np.asarray(weights, dtype=float)
    flat = np.ravel_multi_index(tuple(cells[..., a] for a in range(nd)), shape)
    rows = np.repeat(np.arange(nobs), nc)
    return sp.csr_matrix((w.ravel(), (rows, flat.ravel())), shape=(nobs, int(np.prod(shape))))


def misfit(sim: np.ndarray, values: np.ndarray, demean: bool = True, sigma=None):
    """``(J, dJ/dsim)`` of ``J = 1/2 sum_k r_k**2``: ``r_k = (d_k - c) / sigma_k`` with
    ``d = sim - values`` and ``c`` the sigma-weighted mean of ``d`` (``demean``) or 0."""
    d = np.asarray(sim, dtype=float) - np.asarray(values, dtype=float)
    s = np.ones_like(d) if sigma is None else np.broadcast_to(np.asarray(sigma, float), d.shape)
    if demean:
        W = 1.0 / s**2
        d = d - np.sum(W * d) / np.sum(W)
    r = d / s
    return 0.5 * float(r @ r), r / s


def reference_gradient(K, Qf, spacing, S, values, fixed=None, demean=True, sigma=None):
    """``(J, dJ/dlogK, P)`` by direct solves: forward ``A P = Qf + b``, adjoint
    ``A^T lam = S^T dJ/dsim``, ``dJ/dK = -(dF/dK)^T lam``, ``dJ/dlogK = K dJ/dK``.
    Without fixed sides both solves use the gauge of :func:`solve_reference` (the demeaned
    misfit makes ``J`` and the adjoint right-hand side blind to the constant)."""
    K = np.asarray(K, dtype=np.float64)
    fixed = _check_fixed(fixed, K.ndim)
    gauge = not fixed
    A = divergence_operator(K, spacing, fixed)
    P = _solve(A, np.asarray(Qf, float).ravel() + boundary_source(K, spacing, fixed).ravel(),
               K, gauge)
    J, dJ_dsim = misfit(S @ P, values, demean, sigma)
    rhs = S.T @ dJ_dsim
    if gauge:
        assert abs(rhs.sum()) <= 1e-12 * np.abs(rhs).sum() + 1e-300, "inconsistent adjoint rhs"
    lam = _solve(A.T.tocsr(), rhs, K, gauge)
    dJ_dK = -(residual_jacobian_K(K, P.reshape(K.shape), spacing, fixed).T @ lam)
    return J, (K.ravel() * dJ_dK).reshape(K.shape), P.reshape(K.shape)
