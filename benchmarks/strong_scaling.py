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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from weak_scaling import scaling_main  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "strong.jsonl")


def _strong_sizes(shape, d):
    """A strong-scaling size is the global grid, split as it comes."""
    return shape, None, f"global {'x'.join(map(str, shape))} split {d}"


def main(argv=None):
    scaling_main(argv, __doc__, "strong", "size", "2048x2048,192x192x192",
                 "comma-separated global grid sizes", DEFAULT_OUT, _strong_sizes)


if __name__ == "__main__":
    main()
