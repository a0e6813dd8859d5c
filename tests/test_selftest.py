"""``hpcinv selftest``: passes on 1, 2 and 3 ranks, names an injected fault and exits 1, gives
parseable JSON, and runs its ``--full`` (GPU acceptance) checks on the host with the
device-only ones SKIPped.

The CLI runs as a separate process (exit status and one-line rows are properties of the real
process); multi-rank cases launch the ``mpiexec`` beside this Python. All runs use ``--quick``
sizes and one thread per rank so the module stays well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.app.selftest.correctness import compare_exact
from hpcinv.app.selftest.runner import FAULT_ENV, STATUS_ORDER, Runner
from test_cli import ROOT, _clean_env, mpiexec


def run_selftest(n: int, *args, timeout=120, **env):
    """``hpcinv selftest ARGS`` on ``n`` ranks (``n = 1``: no launcher)."""
    cmd = [sys.executable, "-m", "hpcinv", "selftest", *args]
    if n > 1:
        exe = mpiexec()
        if exe is None:
            pytest.skip("no mpiexec found (pip install mpich, or load the cluster's MPI)")
        cmd = [exe, "-n", str(n)] + cmd
    full_env = _clean_env(OMP_WAIT_POLICY="passive", HPCINV_STREAM_CHECK="0")
    full_env.pop(FAULT_ENV, None)
    full_env.update(env)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def rows(stdout: str) -> dict:
    """``{check: (status, detail)}`` from the table."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 2 and parts[1] in STATUS_ORDER:
            out[parts[0]] = (parts[1], parts[4] if len(parts) > 4 else "")
    return out


CORE = ("environment", "device-binding", "forward-2d", "forward-3d", "gradient-2d",
        "gradient-3d", "descent-2d", "descent-3d", "speed")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_quick_passes(n):
    p = run_selftest(n, "--quick")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    table = rows(p.stdout)
    for name in CORE + ("exchange",):
        assert name in table, (name, p.stdout)
    assert table["device-binding"][0] == "SKIP"          # host backend: no GPU
    for name in CORE[2:8]:
        assert table[name][0] == "PASS", (name, table[name])
        assert "bitwise = 1 rank" in table[name][1], table[name]
    assert f"{n} rank(s)" in table["environment"][1]
    assert "selftest PASS" in p.stdout
    assert p.stdout.count("hpcinv selftest (quick)") == 1     # rank 0 prints, once


def test_exchange_fault_fails_and_names_the_check():
    p = run_selftest(2, "--quick", HPCINV_SELFTEST_FAULT="exchange")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    table = rows(p.stdout)
    status, detail = table["exchange"]
    assert status == "FAIL"
    assert detail.startswith("rank 1: 1 of ") and "ghost values wrong" in detail, detail
    assert table["forward-2d"][0] == "PASS"              # only the named check fails
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("selftest FAIL") and "failed: exchange" in last, last


def test_forward_fault_is_a_bitwise_failure():
    p = run_selftest(1, "--quick", HPCINV_SELFTEST_FAULT="forward")
    assert p.returncode == 1, p.stdout + p.stderr
    table = rows(p.stdout)
    for nd in (2, 3):
        status, detail = table[f"forward-{nd}d"]
        assert status == "FAIL" and "not bitwise equal to 1 rank: Pf" in detail, detail
    assert table["gradient-2d"][0] == "PASS"


def test_json_full_on_host_skips_device_only_checks():
    p = run_selftest(1, "--quick", "--full", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)                         # one JSON object, nothing else
    assert report["ok"] is True and report["selftest"] == "PASS"
    assert report["ranks"] == 1 and report["backend"] == "host"
    checks = {c["name"]: c for c in report["checks"]}
    for name in CORE + ("exchange", "halo-ordering", "overlap-bitwise", "launch-cost", "teff",
                        "pool-memory"):
        assert name in checks, name
        assert "\n" not in checks[name]["detail"]
    assert checks["pool-memory"]["status"] == "SKIP"
    assert "device-only" in checks["pool-memory"]["detail"]
    for name in ("halo-ordering", "overlap-bitwise", "launch-cost", "teff"):
        assert checks[name]["status"] == "PASS", checks[name]
    assert report["environment"][0]["h5_mode"] == "single"
    assert report["speed"][0]["T_eff_GBs"] > 0


def test_stream_checker_run_passes():
    """Under the stream checker (device-like arrays, asynchronous streams, staged halos) the
    selftest uses the backend API only: no race, no direct access. (No random delays: the
    checker finds unordered accesses from its vector clocks, whatever the timing.)"""
    p = run_selftest(2, "--quick", HPCINV_STREAM_CHECK="1", HPCINV_STREAM_CHECK_DELAY="0")
    assert p.returncode == 0, p.stdout + p.stderr
    table = rows(p.stdout)
    assert table["exchange-staged"][0] == "PASS"
    assert table["exchange-device"][0] == "SKIP"


# --------------------------------------------------------------------------- in-process units

def test_a_raising_check_is_a_one_line_fail():
    r = Runner(MPI.COMM_SELF, None)

    def boom():
        raise ValueError("first line\nsecond line")
    row = r.run("demo", boom)
    assert row["status"] == "FAIL"
    assert row["detail"] == "ValueError: first line"
    assert not r.ok()


def test_compare_exact_reports_the_first_difference():
    a = np.arange(6.0).reshape(2, 3)
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], np.inf)
    assert compare_exact({"x": a, "J": [1.0, 2.0]}, {"x": a.copy(), "J": [1.0, 2.0]}) \
        == []
    bad = compare_exact({"x": a, "J": [1.0, 2.0]}, {"x": b, "J": [1.0, 3.0]})
    assert bad[0].startswith("x: 1 value(s) differ, first at (1, 2)")
    assert bad[1].startswith("J at 1")
    # -0.0 and 0.0 compare equal as numbers but are different bits
    assert compare_exact({"x": np.array([0.0])}, {"x": np.array([-0.0])})


def test_job_script_reports_the_failing_check(tmp_path):
    """jobs/selftest.sbatch outside SLURM (HPCINV_LAUNCHER): the selftest's exit status and its
    table in $HPCINV_OUTPUT/selftest.txt."""
    import shutil
    bash, exe = shutil.which("bash"), mpiexec()
    if bash is None or exe is None:
        pytest.skip("no bash or mpiexec")
    env = {k: v for k, v in _clean_env().items()
           if not k.startswith(("SLURM_", "HPCINV_", "SRUN_", "SBATCH_"))}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", HPCINV_PYTHON=sys.executable,
               HPCINV_BACKEND="host", HPCINV_LAUNCHER=f"{exe} -n 2",
               HPCINV_OUTPUT=str(tmp_path / "st"), HPCINV_SELFTEST_FAULT="exchange",
               PYTHONPATH=str(ROOT))
    p = subprocess.run([bash, str(ROOT / "jobs" / "selftest.sbatch"), "--quick"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    text = (tmp_path / "st" / "selftest.txt").read_text()
    assert "failed: exchange" in text and "selftest.sbatch: exit status 1" in p.stdout
