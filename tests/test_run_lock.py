"""Issue 13: the run-directory lock (one run per output directory) and unconverged inner
solves inside an inversion (warn, record, stop with exit 1 after 3 in a row)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from mpi4py import MPI

import inversion_cases
from hpcinv.errors import RunLockedError
from hpcinv.io import rundir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}


def small_config(tmp_path, **inversion):
    return inversion_cases.small_config(tmp_path, **{"iterations": 200, "checkpoint_every": 2,
                                                     **inversion})


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "hpcinv", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=600)


def start_and_wait(cfg, run, lines=3):
    proc = subprocess.Popen([sys.executable, "-m", "hpcinv", "invert", str(cfg), "-q", "-o",
                             str(run)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    hist = run / "history.jsonl"
    deadline = time.time() + 300
    while not (hist.exists() and len(hist.read_text().splitlines()) >= lines):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_second_run_into_a_live_run_directory_is_refused(tmp_path):
    cfg = small_config(tmp_path)
    run = tmp_path / "run"
    proc = start_and_wait(cfg, run)
    try:
        info = json.loads((run / rundir.LOCK_NAME).read_text())
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
        for args in (["invert", "--restart", run], ["invert", cfg, "--overwrite", "-o", run],
                     ["forward", "-o", run], ["gradient", "-o", run]):
            p = run_cli(*args, "-q")
            assert p.returncode == 5, (args, p.stderr)
            line, = p.stderr.strip().splitlines()
            assert f"pid {proc.pid}" in line and "since" in line and "--force-unlock" in line
        proc.send_signal(signal.SIGTERM)                  # checkpoint, exit 3, release
        proc.communicate(timeout=300)
        assert proc.returncode == 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / rundir.LOCK_NAME).exists()


def test_stale_lock_after_sigkill_is_taken_over(tmp_path):
    cfg = small_config(tmp_path, iterations=6)
    run = tmp_path / "run"
    proc = start_and_wait(cfg, run, lines=5)             # past the checkpoint at 2
    proc.kill()
    proc.communicate()
    assert (run / rundir.LOCK_NAME).exists()             # left behind by the crash
    p = run_cli("invert", "--restart", run, "-q")
    assert p.returncode == 0, p.stderr
    assert "took over the lock" in p.stderr and "is gone" in p.stderr
    assert not (run / rundir.LOCK_NAME).exists()


def fake_lock(directory, host, age, pid=12345):
    lock = directory / rundir.LOCK_NAME
    lock.write_text(json.dumps({"host": host, "pid": pid, "since": "then", "command": "x"}))
    t = time.time() - age
    os.utime(lock, (t, t))
    return lock


def test_locks_of_other_hosts_expire_without_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCINV_LOCK_STALE_S", "100")
    fake_lock(tmp_path, "elsewhere", age=10)
    with pytest.raises(RunLockedError, match="pid 12345 on elsewhere"):
        rundir.acquire(tmp_path, MPI.COMM_SELF, note=lambda s: None)
    notes = []
    fake_lock(tmp_path, "elsewhere", age=1000)
    lk = rundir.acquire(tmp_path, MPI.COMM_SELF, note=notes.append)
    assert "no heartbeat" in notes[0]
    before = (tmp_path / rundir.LOCK_NAME).stat().st_mtime
    os.utime(tmp_path / rundir.LOCK_NAME, (before - 50, before - 50))
    rundir.heartbeat()
    assert (tmp_path / rundir.LOCK_NAME).stat().st_mtime > before - 1
    lk.release()
    assert not (tmp_path / rundir.LOCK_NAME).exists()


def test_force_unlock_and_dead_pid_on_this_host(tmp_path):
    fake_lock(tmp_path, socket.gethostname(), age=0, pid=os.getpid())   # alive: this process
    with pytest.raises(RunLockedError):
        rundir.acquire(tmp_path, MPI.COMM_SELF, note=lambda s: None)
    notes = []
    rundir.acquire(tmp_path, MPI.COMM_SELF, force=True, note=notes.append).release()
    assert "--force-unlock" in notes[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fake_lock(tmp_path, socket.gethostname(), age=0, pid=dead.pid)
    rundir.acquire(tmp_path, MPI.COMM_SELF, note=notes.append).release()
    assert "is gone" in notes[-1]


def test_a_failed_start_leaves_no_directory_behind(tmp_path):
    lk = rundir.acquire(tmp_path / "new", MPI.COMM_SELF)
    assert (tmp_path / "new" / rundir.LOCK_NAME).exists()
    lk.release()
    assert not (tmp_path / "new").exists()


def test_unconverged_inner_solves_warn_record_and_stop(tmp_path):
    # fixed tolerances: every solve needs more than 50 iterations (adaptive tolerances would
    # converge loosely for the first iterations; the policy is the same)
    cfg = small_config(tmp_path, iterations=10, adaptive_tolerance=False)
    run = tmp_path / "run"
    p = run_cli("invert", cfg, "-q", "-o", run, "--maxiter", 50)
    assert p.returncode == 1, p.stderr
    warnings = [s for s in p.stderr.splitlines() if s.startswith("hpcinv: warning:")]
    errors = [s for s in p.stderr.splitlines() if s.startswith("hpcinv: error:")]
    assert len(warnings) == 3 and len(errors) == 1, p.stderr
    assert "solver.maxiter" in errors[0] and "adjoint.maxiter" in errors[0]
    assert "--restart" in errors[0]
    h = [json.loads(s) for s in (run / "history.jsonl").read_text().splitlines()]
    assert len(h) == 3 and all(r["unconverged_solves"] > 0 for r in h)
    assert not (run / "model_final.h5").exists()
    assert not (run / rundir.LOCK_NAME).exists()
