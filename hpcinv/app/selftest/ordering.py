"""``--full`` ordering checks: ``halo-ordering`` (ghosts current after a slow kernel queued
before each exchange) and ``overlap-bitwise`` (overlap on and off bitwise equal)."""
from __future__ import annotations

from .correctness import _make, _perturb, compare_exact
from .exchange import index_field, verify_ghosts
from .runner import Result, _fmt_shape, data_fault


SLOW_WRITE = None


def slow_write_kernel():
    """``A = F + value`` after a long busy loop (a kernel that is still running when the
    exchange is issued, unless the exchange waits for it)."""
    global SLOW_WRITE
    if SLOW_WRITE is None:
        from ...backend.kernel import Kernel
        SLOW_WRITE = Kernel(
            "selftest_slow_write", ("F", "A"), ("value",),
            "real acc = (real)0;\n"
            "for (long long k = 0; k < reps; ++k) { acc = acc * (real)0.5 + (real)1; }\n"
            "A[idx] = F[idx] + value + (acc - acc);",
            ints=("reps",), writes=("A",), reach=0)
    return SLOW_WRITE


def check_halo_ordering(ctx) -> Result:
    """A slow kernel writes the field right before each exchange, on the exchange's stream and
    (with an event) on another stream; the ghosts must hold the final values every round."""
    import numpy as np
    from ...parallel import Decomposition, HaloExchange
    comm, bk, sizes = ctx["comm"], ctx["backend"], ctx["sizes"]
    checked = wrong = 0
    first = ""
    for shape in sizes.exch:
        d = Decomposition(shape, comm, periods=(True,) * len(shape))
        base = index_field(d)
        F = bk.upload(base, dtype=np.float64)
        A = bk.upload(base, dtype=np.float64)
        halo = HaloExchange(d, bk, np.float64)
        k = bk.kernel(slow_write_kernel(), len(shape), np.float64)
        own = (tuple(1 for _ in shape), tuple(n - 1 for n in d.padded_shape))
        for pattern in ("same stream", "other stream"):
            for r in range(1, 4):
                bk.launch(k.bind(F=F, A=A, value=float(r), reps=sizes.ordering_reps), own)
                if pattern == "same stream":
                    halo.exchange(A, bk.compute)
                else:
                    boundary = bk.stream("boundary")
                    bk.wait(boundary, bk.record(bk.compute))
                    halo.exchange(A, boundary)
                    bk.wait(bk.compute, bk.record(boundary))
                c, w, f = verify_ghosts(bk.to_host(A), d, shift=float(r),
                                        label=f"{len(shape)}D {pattern} round {r}: ")
                checked, wrong, first = checked + c, wrong + w, first or f
    if wrong:
        return Result("FAIL", f"{wrong} of {checked} ghosts stale after a slow kernel "
                      f"(first: {first}): a missing stream sync before the exchange")
    return Result("PASS", f"{checked} ghost values current after a slow kernel "
                  f"({sizes.ordering_reps} loop iterations/cell) queued before each exchange, "
                  "same and other stream, 2D+3D", {"checked": checked})


@data_fault
def check_overlap_bitwise(ctx) -> Result:
    from mpi4py import MPI
    from ...model import problems
    from ...io import gather_cells
    from ...solvers import DarcySolver, PTParams
    comm, bk, sizes = ctx["comm"], ctx["backend"], ctx["sizes"]
    params = PTParams(tol=1e-30, maxiter=200)
    results = {}
    for shape in sizes.corr:
        nd = len(shape)
        for overlap in (True, False):
            s = DarcySolver(_make(nd)(shape, comm=comm), bk, params, overlap=overlap)
            st = s.solve()
            results[f"Pf {nd}D overlap {'on' if overlap else 'off'}"] = \
                gather_cells(s.decomp, st.Pf, bk.to_host)
    # overlap on/off on a periodic block (a neighbour, itself, on every side): every rank
    local_bad = []
    for shape in ((24, 16), (12, 10, 8)):
        out = []
        for overlap in (True, False):
            s = DarcySolver(problems.periodic_block(shape, seed=comm.Get_rank()), bk,
                            PTParams(tol=1e-30, maxiter=10**9), overlap=overlap)
            for _ in range(50):
                s.step(False)
            out.append(bk.to_host(s.Pf))
        if out[0].tobytes() != out[1].tobytes():
            local_bad.append(f"periodic block {_fmt_shape(shape)}: overlap on != off")
    if local_bad:
        return Result("FAIL", "; ".join(local_bad))
    if comm.Get_rank() != 0:
        return Result()
    if ctx["runner"].fault_for("overlap-bitwise"):
        key = next(iter(results))
        results[key] = _perturb(results[key])
    ref = {}
    for shape in sizes.corr:
        nd = len(shape)
        s = DarcySolver(_make(nd)(shape, comm=MPI.COMM_SELF), bk, params, overlap=False)
        P = gather_cells(s.decomp, s.solve().Pf, bk.to_host)
        ref[f"Pf {nd}D overlap on"] = ref[f"Pf {nd}D overlap off"] = P
    bad = compare_exact(results, ref)
    if bad:
        return Result("FAIL", f"not bitwise equal to 1 rank: {'; '.join(bad)}")
    return Result("PASS", f"{comm.Get_size()} rank(s), overlap on and off, 2D+3D, 200 "
                  "iterations: Pf bitwise = 1 rank; periodic blocks: overlap on = off")
