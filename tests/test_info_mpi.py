"""Issue 22: ``hpcinv info`` printed ``MPICH Version: 4.0.2`` for both the pip wheel and a
system MPICH; ``mpi_library_file`` names the library the process loaded and where it is from."""
from __future__ import annotations

import sys
from pathlib import Path

from mpi4py import MPI

from hpcinv.app.info import mpi_library_file

MAPS = ("7f83e4000000-7f83e4047000 r--p 00000000 fe:00 5310710   /usr/lib/libc.so.6\n"
        "7f83e4047000-7f83e4ab0000 r-xp 00047000 fe:00 5310711   {lib}\n")


def test_the_system_library_and_the_wheel_are_told_apart(tmp_path):
    system = "/usr/lib/x86_64-linux-gnu/libmpich.so.12.1.11"
    got = mpi_library_file(MAPS.format(lib=system), prefix=str(tmp_path))
    assert got.startswith(system + " (") and "outside this Python environment" in got
    wheel = str(tmp_path / "lib" / "libmpi.so.12")
    got = mpi_library_file(MAPS.format(lib=wheel), prefix=str(tmp_path))
    assert got.startswith(wheel + " (") and "pip wheel" in got
    cray = "/opt/cray/pe/mpich/8.1.28/ofi/gnu/12.3/lib/libmpi_gnu_123.so.12"
    assert mpi_library_file(MAPS.format(lib=cray)).startswith(cray + " (")
    assert mpi_library_file(MAPS.format(lib="/usr/lib/libmpfr.so.6")).startswith("unknown")


def test_this_process_names_the_library_it_loaded():
    assert MPI.Get_version()                        # MPI loaded
    got = mpi_library_file()
    if not Path("/proc/self/maps").exists():
        assert got.startswith("unknown")
        return
    path = got.split(" (")[0]
    assert Path(path).exists(), got
    assert ("pip wheel" in got) == Path(path).resolve().is_relative_to(
        Path(sys.prefix).resolve()), got
