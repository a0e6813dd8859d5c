"""The watchdog of collective HDF5 writes (issue 22, item 5): a rank that fails inside the
``mpio`` writer's collective region, or never leaves it, ends the job with one line naming the
file and exit status 4, within seconds, instead of hanging every rank in MPI.

CI's h5py is serial, so the real ``mpio`` path (parallel HDF5, a fault inside
``H5Dwrite``) is not exercised here: the 2-rank tests replace the region's body (see
tests/h5_fault_in_collective.py) and keep everything around it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcinv.errors import ConfigError
from hpcinv.io import watchdog
from hpcinv.io.watchdog import collective_region, io_timeout_s

HERE = Path(__file__).resolve().parent
_here = Path(sys.executable).with_name("mpiexec")
MPIEXEC = str(_here) if _here.exists() else shutil.which("mpiexec")
LINE = "hpcinv: error: collective write of "


def test_timeout_from_the_environment_or_the_data_size(monkeypatch):
    monkeypatch.delenv("HPCINV_IO_TIMEOUT", raising=False)
    assert io_timeout_s() == watchdog.DEFAULT_TIMEOUT_S
    assert io_timeout_s(5_000_000_000) == watchdog.DEFAULT_TIMEOUT_S + 100.0   # 50 MB/s
    monkeypatch.setenv("HPCINV_IO_TIMEOUT", "2.5")
    assert io_timeout_s(5_000_000_000) == 2.5
    monkeypatch.setenv("HPCINV_IO_TIMEOUT", "0")
    assert io_timeout_s() == 0.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("HPCINV_IO_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="HPCINV_IO_TIMEOUT"):
            io_timeout_s()


def test_the_region_aborts_on_a_local_error_and_not_otherwise():
    lines = []
    with collective_region("f.h5", 0.2, abort=lines.append):
        pass
    time.sleep(0.4)                                  # past the timeout: the watchdog is gone
    assert lines == []
    with pytest.raises(KeyboardInterrupt):           # BaseException: the stop machinery's
        with collective_region("f.h5", 5, abort=lines.append):
            raise KeyboardInterrupt
    assert lines == []
    with pytest.raises(OSError):
        with collective_region("/run/f.h5", 5, rank=0, abort=lines.append):
            raise OSError(27, "File too large\nsecond line")
    assert lines == ["hpcinv: error: collective write of /run/f.h5 failed on rank 0: OSError: "
                     "[Errno 27] File too large second line; the other ranks cannot leave the "
                     "collective region: exit 4"]


def test_a_region_that_does_not_complete_is_aborted():
    lines = []
    with collective_region("/run/f.h5", 0.2, abort=lines.append):
        time.sleep(0.6)
    assert lines == ["hpcinv: error: collective write of /run/f.h5 did not complete in 0.2 s "
                     "(a rank failed inside it? HPCINV_IO_TIMEOUT sets the limit); exit 4"]


def _one_line_and_4(p, path, elapsed, limit=15.0):
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    lines = [s for s in p.stderr.splitlines() if s.startswith("hpcinv:")]
    assert len(lines) == 1 and lines[0].startswith(LINE + str(path)), out
    assert lines[0].endswith("exit 4") and "write_h5 returned" not in out, out
    assert elapsed < limit, (elapsed, out)
    return lines[0]


def test_a_stuck_region_in_a_process_exits_4_with_one_line(tmp_path):
    """The real abort (MPI_Abort(4) on a singleton MPI) after HPCINV_IO_TIMEOUT."""
    code = ("import time\nfrom hpcinv.io.watchdog import collective_region\n"
            f"with collective_region({str(tmp_path / 'x.h5')!r}, 0.5):\n    time.sleep(60)\n")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    line = _one_line_and_4(p, tmp_path / "x.h5", time.monotonic() - t0)
    assert "did not complete in 0.5 s" in line


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("how", ["raise", "stuck"])
def test_a_fault_on_rank_1_inside_the_collective_write_ends_both_ranks(tmp_path, how):
    """Rank 1 fails inside the region (or never leaves it) while rank 0 waits in a collective
    call: both ranks end with status 4 and one line, at once ('raise') or after the timeout."""
    path = tmp_path / "out" / "f.h5"
    t0 = time.monotonic()
    driver = HERE / "h5_fault_in_collective.py"
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(driver), how, str(path)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HPCINV_IO_TIMEOUT": "1", "OMP_NUM_THREADS": "1"})
    line = _one_line_and_4(p, path, time.monotonic() - t0)
    if how == "raise":
        assert "failed on rank 1: OSError: [Errno 27] File too large" in line
    else:
        assert "did not complete in 1 s" in line
    assert not path.exists()                       # nothing published
