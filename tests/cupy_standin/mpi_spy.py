"""MPI's host accesses to pinned staging buffers, made visible to the stand-in's tracker.

mpi4py reads a device array's ``__cuda_array_interface__`` when a message is posted, which the
stand-in records itself (CUDA-aware path). A pinned NumPy buffer (staged path) is read through
the buffer protocol, which Python cannot observe; :func:`spy_on_halos` therefore wraps the
communicator of every :class:`~hpcinv.parallel.HaloExchange` made while it is active, so that
``Isend``/``Irecv`` on a NumPy buffer count as host accesses at the moment they are posted.
"""
from __future__ import annotations

import numpy as np

from .tracking import host_access


class SpyComm:
    """A communicator proxy: NumPy buffers of ``Isend``/``Irecv``/``Send``/``Recv`` are host
    accesses (read by sends, written by receives); everything else is forwarded."""

    def __init__(self, comm):
        self._comm = comm

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def _touch(self, buf, write, what):
        if isinstance(buf, np.ndarray):
            host_access(buf, write, what)


def _spied(name: str, write: bool):
    """The communicator method ``name``, recording its buffer as a host read (sends) or write
    (receives) before MPI touches it."""
    def call(self, buf, *args, **kwargs):
        self._touch(buf, write, f"MPI_{name} (pinned buffer)")
        return getattr(self._comm, name)(buf, *args, **kwargs)
    call.__name__ = name
    return call


for _name, _write in (("Isend", False), ("Send", False), ("Irecv", True), ("Recv", True)):
    setattr(SpyComm, _name, _spied(_name, _write))


def spy_on_halos(monkeypatch):
    """Wrap the communicator of every HaloExchange constructed from now on (pytest
    ``monkeypatch`` undoes it)."""
    from hpcinv.parallel import halo
    init = halo.HaloExchange.__init__

    def spied(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.comm = SpyComm(self.comm)
    monkeypatch.setattr(halo.HaloExchange, "__init__", spied)
