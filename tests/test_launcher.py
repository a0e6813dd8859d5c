"""The rank-count check (hpcinv.parallel.launcher): the launcher's process count against
MPI_COMM_WORLD's size, read only from the launcher that started the process, and the CLI's
one-line failure for ``srun --mpi=none -n 2 hpcinv forward``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcinv.errors import ConfigError
from hpcinv.parallel.launcher import (RankCountError, check_rank_count, in_srun_task,
                                      launcher_size)

ROOT = Path(__file__).resolve().parents[1]


class World:
    def __init__(self, size, rank=0):
        self.size, self.rank = size, rank

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return self.rank


def srun(n, procid=0, **extra):
    """The environment srun gives task ``procid`` of an n-task step."""
    return {"SLURM_JOB_ID": "11", "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(n),
            "SLURM_STEP_NUM_TASKS": str(n), "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(procid % 4), **{k: str(v) for k, v in extra.items()}}


def batch_shell(n):
    """What a process started from the batch script (not by srun) inherits."""
    return {"SLURM_JOB_ID": "11", "SLURM_NTASKS": str(n), "SLURM_NPROCS": str(n),
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


# (case, environment, MPI world size): the sizes agree, or nothing can tell -> no error.
FINE = [
    ("srun with a working PMI", srun(4, 2), 4),
    ("srun --mpi=pmi2", srun(4, 1, PMI_RANK=1, PMI_SIZE=4), 4),
    ("srun --mpi=pmix", srun(8, 5, PMIX_RANK=5), 8),
    ("plain run in the batch shell", batch_shell(8), 1),
    ("salloc shell / laptop", {}, 1),
    # mpirun in an allocation: ranks on the batch node inherit the job's SLURM_NTASKS=8;
    # ranks on other nodes sit below the srun step of the daemons (1 task per node).
    ("Open MPI mpirun, batch node", {**batch_shell(8), "OMPI_COMM_WORLD_SIZE": "16",
                                     "OMPI_COMM_WORLD_RANK": "3"}, 16),
    ("Open MPI mpirun, daemon step", {**srun(2, 1), "OMPI_COMM_WORLD_SIZE": "16",
                                      "OMPI_COMM_WORLD_RANK": "9"}, 16),
    ("Hydra mpiexec, batch node", {**batch_shell(8), "PMI_SIZE": "6", "PMI_RANK": "2",
                                   "MPI_LOCALRANKID": "2"}, 6),
    ("Hydra mpiexec, proxies via srun", {**srun(2, 1), "PMI_SIZE": "8", "PMI_RANK": "5",
                                         "PMI_LOCAL_RANK": "1"}, 8),
    ("Hydra via srun, no PMI_SIZE", {**srun(2, 1), "PMI_RANK": "5"}, 8),
    ("Cray PALS", {"PALS_RANKID": "3", "PMI_RANK": "3", "PMI_SIZE": "64"}, 64),
    ("MVAPICH mpirun_rsh", {**batch_shell(4), "MV2_COMM_WORLD_SIZE": "4",
                            "MV2_COMM_WORLD_RANK": "1"}, 4),
    ("batch step id", {**srun(8), "SLURM_STEP_ID": "4294967291"}, 1),
    ("interactive step (srun --pty bash), one process", srun(1), 1),
    ("switched off", {**srun(2), "HPCINV_RANK_CHECK": "0"}, 1),
]


@pytest.mark.parametrize("case, env, size", FINE, ids=[c[0] for c in FINE])
def test_no_false_alarm(case, env, size):
    check_rank_count(World(size), env)


# (case, environment, world size, expected N, first copy?)
BAD = [
    ("srun --mpi=none, copy 0", srun(2, 0), 1, 2, True),
    ("srun --mpi=none, copy 1", srun(2, 1), 1, 2, False),
    ("srun, old variable names", {"SLURM_STEPID": "0", "SLURM_NPROCS": "3",
                                  "SLURM_PROCID": "2"}, 1, 3, False),
    ("Open MPI mpirun, mpi4py on the pip mpich", {**batch_shell(8), "OMPI_COMM_WORLD_SIZE": "4",
                                                  "OMPI_COMM_WORLD_RANK": "0"}, 1, 4, True),
    ("Hydra of another MPI", {"PMI_SIZE": "4", "PMI_RANK": "3"}, 1, 4, False),
    ("two worlds of two", srun(4, 0), 2, 4, True),
]


@pytest.mark.parametrize("case, env, size, n, first", BAD, ids=[c[0] for c in BAD])
def test_mismatch_is_one_line_config_error(case, env, size, n, first):
    with pytest.raises(RankCountError) as exc:
        check_rank_count(World(size), env)
    msg = str(exc.value)
    assert isinstance(exc.value, ConfigError) and "\n" not in msg
    assert msg.startswith(f"MPI did not start as {n} ranks: ")
    assert exc.value.first is first
    if size == 1:
        assert f"1 of {n} independent copies" in msg
    if "srun" in case:
        assert "srun --mpi=pmi2" in msg


def test_srun_task_detection():
    assert in_srun_task(srun(2, 1))
    assert in_srun_task(srun(2, 1, PMI_RANK=1, PMIX_RANK=1))
    assert not in_srun_task(batch_shell(2))
    assert not in_srun_task({**srun(2, 1), "OMPI_COMM_WORLD_RANK": "5"})
    assert not in_srun_task({**srun(2, 1), "SLURM_STEP_ID": "4294967290"})   # extern step
    assert not in_srun_task({**srun(2, 1), "SLURM_STEP_ID": "batch"})
    assert launcher_size(batch_shell(8)) is None
    assert launcher_size(srun(3, 2))[0::2] == (3, 2)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_",
                                "MPI_LOCAL", "PALS_", "MV2_", "HPCINV_RANK"))}
    env.update(HPCINV_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_cli_srun_mpi_none_fails_with_one_line(tmp_path):
    """What `srun --mpi=none -n 2 hpcinv forward` does: 2 processes, each a 1-rank MPI with
    srun's variables; both exit 2 before any work, and only copy 0 prints (one line)."""
    procs = [subprocess.Popen([sys.executable, "-m", "hpcinv", "forward", "--nx", "15", "--ny",
                               "7", "-q", "-o", str(tmp_path / "out")],
                              env=_clean_env(**srun(2, r)), cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in range(2)]
    outs = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in outs] == [2, 2], outs
    err0, err1 = outs[0][1], outs[1][1]
    assert err0.count("\n") == 1 and err0.startswith(
        "hpcinv: error: MPI did not start as 2 ranks: this is 1 of 2 independent copies"), err0
    assert err1 == "" and outs[0][0] == outs[1][0] == ""
    assert not (tmp_path / "out").exists()
    # hpcinv info still runs (it is how one diagnoses this), and switching the check off too.
    p = subprocess.run([sys.executable, "-m", "hpcinv", "info"], env=_clean_env(**srun(2, 0)),
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0 and "ranks              1" in p.stdout, p.stderr
