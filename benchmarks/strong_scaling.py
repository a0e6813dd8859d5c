#!/usr/bin/env python
"""Strong scaling: a fixed global grid, timed at the launched rank count.

Run under MPI at every rank count of the study::

    python benchmarks/strong_scaling.py --size 2048x2048,192x192x192 --overlap both
    mpiexec -n 2 python benchmarks/strong_scaling.py --size 2048x2048,192x192x192
    mpiexec -n 4 python benchmarks/strong_scaling.py --size 2048x2048,192x192x192
    python benchmarks/plot_scaling.py benchmarks/results/strong.jsonl -o strong.png

The global grid is split by ``MPI.Compute_dims`` (or ``--dims``); everything else (forward and
adjoint iterations, warm-up, repeats, the JSON record appended to ``--out``, default
``benchmarks/results/strong.jsonl``) is as in ``weak_scaling.py``. ``local_size`` is rank 0's
block; ``local_cells_max`` the largest block (the slowest rank), which ``T_eff`` per rank uses.
"""
from __future__ import annotations

import argparse
import os
import sys

from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import log, parse_sizes  # noqa: E402
from weak_scaling import add_common_args, run_case, setup, write_records  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "strong.jsonl")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="2048x2048,192x192x192",
                   help="comma-separated global grid sizes (default 2048x2048,192x192x192)")
    p.add_argument("--2d", dest="only2d", action="store_true", help="only the 2D sizes")
    p.add_argument("--3d", dest="only3d", action="store_true", help="only the 3D sizes")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = DEFAULT_OUT
    world, backend, dims = setup(args)
    for shape in parse_sizes(args.size):
        nd = len(shape)
        if (args.only2d and nd != 2) or (args.only3d and nd != 3):
            continue
        d = list(MPI.Compute_dims(world.Get_size(), dims if dims and len(dims) == nd
                                  else [0] * nd))
        if world.Get_rank() == 0:
            log(f"strong_scaling: global {'x'.join(map(str, shape))} split {d} on "
                f"{world.Get_size()} rank(s)")
        recs = run_case(shape, d, args, backend, world, "strong")
        if world.Get_rank() == 0:
            write_records(recs, args.out)


if __name__ == "__main__":
    main()
