"""A global sum that is bitwise the same for any decomposition (reproducible summation).

A plain MPI SUM of per-rank partial sums depends on how the cells are split: floating-point
addition is not associative. :func:`reproducible_sum` rounds every term to a multiple of a
quantum ``q`` that all ranks agree on, so that every partial sum is an integer times ``q`` below
``2**53 q``: exact in float64, in any order, locally and across ranks. Two levels (the terms,
then their rounding remainders with a finer quantum) make the result accurate to about
``n**2 max|x| 2**-105`` plus one final rounding, whatever the cancellation. Cost: one max-norm
and two sums on the backend (host syncs), one MPI MAX and one MPI SUM of two numbers.
"""
from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI


def quantum(bound: float) -> float:
    """``2**ceil(log2(bound)) * 2**-52``: integers times it, summed while their sum's magnitude
    stays below ``bound``'s power of two, are exact in float64."""
    m, e = math.frexp(bound)              # bound = m 2**e, 0.5 <= m < 1
    return math.ldexp(1.0, (e if m > 0.5 else e - 1) - 52)


def reproducible_sum(backend, comm, x, n_global: int, region=None, work=None) -> float:
    """``sum(x[region])`` over every rank, bitwise identical on every rank and for any
    decomposition (collective).

    Args:
        backend: the :class:`~hpcinv.backend.Backend` of ``x``.
        comm: the communicator of the ranks holding the parts of ``x``.
        x: a backend array; ``x[region]`` are this rank's terms (the owned cells).
        n_global: the number of terms over all ranks (an upper bound will do).
        region: the slices of this rank's terms (``None``: all of ``x``).
        work: a float64 backend array shaped like ``x``, not ``x`` itself, to hold the rounded
            terms (``None``: a new one).

    A non-finite term makes the sum NaN (or inf) on every rank.
    """
    bk = backend
    M = comm.allreduce(bk.max_abs(x, region), op=MPI.MAX)
    if M == 0.0:
        return 0.0
    if not math.isfinite(M):
        return M                            # NaN or inf, on every rank
    if work is None:
        work = bk.empty(x.shape, np.float64)
    elif work is x or work.dtype != np.float64:
        raise ValueError("reproducible_sum: work must be a float64 array other than x")
    q1 = quantum(float(n_global) * M)
    q2 = quantum(float(n_global) * 0.5 * q1)   # the remainders are at most q1 / 2

    def high(xp, v):
        return xp.rint(v.astype(xp.float64) / q1)

    def low(xp, v, h):
        return xp.rint((v.astype(xp.float64) - h * q1) / q2)    # v - h q1: exact
    bk.elementwise(high, x, out=work)
    s1 = bk.sum(work, region)
    bk.elementwise(low, x, work, out=work)
    s2 = bk.sum(work, region)
    s = comm.allreduce(np.array([s1, s2]), op=MPI.SUM)
    return float(s[0]) * q1 + float(s[1]) * q2
