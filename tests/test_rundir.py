"""Issue 13, run-directory integrity: SIGTERM/SIGINT before the inversion loop, which command
owns a directory, what ``--overwrite`` removes, and output paths checked before any work.

Every case runs the real CLI (``python -m hpcinv``) as a subprocess. Signals are sent at
moments the test observes in the directory (the lock, the run record, ``setup.h5``), not after
fixed delays, and where a signal may land on either side of a step both outcomes are checked; the grid of the interrupted runs is large enough (511 x 255, fixed tolerances)
that the start-up and the first gradient take seconds, and the reruns that follow are cut
short with ``--iterations 1 --maxiter 300`` (both may change without changing the run).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcinv.app.ownership import RECORD
from hpcinv.io import rundir
from test_cli import _clean_env, assert_one_line_error, mpiexec

FAST = ["--iterations", "1", "--maxiter", "300", "-q"]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hpcinv", *map(str, args)], env=_clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def big_config(tmp_path, **inversion):
    """An inversion whose start-up takes seconds (no figures, fixed tolerances)."""
    inv = {"iterations": 50, "checkpoint_every": 10, "adaptive_tolerance": "false", **inversion}
    path = tmp_path / "big.toml"
    path.write_text("[grid]\nnx = 511\nny = 255\n[inversion]\n"
                    + "".join(f"{k} = {v}\n" for k, v in inv.items())
                    + "[output]\nfigures = false\n")
    return path


def signal_when(args, seen, sig=signal.SIGTERM, launcher=()):
    """Start ``hpcinv ARGS``, send ``sig`` once the path ``seen`` exists (at once if ``None``);
    returns ``(returncode, stdout, stderr)``."""
    proc = subprocess.Popen([*launcher, sys.executable, "-m", "hpcinv", *map(str, args)],
                            env=_clean_env(PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while seen is not None and not seen.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{sig!r} did not stop the run within 120 s: {_stuck(proc)}")
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def _stuck(proc) -> str:
    """What a process that ignored a signal was doing: each thread's signal masks (pending,
    blocked, ignored, caught; /proc) and every thread's Python stack (faulthandler on SIGABRT:
    the child runs with PYTHONFAULTHANDLER=1)."""
    masks = []
    for task in sorted(Path(f"/proc/{proc.pid}/task").glob("*")):
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        masks.append(task.name + ": " + " ".join(x.replace("\t", "") for x in lines
                                                 if x.startswith(("ShdPnd", "SigPnd", "SigBlk",
                                                                  "SigIgn", "SigCgt"))))
    proc.send_signal(signal.SIGABRT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return f"masks {masks}; stdout {out[-2000:]!r}; stderr {err[-6000:]}"


def assert_interrupted(rc, err, code, name, *needles):
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hpcinv: error: interrupted by {name}; "), err
    for n in needles:
        assert n in line, (n, line)
    return line


def history(run):
    return [json.loads(s) for s in (run / "history.jsonl").read_text().splitlines()]


# ------------------------------------------------------------- SIGTERM before the first checkpoint

@pytest.mark.parametrize("moment", [RECORD, "setup.h5"])
def test_sigterm_before_the_first_checkpoint_is_restartable(tmp_path, moment):
    """Old: exit 143 without a word, and a directory that neither --restart ("no checkpoint")
    nor a rerun ("use --overwrite or --restart") accepted."""
    cfg, run = big_config(tmp_path), tmp_path / "run"
    rc, out, err = signal_when(["invert", cfg, "-q", "-o", run], run / moment)
    assert_interrupted(rc, err, 3, "SIGTERM", f"hpcinv invert --restart {run}", "no checkpoint")
    assert not (run / rundir.LOCK_NAME).exists() and not (run / "checkpoint.h5").exists()
    assert (run / "config.toml").exists() and json.loads((run / RECORD).read_text())[
        "command"] == "invert"
    if moment == RECORD:         # the advised command: starts from the beginning, says so
        p = cli("invert", "--restart", run, *FAST)
        assert p.returncode in (0, 1), p.stderr
        assert "no checkpoint yet" in p.stderr and "starting from iteration 0" in p.stderr
    else:                        # the same command again: accepted, says so
        p = cli("invert", cfg, "-o", run, *FAST)
        assert p.returncode in (0, 1), p.stderr
        assert "starting it again" in p.stderr
    assert [r["iteration"] for r in history(run)] == [0, 1]
    assert (run / "model_final.h5").exists()


def test_sigterm_once_the_lock_is_taken(tmp_path):
    """Between the lock and the run record: the new directory is removed again and the line
    says so; after the record: as above. Either way the advised command runs."""
    cfg, run = big_config(tmp_path), tmp_path / "new" / "run"
    rc, out, err = signal_when(["invert", cfg, "-q", "-o", run], run / rundir.LOCK_NAME)
    line = assert_interrupted(rc, err, 3, "SIGTERM")
    if "nothing was written" in line:
        assert not (tmp_path / "new").exists()
        p = cli("invert", cfg, "-o", run, *FAST)
    else:
        assert f"--restart {run}" in line
        p = cli("invert", "--restart", run, *FAST)
    assert p.returncode in (0, 1), p.stderr


def test_sigterm_at_once_leaves_nothing_or_a_rerunnable_directory(tmp_path):
    """A signal right after the start: either Python had not reached hpcinv's handler yet (the
    process dies by the signal, nothing written) or hpcinv stops with status 3; in both cases
    the same command runs afterwards."""
    cfg, run = big_config(tmp_path), tmp_path / "run"
    rc, out, err = signal_when(["invert", cfg, "-q", "-o", run], None)
    assert rc in (3, -signal.SIGTERM), (rc, err)
    assert "Traceback" not in err
    p = cli("invert", cfg, "-o", run, *FAST)
    assert p.returncode in (0, 1), p.stderr


def test_sigint_during_the_first_gradient(tmp_path):
    cfg, run = big_config(tmp_path), tmp_path / "run"
    rc, out, err = signal_when(["invert", cfg, "-q", "-o", run], run / "setup.h5",
                               sig=signal.SIGINT)
    assert_interrupted(rc, err, 130, "SIGINT", f"--restart {run}")
    assert not (run / rundir.LOCK_NAME).exists()


def test_sigterm_during_a_forward_solve(tmp_path):
    """Old: exit 143 without a word; the rerun is accepted (nothing was computed). The solve
    cannot converge (tolerance 1e-30) and has no iteration limit to speak of: it is still
    running when the signal comes, however fast the machine or however late the test process
    gets to send it (a 511 x 255 solve of 3 s once finished first on a CI machine)."""
    run = tmp_path / "fwd"
    args = ["forward", "--nx", "255", "--ny", "127", "--tol", "1e-30", "--maxiter", "100000000",
            "-q", "-o", run]
    rc, out, err = signal_when(args, run / RECORD)
    assert_interrupted(rc, err, 3, "SIGTERM", "run the same command again")
    assert not (run / "fields.h5").exists() and not (run / rundir.LOCK_NAME).exists()
    p = cli(*args[:-2], "--maxiter", "300", "-o", run)
    assert p.returncode == 1 and (run / "fields.h5").exists(), p.stderr


def test_sigterm_under_two_ranks_before_the_loop(tmp_path):
    """Ranks may be blocked in a collective: the job is aborted with status 3, not hung."""
    exe = mpiexec()
    if exe is None:
        pytest.skip("no mpiexec found")
    cfg, run = big_config(tmp_path), tmp_path / "run"
    rc, out, err = signal_when(["invert", cfg, "-q", "-o", run], run / "setup.h5",
                               launcher=(exe, "-n", "2"))
    assert rc != 0 and "interrupted by SIGTERM" in err, (rc, err)
    p = cli("invert", "--restart", run, *FAST)
    assert p.returncode in (0, 1), p.stderr


# ------------------------------------------------------------------ which command owns a directory

def test_forward_and_gradient_refuse_an_existing_run_without_overwrite(tmp_path):
    """Old: both silently overwrote."""
    run = tmp_path / "f"
    small = ["--nx", "31", "--ny", "17", "-q"]
    assert cli("forward", *small, "-o", run).returncode == 0
    before = (run / "fields.h5").read_bytes()
    assert_one_line_error(cli("forward", *small, "--tol", "1e-5", "-o", run), str(run),
                          "finished forward run", "--overwrite", "another --output")
    assert (run / "fields.h5").read_bytes() == before
    assert cli("forward", *small, "--tol", "1e-5", "--overwrite", "-o", run).returncode == 0
    g = tmp_path / "g"
    assert cli("gradient", *small, "-o", g).returncode == 0
    assert_one_line_error(cli("gradient", *small, "-o", g), "finished gradient run",
                          "--overwrite")


def test_no_command_writes_into_another_commands_directory(tmp_path):
    """Old: ``forward -o INVERSION_DIR`` rewrote the inversion's config.toml, which a later
    --restart then followed."""
    cfg, run = big_config(tmp_path), tmp_path / "inv"
    p = cli("invert", cfg, "-o", run, "--nx", "63", "--ny", "31", *FAST)
    assert p.returncode in (0, 1), p.stderr
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    for args in (["forward", "-o", run], ["forward", "--overwrite", "-o", run],
                 ["gradient", "--overwrite", "-o", run]):
        assert_one_line_error(cli(*args, "--nx", "31", "--ny", "17", "-q"), str(run),
                              "hpcinv invert", "another command", "--overwrite")
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before
    fwd = tmp_path / "fwd"
    assert cli("forward", "--nx", "31", "--ny", "17", "-q", "-o", fwd).returncode == 0
    assert_one_line_error(cli("invert", "--restart", fwd, "-q"), "hpcinv forward")
    assert_one_line_error(cli("invert", cfg, "--overwrite", "-o", fwd, "-q"), "hpcinv forward")


def test_overwrite_removes_what_the_old_run_wrote_and_nothing_else(tmp_path):
    """Old: --overwrite left the old run's figures (of another grid) and checkpoint.prev.h5."""
    run = tmp_path / "run"
    cfg = tmp_path / "a.toml"
    cfg.write_text("[grid]\nnx = 63\nny = 31\n[inversion]\niterations = 4\n"
                   "checkpoint_every = 2\n")
    assert cli("invert", cfg, "-q", "-o", run).returncode == 0
    assert (run / "figures" / "model.png").exists() and (run / "checkpoint.prev.h5").exists()
    (run / "notes.txt").write_text("mine")
    (run / "figures" / "mine.png").write_bytes(b"x")
    cfg2 = tmp_path / "b.toml"
    cfg2.write_text("[grid]\nnx = 31\nny = 17\n[inversion]\niterations = 1\n"
                    "[output]\nfigures = false\n")
    p = cli("invert", cfg2, "-q", "--overwrite", "-o", run)
    assert p.returncode == 0, p.stderr
    assert "removed" in p.stderr
    assert sorted(f.name for f in (run / "figures").iterdir()) == ["mine.png"]
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "checkpoint.prev.h5").exists()
    assert "nx = 31" in (run / "config.toml").read_text()


def test_files_without_a_run_record_are_never_deleted(tmp_path):
    run = tmp_path / "legacy"
    run.mkdir()
    (run / "fields.h5").write_bytes(b"not ours")
    for extra in ([], ["--overwrite"]):
        assert_one_line_error(cli("forward", "--nx", "31", "--ny", "17", "-q", *extra, "-o",
                                  run), "fields.h5", "no run record", "another --output")
    assert (run / "fields.h5").read_bytes() == b"not ours"
    job = tmp_path / "job"                         # a job log in the directory is no obstacle
    job.mkdir()
    (job / "slurm-1.out").write_text("log")
    assert cli("forward", "--nx", "31", "--ny", "17", "-q", "-o", job).returncode == 0
    assert (job / "slurm-1.out").read_text() == "log" and (job / "fields.h5").exists()


# ----------------------------------------------------------------- output paths, before any work

def test_output_path_problems_are_one_line_errors_before_any_work(tmp_path):
    """Old: exit status 5 ("cannot create the lock") for a file or a path under a file."""
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "sub"):
        p = cli("forward", "--nx", "31", "--ny", "17", "-o", out)
        assert_one_line_error(p, str(f), "not a directory")
        assert "hpcinv forward:" not in p.stdout          # nothing built, nothing solved
    p = cli("invert", "--restart", f, "-q")
    assert_one_line_error(p, "--restart", str(f))


def test_missing_parents_are_created_and_removed_after_a_failed_start(tmp_path):
    """``-o a/b/c`` creates a/b/c (mkdir -p); a start that fails (here: no C++ compiler)
    leaves nothing behind. Old: a/b stayed."""
    out = tmp_path / "a" / "b" / "c"
    p = subprocess.run([sys.executable, "-m", "hpcinv", "forward", "--nx", "31", "--ny", "17",
                        "--backend", "host", "-o", str(out)], capture_output=True, text=True,
                       env=_clean_env(CXX="/nonexistent/c++"), timeout=120)
    assert_one_line_error(p, "no C++ compiler")
    assert not (tmp_path / "a").exists()
    assert cli("forward", "--nx", "31", "--ny", "17", "-q", "-o", out).returncode == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_unwritable_output_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro, ro / "sub"):
            assert_one_line_error(cli("forward", "--nx", "31", "--ny", "17", "-o", out),
                                  "not writable")
    finally:
        ro.chmod(0o755)


def test_a_run_record_cannot_reach_outside_its_directory(tmp_path):
    """The manifest comes from a file in the directory: patterns leaving it are ignored."""
    from hpcinv.app.ownership import owned_files, owns
    run = tmp_path / "run"
    run.mkdir()
    (run / "fields.h5").write_text("x")
    (tmp_path / "precious.txt").write_text("y")
    assert owned_files(run, ["../precious.txt", str(tmp_path / "*"), *owns("forward")]) == [
        run / "fields.h5"]


def test_overwrite_removes_the_figures_plot_drew_for_a_forward_run(tmp_path):
    """``hpcinv plot`` draws ``figures/fields.png`` for a forward run; ``--overwrite`` left it
    behind, since the forward run record did not own it."""
    run = tmp_path / "fwd"
    assert cli("forward", "--nx", "15", "--ny", "9", "-q", "-o", run).returncode == 0
    assert cli("plot", run).returncode == 0
    assert (run / "figures" / "fields.png").exists()
    p = cli("forward", "--nx", "13", "--ny", "9", "-q", "--overwrite", "-o", run)
    assert p.returncode == 0, p.stderr
    assert not (run / "figures" / "fields.png").exists()
