"""Adjoint warm starts from a small subspace of earlier adjoint solutions (issue 12, item 2).

The adjoint solve is linear in its source, ``S^T w`` with ``w`` the replicated observation
weights ``dJ/dP``. For a fixed permeability the adjoint of a source ``sum_i c_i S^T w_i`` is
``sum_i c_i psi_i``; the permeability changes a little between outer iterations, so that sum
is only a start, but it is a better one than the single rescaled previous solution (which
captures the new source's component along ``w_old`` only).

:class:`AdjointSubspace` keeps the last ``m`` adjoint solutions ``psi_i = (P_i, q_i)`` and
their weights ``w_i`` and starts the next solve from ``sum_i c_i psi_i``, ``c`` the least-
squares fit of ``w`` by the ``w_i``. The fit is a replicated ``nobs x m`` problem solved with
modified Gram-Schmidt and exactly rounded sums (:func:`math.fsum`): every rank computes the
same ``c`` bitwise, with no reduction and no dependence on a BLAS's threading. Memory: ``m``
cell fields of the solver dtype and ``m ndim`` float32 face fields (:mod:`.subspace`).
"""
from __future__ import annotations

import math

import numpy as np

from .subspace import SolutionSubspace

#: A column whose norm drops below this fraction of its own in the orthogonalisation is dropped
#: (nearly dependent on the others).
DEPENDENT = 1e-8


def _dot(a, b) -> float:
    return math.fsum(float(x) * float(y) for x, y in zip(a, b))


def least_squares(columns, w) -> list[float]:
    """``c`` minimising ``|sum_i c_i columns[i] - w|`` (replicated, deterministic): modified
    Gram-Schmidt with exactly rounded dot products; nearly dependent columns get ``c_i = 0``."""
    k = len(columns)
    Q, R, keep = [], np.zeros((k, k)), []
    for j, col in enumerate(columns):
        v = [float(x) for x in col]
        n0 = math.sqrt(_dot(v, v))
        for i, qi in zip(keep, Q):
            r = _dot(qi, v)
            R[i, j] = r
            v = [a - r * b for a, b in zip(v, qi)]
        n = math.sqrt(_dot(v, v))
        if n0 == 0 or n <= DEPENDENT * n0:
            continue
        R[j, j] = n
        Q.append([a / n for a in v])
        keep.append(j)
    c = [0.0] * k
    rhs = {i: _dot(qi, w) for i, qi in zip(keep, Q)}
    for pos in range(len(keep) - 1, -1, -1):           # back substitution on the kept columns
        i = keep[pos]
        s = rhs[i] - math.fsum(R[i, j] * c[j] for j in keep[pos + 1:])
        c[i] = s / R[i, i]
    return c


class AdjointSubspace(SolutionSubspace):
    """The last ``m`` adjoint solutions and weights; warm starts by their least-squares mix.

    Args:
        backend: the compute backend; ``shape``, ``dtype``: of the padded local fields;
        ndim: dimensions (face fields per solution); m: how many solutions to keep (>= 1).
    """

    prefix, key_name, key_location, option = "adjoint_basis", "w", "replicated", "adjoint_memory"

    @property
    def weights(self) -> list:
        """The kept solutions' source weights (``np.ndarray (nobs,)``), oldest first."""
        return self.keys

    def start(self, w, P, q, flux_dtype=None) -> list[float] | None:
        """Write ``sum_i c_i psi_i`` (``c``: the fit of ``w``) into ``P``, ``q`` (the flux sums
        formed in ``flux_dtype``: :meth:`~.subspace.SolutionSubspace.mix`); returns ``c``, or
        ``None`` (nothing written) when the subspace is empty or ``w`` has another length."""
        w = np.asarray(w, dtype=float)
        if not self.weights or any(wi.shape != w.shape for wi in self.weights):
            return None
        c = least_squares(self.weights, w)
        self.mix(c, P, q, flux_dtype=flux_dtype)
        return c
