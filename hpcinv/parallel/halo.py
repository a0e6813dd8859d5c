"""Split-phase halo exchange of cell-centred fields with one ghost layer.

``start(field)`` packs the owned boundary layers of ``field`` into contiguous buffers, waits for
the backend's boundary stream (a send must never read a buffer that a kernel is still writing)
and posts non-blocking receives and sends to the face neighbours along every axis; ``finish()``
waits and unpacks the received layers into the ghost layers. Work placed between the two calls
(the interior update) overlaps the messages.

Only face layers are exchanged (no edge or corner ghosts): hpcinv's stencils reach face
neighbours only. Messages to ``MPI.PROC_NULL`` are skipped; a periodic self-neighbour on one
rank goes through MPI like any other, which lets the halo logic be tested on one rank.

GPU arrays go to MPI directly when the MPI library is CUDA-aware, otherwise they are staged
through pinned host buffers (see :func:`cuda_aware_mpi`).
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from .cuda_aware import cuda_aware_mpi


def _face(ndim: int, axis: int, index: int) -> tuple[slice | int, ...]:
    """Index of the layer ``index`` along ``axis``, owned cells only along the other axes."""
    return tuple(index if a == axis else slice(1, -1) for a in range(ndim))


class HaloExchange:
    """Exchange ghost layers of fields of one padded shape and dtype.

    Args:
        decomp: the :class:`~hpcinv.parallel.Decomposition`.
        backend: the compute backend (array module, boundary-stream sync).
        dtype: field dtype.
        cuda_aware: pass device buffers to MPI; ``None`` detects (GPU backends only).
    """

    def __init__(self, decomp, backend, dtype, cuda_aware: bool | None = None):
        self.decomp, self.backend = decomp, backend
        self.xp = backend.xp
        self.comm = decomp.comm
        shape = decomp.padded_shape
        on_gpu = self.xp is not np
        if on_gpu and cuda_aware is None:
            cuda_aware = cuda_aware_mpi()[0]
        self.staged = on_gpu and not cuda_aware
        self._links = []   # (axis, side, neighbour, send_idx, recv_idx, sbuf, rbuf, hs, hr)
        for axis in range(decomp.ndim):
            lo, hi = decomp.neighbours(axis)
            face_shape = tuple(n - 2 for a, n in enumerate(shape) if a != axis)
            for side, nb, send_i, recv_i in ((0, lo, 1, 0), (1, hi, -2, -1)):
                if nb == MPI.PROC_NULL:
                    continue
                sbuf = self.xp.empty(face_shape, dtype=dtype)
                rbuf = self.xp.empty(face_shape, dtype=dtype)
                hs = hr = None
                if self.staged:
                    hs, hr = self._pinned(face_shape, dtype), self._pinned(face_shape, dtype)
                self._links.append((axis, side, nb, _face(decomp.ndim, axis, send_i),
                                    _face(decomp.ndim, axis, recv_i), sbuf, rbuf, hs, hr))
        self._field = None
        self._reqs = []

    def _pinned(self, shape, dtype):
        import cupyx
        return cupyx.empty_pinned(shape, dtype=dtype)

    @property
    def messages(self) -> int:
        """Messages sent per exchange (faces with a neighbour, periodic self included)."""
        return len(self._links)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent per exchange (all faces together)."""
        return sum(int(link[5].nbytes) for link in self._links)

    @property
    def active(self) -> bool:
        """True if this rank exchanges any message."""
        return bool(self._links)

    def start(self, field):
        """Pack ``field``'s boundary layers and post the messages (non-blocking)."""
        if self._field is not None:
            raise RuntimeError("HaloExchange.start() called twice without finish()")
        self._field = field
        xp = self.xp
        with self.backend.boundary():
            for (_, _, _, sidx, _, sbuf, _, hs, _) in self._links:
                xp.copyto(sbuf, field[sidx])
                if self.staged:
                    sbuf.get(out=hs, blocking=False)
        self.backend.sync_boundary()   # packed (and staged) before any send reads the buffers
        reqs = []
        for (axis, side, nb, _, _, sbuf, rbuf, hs, hr) in self._links:
            # A message travelling towards the upper side carries tag 2*axis, downwards 2*axis+1;
            # the lower neighbour's upward message is what we receive from below.
            rtag = 2 * axis + (0 if side == 0 else 1)
            reqs.append(self.comm.Irecv(hr if self.staged else rbuf, source=nb, tag=rtag))
        for (axis, side, nb, _, _, sbuf, rbuf, hs, hr) in self._links:
            stag = 2 * axis + (1 if side == 0 else 0)
            reqs.append(self.comm.Isend(hs if self.staged else sbuf, dest=nb, tag=stag))
        self._reqs = reqs

    def finish(self):
        """Wait for the messages and write the received layers into the ghost layers."""
        if self._field is None:
            return
        MPI.Request.Waitall(self._reqs)
        field = self._field
        with self.backend.boundary():
            for (_, _, _, _, ridx, _, rbuf, _, hr) in self._links:
                if self.staged:
                    rbuf.set(hr)
                field[ridx] = rbuf
        self.backend.sync_boundary()
        self._field, self._reqs = None, []

    def exchange(self, field):
        """Blocking exchange: ``start(field)`` then ``finish()``."""
        self.start(field)
        self.finish()
