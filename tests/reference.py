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


def divergence_operator(K: np.ndarray, spacing) -> sp.csr_matrix:
    """Sparse ``A`` with ``(A @ P.ravel())`` = ``div(-Kf grad P)`` on interior faces, no-flux walls."""
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
    rows, cols, vals = (np.concatenate(v) for v in (rows, cols, vals))
    return sp.csr_matrix((vals, (rows, cols)), shape=(N, N))


def solve_reference(K: np.ndarray, Qf: np.ndarray, spacing) -> np.ndarray:
    """Pressure of the discrete problem with the gauge ``sum(Kmax_loc * P) = 0``."""
    K = np.asarray(K, dtype=np.float64)
    Qf = np.asarray(Qf, dtype=np.float64)
    assert K.shape == Qf.shape and len(spacing) == K.ndim
    A = divergence_operator(K, spacing)
    c = kmax_local(K).ravel()
    N = K.size
    B = sp.bmat([[A, sp.csr_matrix(c[:, None])], [sp.csr_matrix(c[None, :]), None]],
                format="csc")
    rhs = np.concatenate([Qf.ravel(), [0.0]])
    x = spla.spsolve(B, rhs)
    return x[:N].reshape(K.shape)


def fluxes(K: np.ndarray, P: np.ndarray, spacing):
    """Face fluxes ``q_a = -Kf dP/d_a``, shape ``n_a + 1`` along ``a``, zero on the walls."""
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
        out.append(q)
    return out


def residual(K: np.ndarray, Qf: np.ndarray, P: np.ndarray, spacing) -> np.ndarray:
    """``div q - Qf`` from :func:`fluxes` (independent of :func:`divergence_operator`)."""
    q = fluxes(K, P, spacing)
    div = np.zeros(K.shape)
    for a, d in enumerate(spacing):
        div += np.diff(q[a], axis=a) / d
    return div - Qf
