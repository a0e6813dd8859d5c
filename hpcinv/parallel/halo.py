"""Split-phase halo exchange of cell-centred fields with one ghost layer.

``start(field, stream)`` packs the owned boundary layers of ``field`` for every neighbour into
one contiguous send buffer (one kernel launch on ``stream``), stages it to a host buffer when
MPI cannot read device memory, waits for ``stream`` (MPI must not read a buffer that the
device is still writing) and posts the non-blocking receives and sends. ``finish()`` waits for
the messages, stages the receive buffer back if needed and unpacks it into the ghost layers
(one launch on the same stream). Work issued between the two calls on other streams (the
interior update) overlaps the messages. Ordering, per exchange:

* pack after the field's producer: the caller issues ``start`` on the producer's stream or
  makes that stream wait for the producer's event;
* MPI reads the send buffer after ``sync(stream)`` in ``start``; MPI writes the receive buffer
  only between the posting of the receives (after that sync, so the previous unpack has read
  it) and ``Waitall``;
* the unpack runs on ``stream`` after ``Waitall``; a consumer on another stream waits for an
  event recorded on ``stream`` after ``finish``.

Only face layers are exchanged (no edge or corner ghosts): hpcinv's stencils reach face
neighbours only. Messages to ``MPI.PROC_NULL`` are skipped; a periodic self-neighbour on one
rank goes through MPI like any other, which lets the halo logic be tested on one rank.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from .cuda_aware import decided_cuda_aware
from .pack import PACK, UNPACK


class HaloLink(NamedTuple):
    """One message each way with one face neighbour.

    Attributes:
        axis, side: the face (side 0 = lower, 1 = upper).
        neighbour: rank of the neighbour in the communicator.
        send_box, recv_box: ``(lo, hi)`` of the owned layer sent and of the ghost layer filled.
        offset, count: position and length of this face in the send and receive buffers.
    """
    axis: int
    side: int
    neighbour: int
    send_box: tuple
    recv_box: tuple
    offset: int
    count: int

    @property
    def send_tag(self) -> int:
        """Messages travelling towards the upper side carry tag ``2 axis``, downwards
        ``2 axis + 1``."""
        return 2 * self.axis + (1 if self.side == 0 else 0)

    @property
    def recv_tag(self) -> int:
        return 2 * self.axis + (0 if self.side == 0 else 1)


def _layer(shape, axis: int, index: int):
    """Box of the layer ``index`` along ``axis``, owned cells along the other axes."""
    lo = tuple(index if a == axis else 1 for a in range(len(shape)))
    hi = tuple(index + 1 if a == axis else n - 1 for a, n in enumerate(shape))
    return lo, hi


class HaloExchange:
    """Exchange ghost layers of fields of one padded shape and dtype.

    Args:
        decomp: the :class:`~hpcinv.parallel.Decomposition`.
        backend: the compute backend (streams, kernels, host syncs).
        dtype: field dtype.
        cuda_aware: hand device buffers to MPI; ``None``: the backend's one decision for the
            run (``backend.cuda_aware``, decided here if nobody did). Host memory is always
            handed over directly.
    """

    def __init__(self, decomp, backend, dtype, cuda_aware: bool | None = None):
        self.decomp, self.backend, self.dtype = decomp, backend, np.dtype(dtype)
        self.comm = decomp.comm
        shape = decomp.padded_shape
        if cuda_aware is None:
            cuda_aware = decided_cuda_aware(backend)
        self.staged = backend.device_memory and not cuda_aware
        links, offset = [], 0
        for axis in range(decomp.ndim):
            lo_nb, hi_nb = decomp.neighbours(axis)
            for side, nb, send_i, recv_i in ((0, lo_nb, 1, 0),
                                             (1, hi_nb, shape[axis] - 2, shape[axis] - 1)):
                if nb == MPI.PROC_NULL:
                    continue
                count = int(np.prod([n - 2 for a, n in enumerate(shape) if a != axis]))
                links.append(HaloLink(axis, side, nb, _layer(shape, axis, send_i),
                                      _layer(shape, axis, recv_i), offset, count))
                offset += count
        self.links = tuple(links)
        n = max(1, offset)
        bk = backend
        self.send_buffer, self.recv_buffer = bk.empty((n,), self.dtype), bk.empty((n,), self.dtype)
        if self.staged:
            self.send_host, self.recv_host = bk.pinned((n,), self.dtype), bk.pinned((n,), self.dtype)
        mpi_send = self.send_host if self.staged else self.send_buffer
        mpi_recv = self.recv_host if self.staged else self.recv_buffer
        self._mpi_send, self._mpi_recv = mpi_send, mpi_recv
        self._send_views = [mpi_send[l.offset:l.offset + l.count] for l in self.links]
        self._recv_views = [mpi_recv[l.offset:l.offset + l.count] for l in self.links]
        self._send_boxes = [l.send_box for l in self.links]
        self._recv_boxes = [l.recv_box for l in self.links]
        if self.links:
            self._pack = bk.kernel(PACK, decomp.ndim, self.dtype)
            self._unpack = bk.kernel(UNPACK, decomp.ndim, self.dtype)
        self._bound = {}
        self._pending = None

    @property
    def messages(self) -> int:
        """Messages sent per exchange (faces with a neighbour, periodic self included)."""
        return len(self.links)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent per exchange (all faces together)."""
        return sum(l.count for l in self.links) * self.dtype.itemsize

    @property
    def active(self) -> bool:
        """True if this rank exchanges any message."""
        return bool(self.links)

    def _bindings(self, field):
        """Pack and unpack launches bound to ``field`` (made once per field buffer)."""
        key = (id(field), field.__array_interface__["data"][0] if hasattr(
            field, "__array_interface__") else field.data.ptr)
        b = self._bound.get(key)
        if b is None:
            if len(self._bound) > 8:
                self._bound.clear()
            b = self._bound[key] = (self._pack.bind(A=field, buf=self.send_buffer),
                                    self._unpack.bind(A=field, buf=self.recv_buffer), field)
        return b

    def start(self, field, stream=None):
        """Pack ``field``'s boundary layers on ``stream`` and post the messages."""
        if self._pending is not None:
            raise RuntimeError("HaloExchange.start() called twice without finish()")
        bk = self.backend
        stream = bk.compute if stream is None else stream
        self._pending = (field, stream)
        if not self.links:
            return
        pack, _, _ = self._bindings(field)
        bk.launch(pack, self._send_boxes, stream)
        if self.staged:
            bk.copy(self.send_host, self.send_buffer, stream=stream)
        bk.sync(stream)                 # packed (and staged) before MPI reads the buffer
        bk.host_access(self._mpi_recv, True, "MPI_Irecv")
        bk.host_access(self._mpi_send, False, "MPI_Isend")
        reqs = [self.comm.Irecv(v, source=l.neighbour, tag=l.recv_tag)
                for l, v in zip(self.links, self._recv_views)]
        reqs += [self.comm.Isend(v, dest=l.neighbour, tag=l.send_tag)
                 for l, v in zip(self.links, self._send_views)]
        self._reqs = reqs

    def finish(self):
        """Wait for the messages and unpack them into the ghost layers (on the stream of
        :meth:`start`)."""
        if self._pending is None:
            raise RuntimeError("HaloExchange.finish() called without start()")
        field, stream = self._pending
        self._pending = None
        if not self.links:
            return
        bk = self.backend
        MPI.Request.Waitall(self._reqs)
        self._reqs = []
        bk.host_access(self._mpi_recv, True, "MPI_Waitall (received data)")
        if self.staged:
            bk.copy(self.recv_buffer, self.recv_host, stream=stream, snapshot=False)
        _, unpack, _ = self._bindings(field)
        bk.launch(unpack, self._recv_boxes, stream)

    def exchange(self, field, stream=None):
        """Blocking exchange on one stream: ``start(field, stream)`` then ``finish()``."""
        self.start(field, stream)
        self.finish()
