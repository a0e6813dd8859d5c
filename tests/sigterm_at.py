"""A stand-in for ``python`` in the job-script tests (``HPCINV_PYTHON``): runs ``-m MODULE
ARGS`` as python would, after arranging that ``hpcinv invert`` sends SIGTERM to its own rank at
a chosen phase, as slurmstepd's ``--signal=TERM@N`` would when the time limit nears:

* ``HPCINV_TEST_SIGTERM_AT=build``: during start-up (when the run is assembled);
* ``HPCINV_TEST_SIGTERM_AT=finish``: during the final evaluation (after the last checkpoint,
  before ``model_final.h5``).

``HPCINV_TEST_SIGTERM_RANKS`` (default ``all``): the ranks that get the signal, e.g. ``1``
(rank 0 then goes on into a collective and never answers: the abort path).
"""
from __future__ import annotations

import os
import runpy
import signal
import sys


def _signal_here() -> None:
    from mpi4py import MPI
    ranks = os.environ.get("HPCINV_TEST_SIGTERM_RANKS", "all")
    if ranks == "all" or str(MPI.COMM_WORLD.Get_rank()) in ranks.split():
        os.kill(os.getpid(), signal.SIGTERM)


def _wrap(module, name: str) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        _signal_here()
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: sigterm_at.py -m MODULE [ARGS...]")
    module, args = sys.argv[2], sys.argv[3:]
    where = os.environ.get("HPCINV_TEST_SIGTERM_AT", "")
    if where and "invert" in args:
        if where == "build":
            import hpcinv.app.cli as target
        else:
            import hpcinv.app.run as target
        _wrap(target, where)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
