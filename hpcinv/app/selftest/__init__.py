"""``hpcinv selftest``: is this machine, under this launcher, ready for hpcinv runs?

Run it first on a new machine, with the launcher and rank layout of your real runs::

    srun -n 8 hpcinv selftest                 # or: mpiexec -n 4 hpcinv selftest
    hpcinv selftest --quick                   # a few seconds
    hpcinv selftest --full --backend cupy     # GPU acceptance run (a few minutes)
    hpcinv selftest --json                    # one JSON object instead of the table

Checks (one table row each; every rank takes part in every check):

``environment``
    per rank: backend, device (and PCI bus id on GPUs), CuPy/NVRTC/driver versions, MPI
    library, the CUDA-aware decision and its reason, threads, host, node-local rank; the HDF5
    output mode a run would use (``HPCINV_H5_MODE``, parallel h5py).
``device-binding``
    GPUs: every rank on its own device (two ranks on one device FAIL unless
    ``--allow-shared-device``); host: SKIP.
``exchange`` (host memory) / ``exchange-staged`` and ``exchange-device`` (device memory)
    a real :class:`~hpcinv.parallel.HaloExchange` of backend buffers on the run's
    decomposition of small 2D and 3D grids (non-periodic, and periodic so that every face of
    every rank, including a 1-rank run, exchanges), float64 and float32: owned cells hold
    ``1 + global linear index``, and every ghost that has a neighbour must hold its
    neighbour's value afterwards. Device buffers are tested where the backend says MPI is
    CUDA-aware, staging through host buffers always.
``forward-2d/3d``, ``gradient-2d/3d``, ``descent-2d/3d``
    the built-in geothermal problems at small sizes: a forward solve (its pressure becomes the
    synthetic observations at the workshop points), the adjoint gradient at K = 1 with
    smoothing, and 3 gradient-descent steps, on all ranks, each BITWISE equal to the same
    computation by rank 0 alone on ``MPI.COMM_SELF`` (gathered global arrays and the misfit
    history compared exactly).
``speed``
    time per APT iteration on a block per rank, ``T_eff = A_eff / t_iter`` per rank
    (``A_eff = (2 D_u + D_k) n_cells sizeof(real)``, ``D_u = ndim + 1``, ``D_k = 2``), the
    exchange's share (the same step on each rank alone, and ``halo.exchange`` alone) and the
    slowest rank. Reported, not judged, except WARN for a rank 10x slower than the median.

``--full`` adds the GPU acceptance checks (host backends run them too, with device-only parts
SKIPped, so CI covers them): ``halo-ordering`` (a deliberately slow kernel writes the field
right before each exchange, on the exchange's stream and on another one; the ghosts must hold
the final values), ``overlap-bitwise`` (forward solves with overlap on and off, bitwise equal
to 1 rank; overlap on/off on a periodic block per rank), ``launch-cost`` (host time per
launch), ``teff`` (T_eff / T_copy at 64^3 to 512^3 in float32 and float64 on GPUs; 64^3 on
the host) and ``pool-memory`` (peak CuPy pool memory of a gradient, in full fields; SKIP on the
host).

Exit status 0 when no check FAILs (WARN and SKIP pass), 1 otherwise. A check that raises is a
FAIL with the one-line reason. Rank 0 prints.

Testing aid: ``HPCINV_SELFTEST_FAULT=<check>`` injects a fault into the checks whose name is
``<check>`` or starts with ``<check>-`` (``exchange`` corrupts one received ghost value on the
last rank before verification; ``forward``, ``gradient``, ``descent`` and ``overlap``
perturb one value of the parallel result before the comparison; any other check raises on the
last rank at its end), so that tests see exit status 1 and the failing check named.
"""
from __future__ import annotations

import math
import os
import socket
import statistics
import time

FAULT_ENV = "HPCINV_SELFTEST_FAULT"
STATUS_ORDER = ("SKIP", "PASS", "WARN", "FAIL")


def add_arguments(p):
    """The options of ``hpcinv selftest`` (argparse subparser ``p``)."""
    p.add_argument("--backend", default="auto", help="auto (GPU if available), host, cupy")
    p.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    p.add_argument("--full", action="store_true", help="also the GPU acceptance checks "
                   "(halo ordering, overlap, launch cost, T_eff/T_copy, pool memory); with "
                   "--quick at the quick sizes")
    p.add_argument("--allow-shared-device", action="store_true",
                   help="do not FAIL when several ranks share one GPU")


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


# --------------------------------------------------------------------------- (a) environment

def environment_of(bk, comm, node) -> dict:
    """This rank's environment (JSON-able)."""
    from mpi4py import MPI
    info = {"rank": comm.Get_rank(), "host": MPI.Get_processor_name() or socket.gethostname(),
            "node_rank": node.Get_rank(), "node_size": node.Get_size(),
            "backend": bk.name, "stream_check": bool(bk.describe().get("stream_check", False)),
            "threads": getattr(bk, "threads", None),
            "cuda_aware": bool(bk.cuda_aware), "cuda_aware_reason": bk.cuda_aware_reason,
            "device_memory": bool(bk.device_memory)}
    try:
        info["device"] = bk.describe().get("device")
    except Exception as exc:
        info["device"] = f"? ({_reason(exc)})"
    if bk.name == "cupy":
        cp = bk.xp
        info["device_id"] = bk.device_id
        for key, get in (("pci_bus_id", lambda: cp.cuda.Device(bk.device_id).pci_bus_id),
                         ("cupy", lambda: cp.__version__),
                         ("nvrtc", lambda: ".".join(map(str, cp.cuda.nvrtc.getVersion()))),
                         ("cuda_runtime", lambda: _cuda_version(
                             cp.cuda.runtime.runtimeGetVersion())),
                         ("cuda_driver", lambda: _cuda_version(
                             cp.cuda.runtime.driverGetVersion())),
                         ("visible_devices", lambda: os.environ.get("CUDA_VISIBLE_DEVICES",
                                                                   "unset"))):
            try:
                info[key] = get()
            except Exception as exc:
                info[key] = f"? ({_reason(exc)})"
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def check_environment(ctx) -> Result:
    from mpi4py import MPI

    import numpy as np
    from ...parallel.cuda_aware import library_info
    from ...solvers.overlap import resolve_overlap
    comm, bk = ctx["comm"], ctx["backend"]
    mine = environment_of(bk, comm, ctx["node"])
    lib = MPI.Get_library_version().strip().splitlines()[0].strip()
    mine["mpi_library"] = one_line(lib, 80)
    mine["mpi_name"] = library_info(MPI.Get_library_version())["name"]
    on, why = resolve_overlap("auto", bk, ctx["node"].Get_size())
    mine["overlap_auto"], mine["overlap_reason"] = on, why
    problems = []
    try:
        from ...io.h5write import choose_mode, h5py_has_mpi
        import h5py
        mine["h5py"] = h5py.__version__
        mine["h5py_mpi"] = h5py_has_mpi()
        mine["h5_mode"] = choose_mode(comm)
        mine["h5_mode_env"] = os.environ.get("HPCINV_H5_MODE", "")
    except Exception as exc:
        mine["h5_mode"] = "?"
        problems.append(f"HDF5 output: {_reason(exc)}")
    mine["numpy"] = np.__version__
    if bk.name == "cupy" and str(mine.get("pci_bus_id", "?")).startswith("?"):
        problems.append(f"no PCI bus id for device {mine.get('device_id')}: "
                        f"{mine.get('pci_bus_id')}")
    if problems:
        return Result("FAIL", "; ".join(problems), mine)
    nodes = ctx["nodes"]
    text = (f"{comm.Get_size()} rank(s) on {nodes} node(s), backend {bk.name}"
            f"{' (stream check)' if mine['stream_check'] else ''}, {mine['mpi_name']}, "
            f"halos {_halo_mode(bk)}, HDF5 mode {mine['h5_mode']}")
    return Result("PASS", text, mine)


def _halo_mode(bk) -> str:
    if not bk.device_memory:
        return "host memory"
    return "device buffers to MPI" if bk.cuda_aware else "staged via host"


def check_device_binding(ctx, envs) -> Result:
    """Rank 0 judges from everyone's environment (``envs``: gathered, rank 0 only)."""
    bk = ctx["backend"]
    if bk.name != "cupy":
        return Result("SKIP", f"backend {bk.name}: no GPU to bind")
    if ctx["comm"].Get_rank() != 0:
        return Result()
    by_dev = {}
    for e in envs:
        key = (e.get("host"), str(e.get("pci_bus_id")))
        by_dev.setdefault(key, []).append(e.get("rank"))
    shared = {k: v for k, v in by_dev.items() if len(v) > 1}
    ndev = len(by_dev)
    if shared:
        (host, bus), ranks = next(iter(shared.items()))
        text = (f"ranks {','.join(map(str, ranks))} share GPU {bus} on {host} "
                f"({len(envs)} ranks on {ndev} device(s))")
        if not ctx["args"].allow_shared_device:
            return Result("FAIL", text + "; bind one GPU per rank (jobs/gpu_bind.sh) or "
                          "pass --allow-shared-device")
        return Result("WARN", text + " (allowed)")
    return Result("PASS", f"{len(envs)} rank(s) on {ndev} distinct device(s)")


# --------------------------------------------------------------------------- (b) exchange

def index_field(decomp):
    """Host padded array: ``1 + global linear index`` on owned cells, -1 in the ghosts."""
    import numpy as np
    out = np.full(decomp.padded_shape, -1.0)
    axes = [np.arange(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape)]
    lin = np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), decomp.global_shape)
    out[decomp.owned()] = 1.0 + lin
    return out


def expected_ghosts(decomp):
    """``[(axis, side, region, expected)]`` for every face ghost layer with a neighbour
    (values of :func:`index_field` of the neighbour's cells; periodic wrap included)."""
    import numpy as np
    from mpi4py import MPI
    out = []
    nd = decomp.ndim
    for axis in range(nd):
        lo_nb, hi_nb = decomp.neighbours(axis)
        for side, nb in ((0, lo_nb), (1, hi_nb)):
            if nb == MPI.PROC_NULL:
                continue
            region, axes = [], []
            for b in range(nd):
                n, off = decomp.local_shape[b], decomp.offset[b]
                if b == axis:
                    j = 0 if side == 0 else n + 1
                    region.append(slice(j, j + 1))
                    axes.append(np.array([(off + j - 1) % decomp.global_shape[b]]))
                else:
                    region.append(slice(1, n + 1))
                    axes.append(np.arange(off, off + n))
            lin = np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), decomp.global_shape)
            out.append((axis, side, tuple(region), 1.0 + lin))
    return out


def verify_ghosts(host, decomp, shift=0.0, corrupt=False, label=""):
    """``(checked, wrong, first_error)`` of the ghosts of ``host`` (a host copy after the
    exchange) against :func:`expected_ghosts` (+ ``shift``). ``corrupt``: change one received
    value first (fault injection)."""
    import numpy as np
    faces = expected_ghosts(decomp)
    if corrupt and faces:
        region = faces[-1][2]
        first = tuple(s.start for s in region)
        host[first] += 1.0
    checked = wrong = 0
    first_error = ""
    for axis, side, region, exp in faces:
        got = host[region]
        bad = got != (exp + shift).astype(host.dtype)
        checked += got.size
        n = int(np.count_nonzero(bad))
        if n and not first_error:
            k = tuple(int(v) for v in np.argwhere(bad)[0])
            cell = tuple(s.start + i for s, i in zip(region, k))
            first_error = (f"{label}{'xyz'[axis]} {'lower' if side == 0 else 'upper'} ghost "
                           f"{cell} = {got[k]:g}, expected {exp[k] + shift:g}")
        wrong += n
    return checked, wrong, first_error


@data_fault
def check_exchange(ctx, name, cuda_aware) -> Result:
    """Exchanges on non-periodic and periodic decompositions, 2D and 3D, float64 and
    float32 (``cuda_aware``: hand device buffers to MPI, else stage; host memory: direct)."""
    import numpy as np
    from ...parallel import Decomposition, HaloExchange
    comm, bk, sizes = ctx["comm"], ctx["backend"], ctx["sizes"]
    corrupt = ctx["runner"].fault_for(name) and comm.Get_rank() == comm.Get_size() - 1
    checked = wrong = messages = 0
    first = ""
    for shape in sizes.exch:
        for periodic in (False, True):
            d = Decomposition(shape, comm, periods=(periodic,) * len(shape))
            ref = index_field(d)
            for dtype in (np.float64, np.float32):
                halo = HaloExchange(d, bk, dtype, cuda_aware=cuda_aware)
                field = bk.upload(ref, dtype=dtype)
                halo.exchange(field)
                host = bk.to_host(field)
                messages += halo.messages
                label = (f"{len(shape)}D {'periodic ' if periodic else ''}"
                         f"{np.dtype(dtype).name}: ")
                c, w, f = verify_ghosts(host, d, corrupt=corrupt and not checked, label=label)
                checked, wrong = checked + c, wrong + w
                first = first or f
    data = {"checked": checked, "wrong": wrong, "messages": messages}
    if wrong:
        return Result("FAIL", f"{wrong} of {checked} ghost values wrong (first: {first})",
                      data)
    return Result("PASS", "", data)


def _exchange_summary(how):
    def merge(datas):
        c = sum(d.get("checked", 0) for d in datas)
        m = sum(d.get("messages", 0) for d in datas)
        return (f"{how}: {c} ghost values in {m} messages verified (2D+3D, periodic and not, "
                "float64+float32)")
    return merge


# --------------------------------------------------------------------------- (c) correctness

def _make(ndim):
    from ...model import problems
    return problems.geothermal2d if ndim == 2 else problems.geothermal3d


class Chain:
    """The forward -> gradient -> descent computation on one communicator."""

    def __init__(self, ndim, shape, comm, bk, overlap, smoothing_steps):
        from ...solvers import PTParams
        self.ndim, self.shape, self.comm, self.bk = ndim, shape, comm, bk
        self.overlap, self.smoothing_steps = overlap, smoothing_steps
        self.params = PTParams()

    def forward(self):
        from ...inverse import Observations
        from ...model.geothermal import workshop_points
        from ...io import gather_cells, gather_faces
        from ...solvers import DarcySolver
        true = _make(self.ndim)(self.shape, comm=self.comm)
        s = DarcySolver(true, self.bk, self.params, overlap=self.overlap)
        st = s.solve()
        d, th = s.decomp, self.bk.to_host
        out = {"Pf": gather_cells(d, st.Pf, th)}
        for a in range(self.ndim):
            out[f"q{'xyz'[a]}"] = gather_faces(d, st.q[a], a, th)
        self.obs = Observations(true.grid, workshop_points(self.ndim), demean=true.gauge_free)
        self.obs.record(st.Pf, self.bk)
        self.grid_dims = d.dims
        r = st.result
        return out, {"iterations": r.iterations, "residual": r.residual,
                     "converged": r.converged, "overlap": s.overlap}

    def gradient(self):
        from ...inverse import AdjointGradient
        from ...inverse.regularisation import GradientSmoother
        from ...io import gather_cells
        model = _make(self.ndim)(self.shape, comm=self.comm, k_background=1.0, k_barrier=1.0)
        self.G = AdjointGradient(model, self.obs, self.bk, self.params, self.params,
                                 overlap=self.overlap)
        self.S = GradientSmoother(model.grid, self.bk, self.smoothing_steps)
        J, g, info = self.G()
        gs = self.S.apply(g)
        d, th = model.grid.decomp, self.bk.to_host
        self.model = model
        return ({"J": J, "g": gather_cells(d, g, th), "g_smoothed": gather_cells(d, gs, th)},
                info)

    def descent(self, steps):
        import numpy as np
        from ...inverse.optimise import GradientDescent, OptimiserSettings
        from ...io import gather_cells
        opt = GradientDescent(self.G, self.S, OptimiserSettings(method="gd"))
        hist = [opt.start(np.zeros(self.model.grid.decomp.padded_shape))]
        for _ in range(steps):
            hist.append(opt.step())
        x = gather_cells(self.model.grid.decomp, opt.arrays["x"], self.bk.to_host)
        return {"misfit": [h["misfit"] for h in hist], "step": [h["step"] for h in hist],
                "logK": x}, hist


def _perturb(value):
    """One value of a result changed by one ulp-ish step (fault injection)."""
    import numpy as np
    if isinstance(value, list):
        v = list(value)
        v[-1] = float(np.nextafter(v[-1], math.inf))
        return v
    if isinstance(value, np.ndarray):
        v = value.copy()
        flat = v.reshape(-1)
        flat[flat.size // 2] = np.nextafter(flat[flat.size // 2], np.inf)
        return v
    return float(np.nextafter(value, math.inf))


def compare_exact(par: dict, ref: dict) -> list[str]:
    """Names (with the first differing index) of the entries of ``par`` not bitwise equal to
    ``ref``."""
    import numpy as np
    bad = []
    for k, a in par.items():
        b = ref[k]
        if isinstance(a, np.ndarray):
            if a.shape != b.shape or a.dtype != b.dtype:
                bad.append(f"{k} shape/dtype {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
                continue
            diff = a.view(np.uint8).reshape(a.shape + (-1,)) != \
                b.view(np.uint8).reshape(b.shape + (-1,))
            if diff.any():
                idx = tuple(int(i) for i in np.argwhere(diff.any(axis=-1))[0])
                n = int(np.count_nonzero(diff.any(axis=-1)))
                bad.append(f"{k}: {n} value(s) differ, first at {idx}: {a[idx].item()!r} vs "
                           f"{b[idx].item()!r}")
        elif isinstance(a, list):
            if len(a) != len(b) or any(np.float64(x).tobytes() != np.float64(y).tobytes()
                                       for x, y in zip(a, b)):
                i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                where = f" at {i}: {a[i]!r} vs {b[i]!r}" if i is not None else \
                    f" (lengths {len(a)} vs {len(b)})"
                bad.append(f"{k}{where}")
        elif np.float64(a).tobytes() != np.float64(b).tobytes():
            bad.append(f"{k}: {a!r} vs {b!r}")
    return bad


def _against_reference(ctx, name, par, ref_fn, describe) -> Result:
    """Rank 0: compare the gathered parallel result ``par`` with ``ref_fn()`` (COMM_SELF)."""
    comm = ctx["comm"]
    if comm.Get_rank() != 0:
        return Result()
    if ctx["runner"].fault_for(name):
        key = next(iter(par))
        par = dict(par, **{key: _perturb(par[key])})
    ref = ref_fn()
    bad = compare_exact(par, ref)
    if bad:
        return Result("FAIL", f"not bitwise equal to 1 rank: {'; '.join(bad)}")
    return describe()


@data_fault
def check_forward(ctx, ndim) -> Result:
    world, ref = ctx["chains"][ndim]
    par, info = world.forward()
    ctx["done"].add(("forward", ndim))
    name = f"forward-{ndim}d"
    dims = _fmt_shape(world.grid_dims)

    def ref_fn():
        out, rinfo = ref.forward()
        if rinfo["iterations"] != info["iterations"]:
            raise AssertionError(f"{info['iterations']} iterations on {comm_size(ctx)} ranks, "
                                 f"{rinfo['iterations']} on 1")
        return out

    def describe():
        status = "PASS" if info["converged"] else "WARN"
        conv = "" if info["converged"] else " NOT converged,"
        return Result(status, f"{_fmt_shape(world.shape)} on {dims} ranks (overlap "
                      f"{'on' if info['overlap'] else 'off'}): Pf, q bitwise = 1 rank;{conv} "
                      f"{info['iterations']} iterations, residual {info['residual']:.1e}")
    return _against_reference(ctx, name, par, ref_fn, describe)


def comm_size(ctx):
    return ctx["comm"].Get_size()


def _need(ctx, what, ndim):
    if (what, ndim) not in ctx["done"]:
        raise DependencyFailed(f"needs {what}-{ndim}d, which did not complete")


@data_fault
def check_gradient(ctx, ndim) -> Result:
    _need(ctx, "forward", ndim)
    world, ref = ctx["chains"][ndim]
    par, info = world.gradient()
    ctx["done"].add(("gradient", ndim))

    def describe():
        return Result("PASS", f"J = {par['J']:.6e}, dJ/dlogK and its smoothing "
                      f"({world.smoothing_steps} steps) bitwise = 1 rank; forward "
                      f"{info['forward_iterations']}, adjoint {info['adjoint_iterations']} "
                      "iterations")
    return _against_reference(ctx, f"gradient-{ndim}d", par, lambda: _ref_gradient(ref),
                              describe)


def _ref_gradient(ref):
    if not hasattr(ref, "obs"):
        ref.forward()
    return ref.gradient()[0]


@data_fault
def check_descent(ctx, ndim) -> Result:
    _need(ctx, "gradient", ndim)
    world, ref = ctx["chains"][ndim]
    steps = ctx["sizes"].gd_steps
    par, hist = world.descent(steps)

    def ref_fn():
        if not hasattr(ref, "G"):
            _ref_gradient(ref)
        return ref.descent(steps)[0]

    def describe():
        m = par["misfit"]
        rejected = sum(1 for h in hist if "rejected" in h.get("note", ""))
        note = f", {rejected} step(s) rejected" if rejected else ""
        return Result("PASS", f"{steps} steps: J/J0 = {m[-1] / m[0]:.4f}{note}; misfit "
                      "history and logK bitwise = 1 rank")
    return _against_reference(ctx, f"descent-{ndim}d", par, ref_fn, describe)


# --------------------------------------------------------------------------- (d) speed

def _time_loop(fn, n, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n


def _calibrate(fn, sync, target, comm) -> int:
    """Calls per sample so that a sample lasts about ``target`` seconds on the slowest rank
    (collective over ``comm``)."""
    from mpi4py import MPI
    t = comm.allreduce(_time_loop(fn, 2, sync), op=MPI.MAX)
    return max(3, min(100000, int(math.ceil(target / max(t, 1e-9)))))


def speed_block_shape(sizes, comm):
    from mpi4py import MPI
    block = sizes.speed_block
    dims = MPI.Compute_dims(comm.Get_size(), [0] * len(block))
    return tuple(b * p for b, p in zip(block, dims))


def check_speed(ctx) -> Result:
    import numpy as np
    from mpi4py import MPI
    from ...solvers import DarcySolver, PTParams
    comm, bk, sizes = ctx["comm"], ctx["backend"], ctx["sizes"]
    shape = speed_block_shape(sizes, comm)
    nd = len(shape)
    dtype = np.dtype(np.float64)
    params = PTParams(tol=1e-30, maxiter=10**9)
    s = DarcySolver(_make(nd)(shape, comm=comm), bk, params, overlap="auto", dtype=dtype)
    sync = bk.synchronize
    for _ in range(3):
        s.step(False)
    n = _calibrate(lambda: s.step(False), sync, sizes.sample_time, comm)
    samples = []
    for _ in range(3):
        _polite_wait(comm)
        samples.append(_time_loop(lambda: s.step(False), n, sync))
    t_iter = statistics.median(samples)
    t_halo = None
    if s.halo.active:
        _polite_wait(comm)
        t_halo = _time_loop(lambda: s.halo.exchange(s.Pf), n, sync)
    local = s.decomp.local_shape
    t_alone = t_iter
    if comm.Get_size() > 1:         # the same step on this rank's block alone (no messages)
        alone = DarcySolver(_make(nd)(local, comm=MPI.COMM_SELF), bk, params, overlap=False,
                            dtype=dtype)
        for _ in range(3):
            alone.step(False)
        _polite_wait(comm)
        t_alone = statistics.median(_time_loop(lambda: alone.step(False), n, sync)
                                    for _ in range(3))
    cells = int(np.prod(local))
    a_eff = (2 * (nd + 1) + 2) * cells * dtype.itemsize
    data = {"rank": comm.Get_rank(), "global_shape": list(shape), "local_shape": list(local),
            "overlap": bool(s.overlap), "iters_per_sample": n, "t_iter": t_iter,
            "t_alone": t_alone, "t_halo": t_halo, "T_eff_GBs": a_eff / t_iter / 1e9,
            "T_eff_alone_GBs": a_eff / t_alone / 1e9,
            "exchange_share": max(0.0, 1.0 - t_alone / t_iter) if comm.Get_size() > 1 else 0.0}
    return Result("PASS", "", data)


def speed_summary(datas) -> tuple[str, str]:
    """``(status, detail)`` from every rank's speed data."""
    t = [d["t_iter"] for d in datas]
    alone = [d["t_alone"] for d in datas]
    teff = [d["T_eff_GBs"] for d in datas]
    med = statistics.median(alone)
    slow = max(range(len(alone)), key=lambda r: alone[r])
    ratio = alone[slow] / med if med > 0 else 1.0
    d0 = datas[0]
    text = (f"{_fmt_shape(d0['global_shape'])} float64 (block {_fmt_shape(d0['local_shape'])}"
            f"/rank, overlap {'on' if d0['overlap'] else 'off'}): t_iter "
            f"{_fmt_time(statistics.median(t))}, T_eff {statistics.median(teff):.2f} GB/s/rank")
    if len(datas) > 1:
        share = statistics.median(d["exchange_share"] for d in datas)
        halo = [d["t_halo"] for d in datas if d["t_halo"] is not None]
        text += (f", exchange {100 * share:.0f}% of t_iter (halo.exchange alone "
                 f"{_fmt_time(statistics.median(halo)) if halo else '-'}), slowest rank {slow} "
                 f"({ratio:.1f}x median alone)")
    if len(datas) > 1 and ratio > 10:
        return "WARN", f"rank {slow} is {ratio:.0f}x slower than the median rank alone " \
                       f"(shared cores or device?); " + text
    return "PASS", text


# --------------------------------------------------------------------------- --full

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


def check_launch_cost(ctx) -> Result:
    import numpy as np
    from ...model import problems
    from ...physics.darcy import apt_step_kernel
    from ...solvers import DarcySolver, PTParams
    bk = ctx["backend"]
    s = DarcySolver(problems.periodic_block((8, 8)), bk, PTParams(tol=1e-12))
    k = bk.kernel(apt_step_kernel(2), 2, np.float64)
    bound = k.bind(Pf=s.Pf, q=s.q, Pf_new=s.Pf_new, q_new=s.q_new, K=s.K, Qf=s.Qf, R=s.R,
                   damp=s.damp, beta=s.beta, **s.geometry)
    box = ((1, 1), (2, 2))
    n = 200 if bk.describe().get("stream_check") else 2000
    samples = []
    for _ in range(3):
        bk.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            bk.launch(bound, box)
        samples.append((time.perf_counter() - t0) / n)
    bk.synchronize()
    return Result("PASS", "", {"us_per_launch": 1e6 * statistics.median(samples),
                               "us_per_launch_min": 1e6 * min(samples)})


def _launch_summary(datas):
    us = [d["us_per_launch"] for d in datas]
    return (f"host time per kernel launch {statistics.median(us):.1f} us (median over ranks; "
            f"max {max(us):.1f} us)")


COPY_KERNEL = None


def copy_kernel():
    global COPY_KERNEL
    if COPY_KERNEL is None:
        from ...backend.kernel import Kernel
        COPY_KERNEL = Kernel("selftest_copy", ("dst", "src"), (), "dst[idx] = src[idx];",
                             writes=("dst",), reach=0)
    return COPY_KERNEL


def check_teff(ctx) -> Result:
    """T_eff / T_copy per rank on its own device, cubes of ``sizes.teff_sizes``."""
    import numpy as np
    bk, sizes = ctx["backend"], ctx["sizes"]
    gpu = bk.name == "cupy"
    rows, skipped = [], []
    target = 0.2 if gpu else 0.05
    for n in sizes.teff_sizes:
        for dtype in (np.float32, np.float64):
            dt = np.dtype(dtype)
            try:
                rows.append(_teff_one(bk, (n, n, n), dt, target))
            except Exception as exc:
                if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower():
                    skipped.append(f"{n}^3 {dt.name}: out of device memory")
                    _free_pool(bk)
                else:
                    raise
            _free_pool(bk)
    return Result("PASS", "", {"rows": rows, "skipped": skipped, "gpu": gpu})


def _teff_one(bk, shape, dt, target):
    import numpy as np
    from mpi4py import MPI
    from ...solvers import DarcySolver, PTParams
    s = DarcySolver(_make(3)(shape, comm=MPI.COMM_SELF), bk, PTParams(tol=1e-30, maxiter=10**9),
                    overlap=False, dtype=dt)
    pshape = s.decomp.padded_shape
    src = bk.upload(np.ones(pshape), dtype=dt)
    dst = bk.zeros(pshape, dt)
    cb = bk.kernel(copy_kernel(), 3, dt).bind(dst=dst, src=src)
    box = ((1, 1, 1), tuple(m - 1 for m in pshape))
    sync = bk.synchronize
    step = lambda: s.step(False)           # noqa: E731
    copy = lambda: bk.launch(cb, box)      # noqa: E731
    for _ in range(3):
        step(), copy()
    n_step = _calibrate(step, sync, target, MPI.COMM_SELF)
    n_copy = _calibrate(copy, sync, target, MPI.COMM_SELF)
    ts = statistics.median(_time_loop(step, n_step, sync) for _ in range(3))
    tc = statistics.median(_time_loop(copy, n_copy, sync) for _ in range(3))
    cells = int(np.prod(shape))
    teff = (2 * 4 + 2) * cells * dt.itemsize / ts / 1e9
    tcopy = 2 * cells * dt.itemsize / tc / 1e9
    return {"size": list(shape), "dtype": dt.name, "t_iter": ts, "T_eff_GBs": teff,
            "T_copy_GBs": tcopy, "ratio": teff / tcopy}


def _free_pool(bk):
    if bk.name == "cupy":
        bk.synchronize()
        bk.xp.get_default_memory_pool().free_all_blocks()


def _teff_summary(datas):
    d0 = datas[0]
    parts = [f"{r['size'][0]}^3 f{r['dtype'][5:]}: {r['T_eff_GBs']:.1f}/{r['T_copy_GBs']:.1f} "
             f"GB/s = {100 * r['ratio']:.0f}%" for r in d0["rows"]]
    text = "T_eff/T_copy rank 0: " + ", ".join(parts)
    if d0["skipped"]:
        text += "; skipped " + ", ".join(d0["skipped"])
    if not d0["gpu"]:
        text += " (host: one small cube; the 64^3-512^3 series runs on GPUs)"
    return text


def check_pool_memory(ctx) -> Result:
    """Peak CuPy pool bytes of a gradient (forward + adjoint + smoothing), in full fields."""
    import numpy as np
    from mpi4py import MPI
    from ...inverse import AdjointGradient, Observations
    from ...model.geothermal import workshop_points
    from ...inverse.regularisation import GradientSmoother
    bk, sizes = ctx["backend"], ctx["sizes"]
    if bk.name != "cupy":
        return Result("SKIP", f"device-only (CuPy memory pool); backend {bk.name}")
    pool = bk.xp.get_default_memory_pool()
    _free_pool(bk)
    used0, total0 = pool.used_bytes(), pool.total_bytes()
    shape = sizes.pool_shape
    model = _make(3)(shape, comm=MPI.COMM_SELF, k_background=1.0, k_barrier=1.0)
    obs = Observations(model.grid, workshop_points(3), values=np.zeros(256),
                       demean=model.gauge_free)
    G = AdjointGradient(model, obs, bk)
    J, g, _ = G()
    GradientSmoother(model.grid, bk, ctx["sizes"].smoothing_steps).apply(g)
    bk.synchronize()
    field = int(np.prod(model.grid.decomp.padded_shape)) * 8
    peak = (pool.total_bytes() - total0) / field
    used = (pool.used_bytes() - used0) / field
    del G, g
    _free_pool(bk)
    return Result("PASS", f"gradient at {_fmt_shape(shape)} float64: pool peak {peak:.1f} "
                  f"full fields, {used:.1f} in use after", {"peak_fields": peak,
                                                            "used_fields": used})


# --------------------------------------------------------------------------- the run

def run(args) -> int:
    """``hpcinv selftest``: run the checks, print the table (or JSON) on rank 0; exit 0 if
    no check failed, else 1."""
    from mpi4py import MPI

    from ...backend import make_backend
    comm = MPI.COMM_WORLD
    t_start = time.perf_counter()
    bk = make_backend(args.backend, comm=comm)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)      # for the binding report (hosts, devices)
    hosts = comm.allgather(MPI.Get_processor_name())
    mode = "+".join(m for m, on in (("quick", args.quick), ("full", args.full)) if on) \
        or "default"
    sizes = Sizes(args.quick, bk.name == "cupy", comm.Get_size())
    runner = Runner(comm, os.environ.get(FAULT_ENV))
    ctx = {"comm": comm, "backend": bk, "node": node, "sizes": sizes, "args": args,
           "runner": runner, "nodes": len(set(hosts)), "done": set()}
    say = (lambda *a: print(*a, flush=True)) if comm.Get_rank() == 0 and not args.json \
        else (lambda *a: None)
    say(f"hpcinv selftest ({mode}): {comm.Get_size()} rank(s) on {len(set(hosts))} node(s), "
        f"backend {bk.name}")

    runner.run("environment", check_environment, ctx)
    envs = runner.per_rank["environment"]
    if comm.Get_rank() == 0 and not args.json:
        print_environment(envs)
    runner.run("device-binding", check_device_binding, ctx, envs)
    if bk.device_memory:
        runner.run("exchange-staged", check_exchange, ctx, "exchange-staged", False,
                   merge=_exchange_summary("staged via host buffers"))
        if bk.cuda_aware:
            runner.run("exchange-device", check_exchange, ctx, "exchange-device", True,
                       merge=_exchange_summary("device buffers to MPI"))
        else:
            runner.run("exchange-device", lambda: Result(
                "SKIP", f"MPI not CUDA-aware for this run ({bk.cuda_aware_reason})"))
    else:
        runner.run("exchange", check_exchange, ctx, "exchange", None,
                   merge=_exchange_summary("host memory straight to MPI"))

    overlap = "auto"
    ctx["chains"] = {len(s): (Chain(len(s), s, comm, bk, overlap, sizes.smoothing_steps),
                              Chain(len(s), s, MPI.COMM_SELF, bk, False,
                                    sizes.smoothing_steps))
                     for s in sizes.corr}
    for nd in (2, 3):
        runner.run(f"forward-{nd}d", check_forward, ctx, nd)
    for nd in (2, 3):
        runner.run(f"gradient-{nd}d", check_gradient, ctx, nd)
    for nd in (2, 3):
        runner.run(f"descent-{nd}d", check_descent, ctx, nd)
    del ctx["chains"]

    speed = runner.run("speed", check_speed, ctx)
    if speed["status"] == "PASS":
        status, detail = speed_summary(runner.per_rank["speed"])
        speed.update(status=status, detail=one_line(detail))
    if comm.Get_rank() == 0 and not args.json and speed["status"] in ("PASS", "WARN"):
        print_speed(runner.per_rank["speed"])

    if args.full:
        runner.run("halo-ordering", check_halo_ordering, ctx)
        runner.run("overlap-bitwise", check_overlap_bitwise, ctx)
        runner.run("launch-cost", check_launch_cost, ctx, merge=_launch_summary)
        runner.run("teff", check_teff, ctx, merge=_teff_summary)
        runner.run("pool-memory", check_pool_memory, ctx)

    ok = runner.ok()
    wall = time.perf_counter() - t_start
    if comm.Get_rank() == 0:
        if args.json:
            import json
            print(json.dumps(report(runner, envs, mode, bk, ok, wall), default=_jsonable),
                  flush=True)
        else:
            print_table(runner.rows, ok, wall)
    node.Free()
    return 0 if ok else 1


def _jsonable(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def report(runner, envs, mode, bk, ok, wall) -> dict:
    """The JSON object of ``--json``."""
    counts = {s: sum(1 for r in runner.rows if r["status"] == s) for s in STATUS_ORDER}
    return {"selftest": "PASS" if ok else "FAIL", "ok": ok, "mode": mode,
            "ranks": runner.size, "backend": bk.name, "wall_s": round(wall, 3),
            "counts": counts,
            "checks": [{**{k: r[k] for k in ("name", "status", "detail", "seconds")},
                        **({"data": r["data"]} if r["name"] not in ("environment", "speed")
                           and r["data"] else {})} for r in runner.rows],
            "environment": envs,
            "speed": runner.per_rank.get("speed"),
            "fault": runner.fault}


def print_environment(envs):
    e0 = envs[0]
    print(f"  MPI library    {e0.get('mpi_library', '?')}")
    if e0.get("device_memory"):
        aware = "device buffers to MPI" if e0.get("cuda_aware") else "staged via host"
        print(f"  halo buffers   {aware} ({e0.get('cuda_aware_reason', '?')})")
    else:
        print(f"  halo buffers   {e0.get('cuda_aware_reason', '?')}")
    print(f"  overlap=auto   {'on' if e0.get('overlap_auto') else 'off'} "
          f"({e0.get('overlap_reason', '?')})")
    env = f" (HPCINV_H5_MODE={e0['h5_mode_env']})" if e0.get("h5_mode_env") else ""
    print(f"  HDF5 output    mode {e0.get('h5_mode', '?')}{env}; h5py {e0.get('h5py', '?')}"
          f"{' with MPI' if e0.get('h5py_mpi') else ' (serial)'}")
    if e0.get("backend") == "cupy":
        print(f"  CUDA           cupy {e0.get('cupy')}, NVRTC {e0.get('nvrtc')}, runtime "
              f"{e0.get('cuda_runtime')}, driver {e0.get('cuda_driver')}")
    cols = [("rank", "rank"), ("host", "host"), ("node_rank", "local"), ("backend", "backend"),
            ("device", "device"), ("pci_bus_id", "pci bus id"), ("threads", "threads")]
    if e0.get("backend") != "cupy":
        cols = [c for c in cols if c[0] != "pci_bus_id"]
    _print_rows([[("-" if e.get(k) is None else str(e.get(k))) for k, _ in cols] for e in envs],
                [h for _, h in cols])


def print_speed(datas):
    rows = [[str(d["rank"]), _fmt_shape(d["local_shape"]), _fmt_time(d["t_iter"]),
             f"{d['T_eff_GBs']:.2f}", _fmt_time(d["t_alone"]), f"{d['T_eff_alone_GBs']:.2f}",
             f"{100 * d['exchange_share']:.0f}%", _fmt_time(d["t_halo"])] for d in datas]
    print("  speed (float64, one APT iteration):")
    _print_rows(rows, ["rank", "block", "t_iter", "T_eff GB/s", "alone", "T_eff alone",
                       "exchange", "halo.exchange"])


def _print_rows(rows, header, indent="  "):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    print(indent + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def print_table(rows, ok, wall):
    name_w = max(len(r["name"]) for r in rows)
    print()
    print(f"{'check'.ljust(name_w)}  result  time     detail")
    print(f"{'-' * name_w}  ------  -------  {'-' * 40}")
    for r in rows:
        print(f"{r['name'].ljust(name_w)}  {r['status'].ljust(6)}  "
              f"{(str(round(r['seconds'], 1)) + ' s').ljust(7)}  {r['detail']}")
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUS_ORDER}
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in ("PASS", "WARN", "SKIP", "FAIL")
                        if counts[s])
    failed = [r["name"] for r in rows if r["status"] == "FAIL"]
    print(f"\nselftest {'PASS' if ok else 'FAIL'}: {summary} in {wall:.1f} s"
          + (f"; failed: {', '.join(failed)} (see docs/troubleshooting.md)" if failed else ""))
