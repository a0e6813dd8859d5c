"""Which HDF5 write strategy a run uses: ``single`` (one rank), ``mpio`` (parallel h5py:
one shared file, collective MPI-IO), ``vds`` (a part file per rank stitched by virtual datasets)
or ``sequential`` (testing aid); ``HPCINV_H5_MODE`` forces one (:mod:`hpcinv.io.h5write`)."""
from __future__ import annotations

import os

from ..errors import ConfigError
from .h5util import _h5py

MODES = ("auto", "mpio", "vds", "single", "sequential")


def h5py_has_mpi() -> bool:
    """True if the installed h5py was built against parallel HDF5 (``driver='mpio'``)."""
    return bool(_h5py().get_config().mpi)


def choose_mode(comm, mode: str | None = None) -> str:
    """The write strategy for ``comm``: ``mode`` or ``$HPCINV_H5_MODE`` unless ``auto``.

    ``auto``: ``single`` on one rank, ``mpio`` where h5py has MPI, else ``vds``. ``vds`` may be
    forced on any rank count (tests use it on one rank); ``mpio`` needs a parallel h5py.
    ``sequential`` (testing aid, not scalable): one shared plain file written by the ranks in
    turn with the same hyperslab code as ``mpio``.
    """
    mode = (mode or os.environ.get("HPCINV_H5_MODE") or "auto").lower()
    if mode not in MODES:
        raise ConfigError(f"HDF5 write mode (HPCINV_H5_MODE) must be one of "
                          f"{', '.join(MODES)}, got {mode!r}")
    size = comm.Get_size()
    if mode == "auto":
        if size == 1:
            return "single"
        return "mpio" if h5py_has_mpi() else "vds"
    if mode == "mpio" and not h5py_has_mpi():
        raise ConfigError("HDF5 write mode 'mpio' needs h5py built with MPI (parallel HDF5)")
    if mode == "single" and size > 1:
        raise ConfigError("HDF5 write mode 'single' needs a one-rank communicator")
    return mode


def describe_mode(comm) -> tuple[str, str]:
    """``(mode, why)``: the write strategy :func:`choose_mode` picks on ``comm`` and the reason,
    for ``hpcinv info`` and the selftest; ``("?", error)`` where ``HPCINV_H5_MODE`` cannot be
    honoured. Not collective."""
    env = (os.environ.get("HPCINV_H5_MODE") or "").strip()
    try:
        mode = choose_mode(comm)
    except ConfigError as exc:
        return "?", str(exc)
    if env and env.lower() != "auto":
        return mode, f"HPCINV_H5_MODE={env}"
    mpi = h5py_has_mpi()
    if comm.Get_size() == 1:
        return mode, "one rank: a plain file"
    if mpi:
        return mode, "h5py built with MPI: one shared file, collective MPI-IO writes"
    return mode, ("serial h5py (e.g. the pip wheel): a part file per rank stitched by virtual "
                  "datasets; parallel h5py gives mpio (README: Using a cluster's own MPI)")
