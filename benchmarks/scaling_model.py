#!/usr/bin/env python
"""A latency-bandwidth model of the APT iteration's weak scaling, with and without overlap.

Subcommands::

    # measure the network: ping-pong between ranks 0 and 1 over message sizes, fit t = a + b/B
    mpiexec -n 2 python benchmarks/scaling_model.py pingpong --out benchmarks/results/pingpong.json

    # predictions from given hardware figures (per GPU / rank)
    python benchmarks/scaling_model.py predict --copy-bw 1300 --teff-ratio 0.7 \\
        --latency 2 --net-bw 25 --local 512x512x512
    python benchmarks/scaling_model.py a100            # the preset above, 8 .. 4096 GPUs

    # predictions from measurements: single-rank T_eff from a weak_scaling.py file, alpha and
    # beta from a ping-pong file (or measured now, when launched on >= 2 ranks)
    python benchmarks/scaling_model.py predict --results benchmarks/results/weak.jsonl \\
        --pingpong benchmarks/results/pingpong.json --local 1024x1024

    # each multi-rank record of a weak_scaling.py file against the model, with the error
    python benchmarks/scaling_model.py validate --results benchmarks/results/weak.jsonl \\
        --pingpong benchmarks/results/pingpong.json

The model, per iteration and per rank (the slowest rank, the one with the most neighbours):

* ``t_comp = A_eff / T_eff * share``: ``A_eff = (2 (ndim + 1) + 2) n_local sizeof(real)``,
  ``T_eff`` the single-rank effective throughput, ``share = max(1, ranks_per_node * threads /
  cores)`` on CPUs (oversubscribed cores), 1 on GPUs (one rank per GPU).
* halo exchange: one message of one face (``prod(local) / local[a] * sizeof``) to each
  neighbour; a rank has ``sum_a min(dims[a] - 1, 2)`` neighbours for the Cartesian layout of
  ``MPI.Compute_dims(P, ndim)`` (0 on one rank, up to ``2 ndim``). All receives and sends are
  posted at once, so the latencies overlap but the bytes share the rank's injection link (NIC
  or PCIe/NVLink path): ``t_msg = alpha + sum(face bytes) / beta`` (``--combine mixed``, the
  default). ``--combine sum`` serialises the messages (``sum(alpha + b / beta)``, an upper
  bound: no concurrency at all), ``--combine max`` assumes full concurrency on independent
  links (``max(alpha + b / beta)``, a lower bound). Links are full duplex: receives are not
  counted on top of sends. Packing and unpacking the faces moves ``4 sum(bytes)`` at the copy
  bandwidth: ``t_comm = t_msg + t_pack``.
* overlap on: the boundary slabs first, then the interior concurrently with the exchange:
  ``t = t_boundary + max(t_interior, t_comm) + overheads``, so the exposed exchange is
  ``max(0, t_comm - t_interior)``. ``t_boundary`` is the slab cells' share of ``t_comp``, with the
  slab normal to the contiguous axis charged ``line / sizeof`` times per cell (each cell of it
  touches its own cache line / memory sector: 64 B on CPUs, 32 B on GPUs).
  overlap off: ``t = t_comp + t_comm + overheads``.
* overheads (exposed host work per iteration): each kernel launch costs ``launch``. With
  neighbours, an iteration launches :data:`LAUNCHES_OVERLAP` kernels with overlap (the shell in
  one launch, the interior, the pack of all faces, the unpack) and :data:`LAUNCHES_BLOCKING`
  without (the owned box, pack, unpack), whatever the number of neighbours (counted by
  ``benchmarks/launches.py``; before the stream model they were ``2 ndim + 1 + 2 n_nb`` and
  ``2 n_nb + 1``); on CPUs the interior's hand-off to a worker thread costs ``handoff``. On one
  rank there is no exchange and one launch, as in ``DarcySolver``.
* weak-scaling efficiency ``E(P) = t(1) / t(P)``.

The crossover local size is the smallest cube ``n^ndim`` for which the exchange with all
``2 ndim`` neighbours fits under the interior update (``t_comm <= t_interior``): above it, the
overlap hides the exchange completely.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_RANKS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 2197, 4096)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
@dataclass
class Hardware:
    """Per-rank figures (SI units: bytes/s, seconds)."""
    teff: float                 # effective throughput of the APT step, one rank alone (B/s)
    copy_bw: float              # bandwidth for pack/unpack (B/s, counting read + write)
    alpha: float                # message latency (s)
    beta: float                 # message bandwidth (B/s)
    launch: float = 0.0         # exposed cost of one extra kernel launch / host call (s)
    handoff: float = 0.0        # CPU: hand-off of the interior to a worker thread (s)
    line: int = 64              # cache line / memory sector (bytes)
    combine: str = "mixed"      # mixed | sum | max


def a_eff_per_cell(ndim: int, itemsize: int) -> int:
    return (2 * (ndim + 1) + 2) * itemsize


def compute_dims(p: int, ndim: int) -> list[int]:
    """``MPI.Compute_dims(p, ndim)`` (balanced factorisation, non-increasing)."""
    try:
        from mpi4py import MPI
        return list(MPI.Compute_dims(p, [0] * ndim))
    except Exception:      # pragma: no cover - same algorithm without MPI
        dims = [1] * ndim
        f, q = [], p
        d = 2
        while d * d <= q:
            while q % d == 0:
                f.append(d)
                q //= d
            d += 1
        if q > 1:
            f.append(q)
        for x in sorted(f, reverse=True):
            dims[dims.index(min(dims))] *= x
        return sorted(dims, reverse=True)


def neighbour_counts(dims) -> list[int]:
    """Neighbours per axis of the rank with the most (non-periodic Cartesian layout)."""
    return [min(int(d) - 1, 2) for d in dims]


def face_bytes(local, itemsize: int) -> list[int]:
    n = int(np.prod(local))
    return [n // int(k) * itemsize for k in local]


def comm_time(local, dims, itemsize: int, hw: Hardware) -> float:
    """Time of one halo exchange of Pf (messages + pack/unpack) on the busiest rank."""
    msgs = []
    for k, b in zip(neighbour_counts(dims), face_bytes(local, itemsize)):
        msgs += [b] * k
    if not msgs:
        return 0.0
    total = sum(msgs)
    if hw.combine == "sum":
        t_msg = sum(hw.alpha + b / hw.beta for b in msgs)
    elif hw.combine == "max":
        t_msg = max(hw.alpha + b / hw.beta for b in msgs)
    elif hw.combine == "mixed":
        t_msg = hw.alpha + total / hw.beta
    else:
        raise ValueError(f"combine must be mixed, sum or max, got {hw.combine!r}")
    return t_msg + 4.0 * total / hw.copy_bw


#: Kernel launches per APT iteration with neighbours (see the module docstring).
LAUNCHES_OVERLAP = 4
LAUNCHES_BLOCKING = 3


def predict(local, dims, itemsize: int, hw: Hardware, overlap: bool, share: float = 1.0) -> dict:
    """Predicted time per iteration and its parts for one rank of a ``dims`` layout."""
    local = [int(n) for n in local]
    ndim = len(local)
    n = int(np.prod(local))
    t_comp = a_eff_per_cell(ndim, itemsize) * n / hw.teff * share
    nb = sum(neighbour_counts(dims))
    out = {"t_comp": t_comp, "neighbours": nb, "t_comm": 0.0, "exposed_comm": 0.0,
           "t_overhead": 0.0}
    if nb == 0:
        out["t"] = t_comp
        return out
    t_comm = comm_time(local, dims, itemsize, hw)
    out["t_comm"] = t_comm
    if not overlap:
        over = LAUNCHES_BLOCKING * hw.launch
        out.update(t_overhead=over, exposed_comm=t_comm, t=t_comp + t_comm + over)
        return out
    interior = int(np.prod([max(k - 2, 0) for k in local]))
    shell = n - interior
    # slab normal to the contiguous (last) axis: one cache line per cell
    strided = int(np.prod(local[:-1])) * min(2, local[-1])
    penalty = max(1.0, hw.line / itemsize)
    per_cell = t_comp / n
    t_int = per_cell * interior
    t_bnd = per_cell * (shell + strided * (penalty - 1.0))
    over = LAUNCHES_OVERLAP * hw.launch + hw.handoff
    exposed = max(0.0, t_comm - t_int)
    out.update(t_interior=t_int, t_boundary=t_bnd, t_overhead=over, exposed_comm=exposed,
               t=t_bnd + max(t_int, t_comm) + over)
    return out


def efficiency(local, p: int, itemsize: int, hw: Hardware, overlap: bool,
               share: float = 1.0) -> dict:
    """Weak-scaling efficiency t(1) / t(P) for ``P`` ranks in ``MPI.Compute_dims`` layout."""
    ndim = len(local)
    dims = compute_dims(p, ndim)
    t1 = predict(local, [1] * ndim, itemsize, hw, overlap)["t"]
    r = predict(local, dims, itemsize, hw, overlap, share)
    r.update(ranks=p, dims=dims, t1=t1, efficiency=t1 / r["t"])
    return r


def crossover(ndim: int, itemsize: int, hw: Hardware, nmax: int = 1 << 14):
    """Smallest cube side ``n`` for which the exchange with ``2 ndim`` neighbours fits under
    the interior update (``t_comm <= t_interior``), or ``None`` below ``nmax``."""
    dims = [3] * ndim
    lo = 3

    def hidden(n):
        r = predict([n] * ndim, dims, itemsize, hw, True)
        return r["t_comm"] <= r["t_interior"]
    if not hidden(nmax):
        return None
    hi = nmax
    while lo < hi:                      # t_interior / t_comm grows with n: bisect
        mid = (lo + hi) // 2
        if hidden(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --------------------------------------------------------------------------------------------
# measurements: ping-pong, overheads, single-rank T_eff from weak_scaling.py records
# --------------------------------------------------------------------------------------------
PINGPONG_SIZES = tuple(8 * 4 ** k for k in range(10))       # 8 B .. 2 MiB


def pingpong(comm, sizes=PINGPONG_SIZES, min_time=0.05, repeats=5):
    """Half round-trip time between ranks 0 and 1 for each size (median of ``repeats``
    samples of enough round trips to last ``min_time``). Other ranks idle. Returns
    ``[(bytes, seconds)]`` on every rank."""
    rank = comm.Get_rank()
    out = []
    for nbytes in sizes:
        buf = np.zeros(max(1, nbytes), dtype=np.uint8)
        n = 4
        while True:          # calibrate the number of round trips
            comm.Barrier()
            t0 = time.perf_counter()
            _rounds(comm, rank, buf, n)
            dt = comm.bcast(time.perf_counter() - t0, root=0)
            if dt >= min_time or n >= 1 << 16:
                break
            n *= 2
        samples = []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            _rounds(comm, rank, buf, n)
            samples.append(comm.bcast((time.perf_counter() - t0) / (2 * n), root=0))
        out.append((int(nbytes), float(statistics.median(samples))))
    return out


def _rounds(comm, rank, buf, n):
    if rank == 0:
        for _ in range(n):
            comm.Send(buf, dest=1, tag=7)
            comm.Recv(buf, source=1, tag=7)
    elif rank == 1:
        for _ in range(n):
            comm.Recv(buf, source=0, tag=7)
            comm.Send(buf, dest=0, tag=7)


def fit_latency_bandwidth(samples):
    """Least squares fit of ``t = alpha + bytes / beta`` on relative errors (every size counts
    alike, small and large). Returns ``(alpha, beta, max relative residual)``."""
    b = np.array([s[0] for s in samples], dtype=float)
    t = np.array([s[1] for s in samples], dtype=float)
    A = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (alpha, inv_beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if inv_beta <= 0:          # degenerate (all tiny messages): bandwidth unknown
        inv_beta = 1e-15
    if alpha < 0:              # refit the slope alone
        alpha = 0.0
        inv_beta = float(np.sum(b * t / t ** 2) / np.sum(b * b / t ** 2))
    model = alpha + b * inv_beta
    return float(alpha), float(1.0 / inv_beta), float(np.max(np.abs(model - t) / t))


def measure_overheads(threads=1):
    """Exposed cost of one host kernel call (``DarcySolver.step`` on a 4x4 block: one launch
    and the Python around it) and of the worker-thread hand-off of the overlapped interior."""
    from mpi4py import MPI

    from hpcinv.backend import make_backend
    from hpcinv.model.problems import geothermal2d
    from hpcinv.solvers import DarcySolver, PTParams
    bk = make_backend("host", threads=threads)
    s = DarcySolver(geothermal2d((4, 4), comm=MPI.COMM_SELF), bk, PTParams(), overlap=False)
    for _ in range(50):
        s.step(False)
    t0 = time.perf_counter()
    for _ in range(2000):
        s.step(False)
    launch = (time.perf_counter() - t0) / 2000
    # hand-off: a (nearly) empty op issued on the interior worker stream, then waited for
    interior, tiny = bk.streams["interior"], bk.empty((1,), np.float64)

    def handoff_once():
        bk.fill(tiny, 0.0, stream=interior)
        bk.sync(interior)
    for _ in range(20):
        handoff_once()
    t0 = time.perf_counter()
    for _ in range(500):
        handoff_once()
    handoff = (time.perf_counter() - t0) / 500
    return launch, handoff


def load_records(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def _key(r):
    return (r["ndim"], tuple(r["local_size"]), r.get("dtype"), r.get("threads"),
            r.get("backend"))


def baselines(records, kind="forward", stat="median"):
    """Single-rank time per iteration for each (ndim, local, dtype, threads, backend): the
    median over the 1-rank records (overlap on and off are the same code path on one rank)."""
    acc = {}
    for r in records:
        if r["ranks"] == 1 and f"t_iter_{kind}" in r:
            acc.setdefault(_key(r), []).append(r[_field(kind, stat)])
    return {k: float(statistics.median(v)) for k, v in acc.items()}


def _field(kind, stat):
    return f"t_iter_{kind}" + ("_min" if stat == "min" else "")


def share_of(rec) -> float:
    if rec.get("backend") != "host":
        return 1.0
    cores = (rec.get("machine") or {}).get("cores_usable") or 1
    return max(1.0, rec.get("ranks_per_node", rec["ranks"]) * (rec.get("threads") or 1) / cores)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _sizes(text):
    from _common import parse_sizes
    return parse_sizes(text)


def _network(args, comm_world):
    """alpha, beta, source: given, from a ping-pong file, or measured now."""
    if args.latency is not None and args.net_bw is not None:
        return args.latency * 1e-6, args.net_bw * 1e9, "given"
    if args.pingpong and os.path.exists(args.pingpong):
        with open(args.pingpong) as f:
            pp = json.loads(f.readline())
        return pp["alpha_s"], pp["beta_Bps"], f"ping-pong file {args.pingpong}"
    if comm_world is not None and comm_world.Get_size() >= 2:
        samples = pingpong(comm_world)
        a, b, _ = fit_latency_bandwidth(samples)
        return a, b, "ping-pong measured now on ranks 0-1"
    raise SystemExit("error: no network figures: give --latency and --net-bw, or --pingpong "
                     "FILE, or run under mpiexec -n 2 (or more) to measure them")


def cmd_pingpong(args):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        raise SystemExit("error: pingpong needs 2 ranks or more (mpiexec -n 2 ...)")
    samples = pingpong(comm)
    alpha, beta, worst = fit_latency_bandwidth(samples)
    if comm.Get_rank() == 0:
        from _common import machine
        rec = {"benchmark": "pingpong", "ranks": comm.Get_size(),
               "mpi_library": MPI.Get_library_version().strip().splitlines()[0].strip(),
               "processor_0": MPI.Get_processor_name(),
               "samples": [{"bytes": b, "t_s": t} for b, t in samples],
               "alpha_s": alpha, "beta_Bps": beta, "alpha_us": alpha * 1e6,
               "beta_GBs": beta / 1e9, "fit_max_rel_error": worst, "machine": machine()}
        print(json.dumps(rec), flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(json.dumps(rec) + "\n")
        print(f"# alpha = {alpha * 1e6:.2f} us, beta = {beta / 1e9:.2f} GB/s "
              f"(max relative fit error {worst:.0%})", file=sys.stderr)


def _hardware_given(args) -> Hardware:
    teff = args.copy_bw * 1e9 * args.teff_ratio
    return Hardware(teff=teff, copy_bw=args.copy_bw * 1e9, alpha=args.latency * 1e-6,
                    beta=args.net_bw * 1e9, launch=args.launch_us * 1e-6,
                    handoff=args.handoff_us * 1e-6, line=args.line, combine=args.combine)


def table(local, itemsize, hw, ranks, share=1.0):
    rows = []
    for p in ranks:
        on = efficiency(local, p, itemsize, hw, True, share)
        off = efficiency(local, p, itemsize, hw, False, share)
        rows.append({"ranks": p, "dims": on["dims"], "neighbours": on["neighbours"],
                     "t1_ms": on["t1"] * 1e3, "t_comp_ms": on["t_comp"] * 1e3,
                     "t_comm_ms": on["t_comm"] * 1e3,
                     "t_interior_ms": on.get("t_interior", on["t_comp"]) * 1e3,
                     "t_overlap_ms": on["t"] * 1e3, "t_blocking_ms": off["t"] * 1e3,
                     "exposed_comm_overlap_ms": on["exposed_comm"] * 1e3,
                     "efficiency_overlap": on["efficiency"],
                     "efficiency_blocking": off["efficiency"]})
    return rows


def print_table(rows, local, hw, itemsize, ndim, header):
    print(header)
    print(f"# local {'x'.join(map(str, local))}, {itemsize}-byte reals; T_eff {hw.teff / 1e9:.1f} "
          f"GB/s, copy {hw.copy_bw / 1e9:.1f} GB/s, alpha {hw.alpha * 1e6:.2f} us, beta "
          f"{hw.beta / 1e9:.2f} GB/s, launch {hw.launch * 1e6:.1f} us, handoff "
          f"{hw.handoff * 1e6:.1f} us, combine={hw.combine}")
    print(f"{'ranks':>6} {'dims':>14} {'nb':>3} {'t_comp ms':>10} {'t_comm ms':>10} "
          f"{'t_int ms':>9} {'t ovl ms':>9} {'t blk ms':>9} {'E ovl':>7} {'E blk':>7}")
    for r in rows:
        print(f"{r['ranks']:>6} {'x'.join(map(str, r['dims'])):>14} {r['neighbours']:>3} "
              f"{r['t_comp_ms']:>10.3f} {r['t_comm_ms']:>10.4f} {r['t_interior_ms']:>9.3f} "
              f"{r['t_overlap_ms']:>9.3f} {r['t_blocking_ms']:>9.3f} "
              f"{r['efficiency_overlap']:>7.2%} {r['efficiency_blocking']:>7.2%}")
    n = crossover(ndim, itemsize, hw)
    if n is None:
        print("# crossover: the exchange is never hidden below 16384^ndim per rank")
    else:
        print(f"# crossover: overlap hides the exchange with {2 * ndim} neighbours for local "
              f"grids >= {n}^{ndim} ({n ** ndim:,} cells) per rank")
    return n


def cmd_predict(args, preset=None):
    from mpi4py import MPI
    itemsize = np.dtype(args.dtype).itemsize
    ranks = [int(v) for v in args.ranks.split(",")] if args.ranks else list(DEFAULT_RANKS)
    comm = MPI.COMM_WORLD
    if args.results:
        a, b, src = _network(args, comm)
        base = baselines(load_records(args.results))
    else:
        if args.latency is None or args.net_bw is None or args.copy_bw is None:
            raise SystemExit("error: give --copy-bw, --latency and --net-bw (hardware figures) "
                             "or --results FILE (measured)")
        src = "given"
    if comm.Get_rank() != 0:
        return
    out = []
    for local in _sizes(args.local):
        nd = len(local)
        if args.results:
            key = next((k for k in base if k[0] == nd and k[1] == tuple(local)), None)
            if key is None:
                raise SystemExit(f"error: no 1-rank record for local {local} in {args.results}")
            teff = a_eff_per_cell(nd, itemsize) * int(np.prod(local)) / base[key]
            launch, handoff = (args.launch_us * 1e-6, args.handoff_us * 1e-6)
            hw = Hardware(teff=teff, copy_bw=teff, alpha=a, beta=b, launch=launch,
                          handoff=handoff, line=args.line, combine=args.combine)
        else:
            hw = _hardware_given(args)
        rows = table(local, itemsize, hw, ranks)
        n = print_table(rows, local, hw, itemsize, nd,
                        f"# {preset or 'prediction'} ({src} network figures)")
        rec = {"model": "latency-bandwidth", "local": list(local), "dtype": args.dtype,
               "hardware": asdict(hw), "network_source": src, "crossover_n": n, "rows": rows}
        out.append(rec)
        if args.json:
            print(json.dumps(rec))
    return out


def cmd_validate(args):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    a, b, src = _network(args, comm)
    if comm.Get_rank() != 0:
        return
    recs = load_records(args.results)
    if args.tag:
        recs = [r for r in recs if r.get("tag") == args.tag]
    launch, handoff = args.launch_us * 1e-6, args.handoff_us * 1e-6
    if args.measure_overheads:
        launch, handoff = measure_overheads()
    base = {k: baselines(recs, k, args.stat) for k in ("forward", "adjoint")}
    print(f"# network: alpha {a * 1e6:.2f} us, beta {b / 1e9:.2f} GB/s ({src}); launch "
          f"{launch * 1e6:.1f} us, handoff {handoff * 1e6:.1f} us")
    print(f"{'ndim':>4} {'local':>12} {'ranks':>5} {'ovl':>4} {'kind':>8} {'share':>5} "
          f"{'measured ms':>11} {'model ms':>9} {'error':>7} {'E meas':>7} {'E model':>7}")
    rows = []
    for r in recs:
        for kind in ("forward", "adjoint"):
            t1 = base[kind].get(_key(r))
            if t1 is None or f"t_iter_{kind}" not in r:
                continue
            nd, local = r["ndim"], r["local_size"]
            itemsize = np.dtype(r.get("dtype", "float64")).itemsize
            teff = a_eff_per_cell(nd, itemsize) * int(np.prod(local)) / t1
            hw = Hardware(teff=teff, copy_bw=teff, alpha=a, beta=b, launch=launch,
                          handoff=handoff if r.get("backend") == "host" else 0.0,
                          line=args.line, combine=args.combine)
            share = share_of(r)
            pred = predict(local, r["dims"], itemsize, hw, r["overlap"], share)
            meas = r[_field(kind, args.stat)]
            err = (pred["t"] - meas) / meas
            row = {"ndim": nd, "local": local, "ranks": r["ranks"], "dims": r["dims"],
                   "overlap": r["overlap"], "kind": kind, "share": share,
                   "measured_s": meas, "model_s": pred["t"], "error": err,
                   "efficiency_measured": t1 / meas, "efficiency_model": t1 / pred["t"],
                   "t_comm_model_s": pred["t_comm"], "oversubscribed": r.get("oversubscribed")}
            rows.append(row)
            print(f"{nd:>4} {'x'.join(map(str, local)):>12} {r['ranks']:>5} "
                  f"{'on' if r['overlap'] else 'off':>4} {kind:>8} {share:>5.1f} "
                  f"{meas * 1e3:>11.3f} {pred['t'] * 1e3:>9.3f} {err:>+7.1%} "
                  f"{t1 / meas:>7.1%} {t1 / pred['t']:>7.1%}")
            if args.json:
                print(json.dumps(row))
    if rows:
        errs = [abs(x["error"]) for x in rows if x["ranks"] > 1]
        if errs:
            print(f"# multi-rank points: mean |error| {np.mean(errs):.1%}, max {max(errs):.1%}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q):
        q.add_argument("--latency", type=float, default=None, help="network latency (us)")
        q.add_argument("--net-bw", type=float, default=None, help="network bandwidth (GB/s)")
        q.add_argument("--pingpong", default=None, help="ping-pong JSON file (alpha, beta)")
        q.add_argument("--combine", default="mixed", choices=("mixed", "sum", "max"))
        q.add_argument("--launch-us", type=float, default=None,
                       help="exposed cost of one extra kernel launch / host call (us)")
        q.add_argument("--handoff-us", type=float, default=0.0,
                       help="CPU: interior hand-off to a worker thread (us)")
        q.add_argument("--line", type=int, default=None,
                       help="cache line / memory sector bytes (default 64 CPU, 32 GPU figures)")
        q.add_argument("--json", action="store_true", help="also print JSON lines")

    q = sub.add_parser("pingpong", help="measure alpha and beta between ranks 0 and 1")
    q.add_argument("--out", default=None, help="write the fit (one JSON line) to this file")
    for name in ("predict", "a100"):
        q = sub.add_parser(name, help="efficiency vs ranks" + (" (A100 preset)" if name == "a100"
                                                              else ""))
        common(q)
        q.add_argument("--local", default="512x512x512" if name == "a100" else "512x512x512")
        q.add_argument("--ranks", default=None,
                       help="comma-separated rank counts (default 8..4096 and 2197)")
        q.add_argument("--dtype", default="float64", choices=("float64", "float32"))
        q.add_argument("--copy-bw", type=float, default=None, help="device copy bandwidth (GB/s)")
        q.add_argument("--teff-ratio", type=float, default=0.7,
                       help="T_eff / T_copy of the APT step (default 0.7: published GPU figures)")
        q.add_argument("--results", default=None,
                       help="weak_scaling.py JSON lines: single-rank T_eff from there")
    q = sub.add_parser("validate", help="model vs every record of a weak_scaling.py file")
    common(q)
    q.add_argument("--results", required=True)
    q.add_argument("--tag", default=None, help="only records with this tag")
    q.add_argument("--stat", default="median", choices=("median", "min"),
                   help="measured time: median or fastest sample (default median)")
    q.add_argument("--measure-overheads", action="store_true",
                   help="measure launch and hand-off costs here (host backend)")
    args = p.parse_args(argv)
    if args.cmd == "pingpong":
        return cmd_pingpong(args)
    if args.cmd == "a100":
        for name, v in (("copy_bw", 1300.0), ("latency", 2.0), ("net_bw", 25.0)):
            if getattr(args, name) is None:
                setattr(args, name, v)
        args.results = None
    gpu = args.cmd == "a100" or (args.cmd == "predict" and not args.results)
    if args.launch_us is None:
        args.launch_us = 10.0 if gpu else 0.0
    if args.line is None:
        args.line = 32 if gpu else 64
    if args.cmd in ("predict", "a100"):
        return cmd_predict(args, preset="A100-class prediction (1.3 TB/s copy, T_eff/T_copy "
                           f"{args.teff_ratio}, 25 GB/s, 2 us)" if args.cmd == "a100" else None)
    return cmd_validate(args)


if __name__ == "__main__":
    main()
