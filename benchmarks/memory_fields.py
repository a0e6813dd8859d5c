#!/usr/bin/env python
"""Fields per cell at the high-water mark, by the backend's counter, for the table of
docs/performance.md ("Memory per rank", issue 20).

Runs 2D (48 x 40) and 3D (32 x 24 x 16) inversions of ``geothermal2d``/``geothermal3d``, GD and
L-BFGS, 8 optimiser steps (enough to fill the default subspaces), in process on one rank with
the host backend, and prints per case the counter's high-water mark in float64 fields per
padded cell beside the estimate of ``hpcinv/app/memory.py`` (the cases of
``tests/test_memory_count.py``, at the defaults). Rows: the defaults, ``tikhonov = 1e-3`` (issue
20's target case), and ``adaptive_tolerance = false`` with Tikhonov (no subspaces). One JSON
line per case (``--out FILE``: also appended there). Usage::

    OMP_NUM_THREADS=1 python benchmarks/memory_fields.py          # about two minutes
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402

from hpcinv import config as config_mod  # noqa: E402
from hpcinv.app import assembly  # noqa: E402
from hpcinv.app.resolve import resolved  # noqa: E402

SHAPES = {2: (48, 40), 3: (32, 24, 16)}
ROWS = {"defaults": {}, "tikhonov": {"tikhonov": 1e-3},
        "fixed_tolerances_tikhonov": {"tikhonov": 1e-3, "adaptive_tolerance": False}}


def measure(ndim: int, method: str, row: dict, steps: int = 8) -> dict:
    """The counter's peak and the estimate, float64 fields per padded cell."""
    data = {"problem": {"name": f"geothermal{ndim}d"},
            "grid": dict(zip(("nx", "ny", "nz"), SHAPES[ndim])),
            "inversion": {"iterations": steps, "method": method,
                          "adaptive_tolerance": row.get("adaptive_tolerance", True)},
            "regularisation": {"tikhonov": row.get("tikhonov", 0.0)},
            "output": {"dir": "unused", "figures": False}}
    cfg = resolved(config_mod.from_dict(data))
    setup = assembly.build(cfg, MPI.COMM_SELF)
    opt = setup.optimiser
    opt.start(setup.logK0)
    for _ in range(steps):
        opt.step()
    cells = float(np.prod([n + 2 for n in SHAPES[ndim]]))
    peak = setup.backend.memory.snapshot()["peak_bytes"]
    return {"counter_fields": peak / cells / 8, "estimate_fields": setup.memory.fields,
            "estimate_items": dict(setup.memory.items)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    for name, row in ROWS.items():
        cells = []
        for ndim in (2, 3):
            for method in ("gd", "lbfgs"):
                rec = {"benchmark": "memory_fields", "machine": machine(), "row": name,
                       "ndim": ndim, "method": method, **measure(ndim, method, row)}
                emit(rec, args.out)
                cells.append(f"{rec['counter_fields']:.1f} (estimate {rec['estimate_fields']:.1f})")
        print(f"# {name}: 2D GD | 2D L-BFGS | 3D GD | 3D L-BFGS: " + " | ".join(cells),
              file=sys.stderr)


if __name__ == "__main__":
    main()
