"""A run's memory, said twice: the estimate per rank in its header (before the work), and the
measured high-water mark of the backend's arrays in ``DIR/memory.json`` (after it), so that
the estimate of :mod:`hpcinv.app.memory` can be checked on every run."""
from __future__ import annotations

import json
from pathlib import Path

from .assembly import adjoint_memory, forward_memory
from .memory import Estimate, estimate, peak_record

#: The summary file a run command writes into its output directory.
SUMMARY = "memory.json"


def run_estimate(cfg, comm, backend, kind: str) -> Estimate:
    """The estimate of the run of the resolved ``cfg`` (``kind``: ``"forward"``,
    ``"gradient"``, ``"inversion"``) on ``comm``'s ranks with ``backend``'s memory."""
    return estimate(cfg, cfg.grid_shape(), comm.Get_size(), kind, adjoint_memory(cfg),
                    forward_memory(cfg), bool(backend.device_memory))


def write_summary(out, backend, est: Estimate, comm) -> dict:
    """Write ``out/memory.json`` on rank 0: :func:`~hpcinv.app.memory.peak_record` and the
    itemised estimate. Collective over ``comm``; returns the record."""
    rec = {**peak_record(backend, est, comm), "estimate": est.as_dict(),
           "ranks": comm.Get_size()}
    if comm.Get_rank() == 0:
        path = Path(out) / SUMMARY
        path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec
