"""Driver of tests/test_io_watchdog.py (run under ``mpiexec -n 2``): one ``write_h5`` call in
the ``mpio`` mode whose collective region goes wrong on rank 1, the way parallel HDF5 does when
one rank's MPI-IO write fails (``EFBIG`` after ``RLIMIT_FSIZE``) or never returns.

The serial h5py of CI cannot open an ``mpio`` file, so the collective region's body,
``h5write._write_mpio``, is replaced: the healthy rank waits in a collective MPI call (as it
would in HDF5's ``MPI_Allreduce``/``MPI_Barrier``), rank 1

* ``raise``: raises ``OSError(EFBIG)`` (its collective write failed locally);
* ``stuck``: never returns (sleeps; the watchdog's timeout, ``HPCINV_IO_TIMEOUT``, ends it).

Everything around it is the real writer: mode choice (told that h5py has MPI), block checks,
the region with its watchdog, the error handling. Usage: ``h5_fault_in_collective.py MODE FILE``.
"""
from __future__ import annotations

import errno
import sys
import time

import numpy as np
from mpi4py import MPI

from hpcinv.io import h5mode, h5write
from hpcinv.parallel import Decomposition


def fake_write_mpio(how: str):
    def body(tmp, comm, items, create, replicated):
        if comm.Get_rank() != 1:
            comm.Barrier()                      # blocked in a collective for ever
            raise AssertionError("rank 1 entered the barrier: the fault was not injected")
        time.sleep(0.2)                         # the others are inside the collective first
        if how == "raise":
            raise OSError(errno.EFBIG, "File too large")
        time.sleep(600)
    return body


def main() -> None:
    how, path = sys.argv[1], sys.argv[2]
    h5mode.h5py_has_mpi = lambda: True
    h5write._write_mpio = fake_write_mpio(how)
    comm = MPI.COMM_WORLD
    d = Decomposition((13, 7), comm=comm)
    cells = {"K": np.zeros(d.padded_shape)}
    h5write.write_h5(path, d, cells, mode="mpio")
    print(f"rank {comm.Get_rank()}: write_h5 returned", flush=True)


if __name__ == "__main__":
    main()
