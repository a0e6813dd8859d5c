#!/usr/bin/env python
"""Peak memory of an inversion, by the backend's counter and by the kernel (issue 20).

The case of issue 20 by default: ``geothermal3d`` at 96^3, gradient descent, 2 iterations,
``tikhonov = 1e-3``, figures off, one rank, ``OMP_NUM_THREADS=1``, the host backend, every
other setting at its default. It runs ``hpcinv invert`` under ``/usr/bin/time -v`` and reports

* the counter: ``memory_peak_bytes`` of the run's ``memory.json`` (the high-water mark of the
  backend's arrays, :attr:`hpcinv.backend.Backend.memory`), also per padded cell of the block
  in solver-dtype fields (``counter_fields_per_cell``), beside the estimate of
  ``hpcinv/app/memory.py``;
* the kernel: the maximum resident set size of the run, and of an interpreter that only
  imports hpcinv, numpy, h5py and mpi4py (``rss_interpreter_bytes``), and the difference in
  field-equivalents of ``nx*ny*nz`` float64 values (``rss_fields_above_interpreter``: the
  issue's figure, 122 before it).

Prints one JSON object (``--out FILE``: also appended there). Usage::

    python benchmarks/memory_peak.py                    # the issue's case (a minute or two)
    python benchmarks/memory_peak.py --grid 64,64,64 --method lbfgs \
        --set inversion.adaptive_tolerance=false
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402

IMPORTS = "import hpcinv, hpcinv.app.cli, numpy, h5py; from mpi4py import MPI"


def max_rss(cmd, env) -> tuple[int, subprocess.CompletedProcess]:
    """``(bytes, process)``: the maximum resident set size of ``cmd`` by ``/usr/bin/time -v``."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0 or m is None:
        sys.exit(f"memory_peak: {' '.join(map(str, cmd))} failed ({p.returncode}):\n"
                 f"{p.stderr[-2000:]}")
    return int(m.group(1)) * 1024, p


def toml_value(text: str) -> str:
    """A ``--set`` value as TOML (numbers and booleans as given, else a string)."""
    if re.fullmatch(r"true|false|[-+0-9.eE]+", text):
        return text
    return json.dumps(text)


def config_text(args) -> str:
    shape = [int(v) for v in args.grid.split(",")]
    sections = {"problem": {"name": json.dumps(f"geothermal{len(shape)}d")},
                "grid": dict(zip(("nx", "ny", "nz"), map(str, shape))),
                "inversion": {"method": json.dumps(args.method),
                              "iterations": str(args.iterations)},
                "regularisation": {"tikhonov": str(args.tikhonov)},
                "solver": {"dtype": json.dumps(args.dtype)},
                "parallel": {"backend": '"host"'},
                "output": {"figures": "false"}}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = toml_value(value)
    return "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
                   for s, kv in sections.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default="96,96,96")
    ap.add_argument("--method", default="gd", choices=("gd", "lbfgs"))
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--tikhonov", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="another config value (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (default 1)")
    ap.add_argument("--out", help="also append the JSON line to this file")
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="hpcinv-memory-peak-") as tmp:
        cfg = Path(tmp) / "run.toml"
        cfg.write_text(config_text(args))
        run = Path(tmp) / "run"
        rss_run, p = max_rss([sys.executable, "-m", "hpcinv", "invert", str(cfg), "-o",
                              str(run), "-q"], env)
        rss_base, _ = max_rss([sys.executable, "-c", IMPORTS], env)
        rec = json.loads((run / "memory.json").read_text())
    cells = 1
    for n in args.grid.split(","):
        cells *= int(n)
    field = cells * 8                                   # the field: float64, unpadded
    est = rec["estimate"]
    out = {"benchmark": "memory_peak", "machine": machine(), "grid": args.grid,
           "method": args.method, "iterations": args.iterations, "tikhonov": args.tikhonov,
           "dtype": args.dtype, "set": args.set, "threads": args.threads, "ranks": 1,
           "backend": "host",
           "counter_peak_bytes": rec["memory_peak_bytes"],
           "counter_fields_per_cell": rec["memory_peak_fields"],
           "counter_peak_by_kind": rec["memory_peak_by_kind"],
           "estimate_fields_per_cell": est["fields"], "estimate_items": est["items"],
           "estimate_device_bytes": est["device_bytes"], "padded_cells": est["cells"],
           "rss_run_bytes": rss_run, "rss_interpreter_bytes": rss_base,
           "field_bytes": field,
           "rss_fields_above_interpreter": round((rss_run - rss_base) / field, 2),
           "rss_fields_total": round(rss_run / field, 2)}
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
