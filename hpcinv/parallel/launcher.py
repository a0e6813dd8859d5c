"""Did MPI start as many ranks as the launcher started processes?

``srun --mpi=none -n 2 hpcinv forward`` (or an mpi4py linked to another MPI than the launcher's)
starts 2 processes whose ``MPI_Init`` each finds no process manager it understands: each becomes
a 1-rank ``MPI_COMM_WORLD``, and the job runs 2 independent copies of the whole problem, writing
the same files. :func:`check_rank_count` compares the launcher's process count with
``MPI.COMM_WORLD``'s size and stops with one line saying what to do.

The launcher's count is read only from variables of the launcher that started *this* process:

* ``OMPI_COMM_WORLD_SIZE`` (Open MPI's mpirun/prterun), ``PMI_SIZE`` (MPICH's Hydra, Cray
  PALS, ``srun --mpi=pmi2``), ``MV2_COMM_WORLD_SIZE`` (MVAPICH's mpirun_rsh);
* else SLURM's ``SLURM_STEP_NUM_TASKS`` (``SLURM_NTASKS``), only inside an srun task:
  ``SLURM_STEP_ID`` names a real step, and ``SLURM_PROCID`` agrees with any global rank another
  launcher set. ``SLURM_NTASKS`` alone means nothing: under mpirun or Hydra's mpiexec in an
  allocation, every rank inherits the allocation's count (or that of the srun step that
  started the launcher's per-node daemons), and the batch shell has the job's count with no
  srun involved.

``HPCINV_RANK_CHECK=0`` switches the check off.
"""
from __future__ import annotations

import os

from ..errors import ConfigError

_SIZE_VARS = (("OMPI_COMM_WORLD_SIZE", "Open MPI's launcher"),
              ("PMI_SIZE", "the PMI launcher (Hydra mpiexec, Cray PALS, srun --mpi=pmi2)"),
              ("MV2_COMM_WORLD_SIZE", "MVAPICH's launcher"))
_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


class RankCountError(ConfigError):
    """MPI's world size differs from the number of processes the launcher started.

    ``first`` is False on every copy but the launcher's rank 0, so that the command line
    prints the line once, not once per copy (each copy is rank 0 of its own world).
    """

    def __init__(self, message: str, first: bool = True):
        super().__init__(message)
        self.first = first


def _int(value):
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def in_srun_task(environ=None) -> bool:
    """Whether srun itself started this process (not mpirun/Hydra below an srun step)."""
    env = os.environ if environ is None else environ
    step = _int(env.get("SLURM_STEP_ID", env.get("SLURM_STEPID")))
    if step is None or step >= 4294967290:    # extern, batch, interactive, pending "steps"
        return False
    procid = env.get("SLURM_PROCID")
    if procid is None:
        return False
    return all(env.get(v) in (None, "", procid) for v in _RANK_VARS)


def launcher_size(environ=None):
    """(process count, launcher description, this process's launcher rank) from the launcher
    that started this process, or ``None`` when none can be told."""
    env = os.environ if environ is None else environ
    for var, who in _SIZE_VARS:
        n = _int(env.get(var))
        if n:
            rank = next((_int(env.get(v)) for v in ("OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                                    "MV2_COMM_WORLD_RANK")
                         if _int(env.get(v)) is not None), None)
            return n, f"{who} ({var}={n})", rank
    if in_srun_task(env):
        for var in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"):
            n = _int(env.get(var))
            if n:
                return n, f"srun ({var}={n})", _int(env.get("SLURM_PROCID"))
    return None


def check_rank_count(comm=None, environ=None) -> None:
    """Raise :class:`RankCountError` (a ``ConfigError``) when the launcher started N processes
    but ``comm`` (default ``MPI.COMM_WORLD``) does not have N ranks."""
    env = os.environ if environ is None else environ
    if env.get("HPCINV_RANK_CHECK", "1").strip() == "0":
        return
    found = launcher_size(env)
    if found is None:
        return
    n, who, launcher_rank = found
    if comm is None:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    size = comm.Get_size()
    if size == n:
        return
    if size == 1:
        what = f"this is 1 of {n} independent copies, each a 1-rank MPI"
    else:
        what = f"MPI_COMM_WORLD has {size} ranks"
    fix = ("use srun --mpi=pmi2 (the pip mpich wheel, on one node) or mpi4py built against "
           "the cluster's MPI with that MPI's launcher (srun --mpi=pmix, mpirun); "
           "hpcinv info shows mpi_library; HPCINV_RANK_CHECK=0 skips this check")
    if "srun" not in who:
        fix = ("launch with the mpiexec/mpirun of the MPI that mpi4py is built against "
               "(hpcinv info shows mpi_library); HPCINV_RANK_CHECK=0 skips this check")
    raise RankCountError(f"MPI did not start as {n} ranks: {what} (launcher: {who}); {fix}",
                         first=size > 1 or launcher_rank in (None, 0))
