"""The selftest's machinery: problem sizes, one-line reasons, the :class:`Result` of a
check and the :class:`Runner` that runs every check on every rank and agrees on its row;
formatting helpers shared by the checks and the report."""
from __future__ import annotations

import time

FAULT_ENV = "HPCINV_SELFTEST_FAULT"
STATUS_ORDER = ("SKIP", "PASS", "WARN", "FAIL")


# --------------------------------------------------------------------------- sizes

def fit_shape(shape, ranks: int, per_rank: int = 3):
    """``shape`` grown where needed to give every rank at least ``per_rank`` cells per axis
    (with ``MPI.Compute_dims``' split), so the small grids work on any number of ranks."""
    from mpi4py import MPI
    dims = MPI.Compute_dims(ranks, [0] * len(shape))
    return tuple(max(int(n), per_rank * p) for n, p in zip(shape, dims))


class Sizes:
    """Problem sizes of a mode (``quick``, ``default`` or ``full``) and backend kind."""

    def __init__(self, quick: bool, gpu: bool, ranks: int = 1):
        if quick:
            self.corr = ((31, 15), (15, 7, 7))
            self.exch = ((13, 9), (7, 6, 5))
            self.speed_block = (512, 512) if gpu else (64, 64)
            self.sample_time = 0.05
        else:
            self.corr = ((127, 63), (47, 23, 23))
            self.exch = ((61, 37), (23, 17, 13))
            self.speed_block = (2048, 2048) if gpu else (256, 256)
            self.sample_time = 0.3
        self.corr = tuple(fit_shape(c, ranks) for c in self.corr)
        self.exch = tuple(fit_shape(c, ranks) for c in self.exch)
        self.gd_steps = 3
        self.smoothing_steps = 5
        self.teff_sizes = (64, 128, 256, 512) if gpu else (32,) if quick else (64,)
        self.ordering_reps = 100000 if gpu else 200
        self.pool_shape = (64, 64, 64) if gpu else None


# --------------------------------------------------------------------------- helpers

def one_line(text, limit: int = 240) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return one_line(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


def _polite_wait(comm):
    """A barrier that sleeps instead of spinning (rank 0 may compute alone for a while, and
    spinning ranks would steal its cores on a shared or oversubscribed node)."""
    req = comm.Ibarrier()
    delay = 1e-5
    while not req.Test():
        time.sleep(delay)
        delay = min(2 * delay, 2e-3)


def _fmt_shape(shape) -> str:
    return "x".join(str(n) for n in shape)


def _fmt_time(t) -> str:
    if t is None:
        return "-"
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


class Result:
    """What a check returns on one rank."""

    def __init__(self, status="PASS", detail="", data=None):
        self.status, self.detail, self.data = status, detail, data if data is not None else {}


class DependencyFailed(Exception):
    """A check could not run because an earlier one failed (reported as SKIP)."""


# --------------------------------------------------------------------------- the runner

class Runner:
    """Runs checks on every rank, catches their errors and agrees on their outcome."""

    def __init__(self, comm, fault: str | None):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.fault = (fault or "").strip() or None
        self.rows: list[dict] = []
        self.per_rank: dict = {}
        self._used = set()

    def fault_for(self, name: str) -> bool:
        """True when ``HPCINV_SELFTEST_FAULT`` names this check (marks the fault used)."""
        if self.fault and (name == self.fault or name.startswith(self.fault + "-")):
            self._used.add(name)
            return True
        return False

    def run(self, name: str, fn, *args, merge=None) -> dict:
        """Run ``fn(*args) -> Result`` on every rank; the row (same on every rank)."""
        t0 = time.perf_counter()
        try:
            res = fn(*args)
            if res is None:
                res = Result()
            if not getattr(fn, "data_fault", False) and self.fault_for(name) and \
                    self.rank == self.size - 1:
                raise RuntimeError(f"injected fault ({FAULT_ENV}={self.fault}) on rank "
                                   f"{self.rank}")
        except DependencyFailed as exc:
            res = Result("SKIP", one_line(str(exc)))
        except Exception as exc:       # one line per failure, never a traceback
            res = Result("FAIL", _reason(exc))
        res.detail = one_line(res.detail)
        seconds = time.perf_counter() - t0
        _polite_wait(self.comm)
        everyone = self.comm.allgather((res.status, res.detail, res.data, seconds))
        row = self._combine(name, everyone, merge)
        self.rows.append(row)
        self.per_rank[name] = [e[2] for e in everyone]
        return row

    def _combine(self, name, everyone, merge):
        statuses = [e[0] for e in everyone]
        worst = max(statuses, key=STATUS_ORDER.index)
        if worst in ("FAIL", "WARN"):
            bad = [r for r, s in enumerate(statuses) if s == worst]
            r = bad[0]
            detail = everyone[r][1]
            if self.size > 1:
                more = f" (and {len(bad) - 1} more rank(s))" if len(bad) > 1 else ""
                detail = f"rank {r}: {detail}{more}"
        elif worst == "SKIP" or merge is None:
            detail = everyone[0][1]
        else:
            try:
                detail = merge([e[2] for e in everyone]) or everyone[0][1]
            except Exception as exc:
                worst, detail = "FAIL", f"summary failed: {_reason(exc)}"
        return {"name": name, "status": worst, "detail": one_line(detail),
                "seconds": round(max(e[3] for e in everyone), 3), "data": everyone[0][2]}

    def failed(self, name) -> bool:
        return any(r["name"] == name and r["status"] == "FAIL" for r in self.rows)

    def ok(self) -> bool:
        """Collective: no check failed on any rank."""
        from mpi4py import MPI
        bad = int(any(r["status"] == "FAIL" for r in self.rows))
        return self.comm.allreduce(bad, op=MPI.MAX) == 0


def data_fault(fn):
    """Mark a check function as injecting its own (data) fault."""
    fn.data_fault = True
    return fn
