"""OpenMP wait policy (issue 13): idle OpenMP threads sleep (``OMP_WAIT_POLICY=passive``)
unless the user set the variable; set before the OpenMP runtime loads, so it takes effect.
Measured in docs/performance.md ("OpenMP wait policy")."""
import os
import subprocess
import sys

import pytest


def display(tmp_path, **env):
    """The OpenMP runtime's own report of its settings (``OMP_DISPLAY_ENV``) in a forward run
    with ``env`` (and ``OMP_WAIT_POLICY`` unset unless given)."""
    e = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    e.update(OMP_DISPLAY_ENV="verbose", HPCINV_NUM_THREADS="2", **env)
    p = subprocess.run([sys.executable, "-m", "hpcinv", "forward", "--nx", "8", "--ny", "8",
                        "--backend", "host", "-q", "-o", str(tmp_path / "run")],
                       capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr
    if "OMP_WAIT_POLICY =" not in p.stderr:
        pytest.skip("this OpenMP runtime does not display its environment")
    return p.stderr


def test_passive_by_default(tmp_path):
    out = display(tmp_path)
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out
    if "GOMP_SPINCOUNT" in out:         # libgomp: unset also shows PASSIVE, but spins 300000
        assert "GOMP_SPINCOUNT = '0'" in out


def test_the_users_value_wins(tmp_path):
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in display(tmp_path, OMP_WAIT_POLICY="active")


def test_set_before_the_backend_loads_kernels(monkeypatch):
    from hpcinv.backend import make_backend
    from mpi4py import MPI
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    make_backend("host", comm=MPI.COMM_SELF, threads=1)
    assert os.environ["OMP_WAIT_POLICY"] == "passive"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    make_backend("host", comm=MPI.COMM_SELF, threads=1)
    assert os.environ["OMP_WAIT_POLICY"] == "active"
