"""Run the real ``hpcinv`` command line with the CPU stand-in as ``cupy`` (issue 19).

    python tests/cupy_standin/run_hpcinv.py invert CONFIG --backend cupy -o RUN
    mpiexec -n 2 python tests/cupy_standin/run_hpcinv.py selftest --backend cupy
    cd tests && python -m cupy_standin.run_hpcinv info --backend cupy

Installs the stand-in into ``sys.modules`` (and makes MPI's accesses to pinned staging buffers
visible to its race tracker, as the test fixture does), then calls
:func:`hpcinv.app.cli.main` with the arguments and exits with its status. Each rank of an
``mpiexec`` job is its own process with its own stand-in device. For tests only: nothing under
``hpcinv/`` imports this.

``HPCINV_STANDIN_SIZES=host``: ``hpcinv selftest`` sizes its checks as for the host backend
(``--full`` at GPU sizes, 512^3 fields and 10^5-iteration kernels, exhausts a CPU's memory and
time under the stand-in) and the pool-memory check runs a 16^3 gradient.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _tests_on_path():
    """``tests/`` importable, and this package's own folder not on the path: as a script,
    Python puts ``tests/cupy_standin`` first, whose ``array.py`` would hide the standard
    library's ``array``."""
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def _host_sizes():
    """``selftest``'s :class:`Sizes` as for the host backend, whatever the backend."""
    from hpcinv.app.selftest import runner
    init = runner.Sizes.__init__

    def host_sized(self, quick, gpu, ranks=1):
        init(self, quick, False, ranks)
        self.pool_shape = (16, 16, 16)
    runner.Sizes.__init__ = host_sized


def main(argv=None) -> int:
    """Install the stand-in, then run ``hpcinv ARGV``; the CLI's exit status."""
    _tests_on_path()
    import cupy_standin
    from cupy_standin.mpi_spy import spy_on_halos
    cupy_standin.install()
    spy_on_halos(types.SimpleNamespace(setattr=setattr))    # for the process's lifetime
    if os.environ.get("HPCINV_STANDIN_SIZES") == "host":
        _host_sizes()
    from hpcinv.app.cli import main as cli_main
    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
