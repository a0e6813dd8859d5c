"""Scratch fields shared by everything that runs on one backend (issue 20: "the same scratch
reused across forward, adjoint, smoothing and Tikhonov where lifetimes allow").

The gradient smoother's ping-pong buffers, the Tikhonov term's copy of the model and its
energy terms, the forward subspace's float64 Galerkin sums and the misfit error's reproducible
sum each need a few whole fields, but only for the duration of one call, and those calls never
overlap. Each used to own its fields for the whole run (8 fields per cell of a 3D inversion
with smoothing and Tikhonov); they now borrow them from one pool per ``(shape, dtype)``, which
holds as many fields as the most that were ever borrowed at once (3 in that run).

Borrowing is a ``with`` block (:meth:`ScratchPool.borrow`): the fields are lent for its body,
their contents undefined on entry, and given back at its end; nested borrows get other fields
(the pool grows), so two live borrowers never share a field. Borrows are strictly nested
(last in, first out): giving back any but the newest is a bug and raises.

The fields stay allocated (and counted by :attr:`~hpcinv.backend.Backend.memory`) until the
backend goes or :meth:`~hpcinv.backend.Backend.release_scratch` drops the pools that lend
nothing (a levelled run, at each level change: the pools are per grid shape), so the counter's
high-water mark is the pool's size, not its churn. Every use of
a lent field is an ordinary backend operation on its stream, so a field's next borrower is
ordered after its last one like any other reuse of an array.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np


class ScratchPool:
    """Fields of one padded ``shape`` and ``dtype`` lent for the duration of a ``with`` block.

    Args:
        backend: the :class:`~hpcinv.backend.Backend` that allocates the fields.
        shape: the fields' shape (the padded local block); dtype: their dtype.
    """

    def __init__(self, backend, shape, dtype):
        self.backend, self.shape, self.dtype = backend, tuple(shape), np.dtype(dtype)
        self.fields: list = []        # every field allocated, in the order they are lent
        self.lent = 0                 # fields lent now (the first ``lent`` of ``fields``)
        self.most = 0                 # the most lent at once

    @contextmanager
    def borrow(self, n: int):
        """Lend ``n`` fields (a list) for the ``with`` block; contents undefined."""
        start = self.lent
        while len(self.fields) < start + n:
            self.fields.append(self.backend.zeros(self.shape, self.dtype))
        self.lent = start + n
        self.most = max(self.most, self.lent)
        try:
            yield self.fields[start:start + n]
        finally:
            if self.lent != start + n:
                raise RuntimeError("scratch fields given back out of order (borrows must nest)")
            self.lent = start

