"""The device-work model every backend implements: named streams, events, one sync call.

All work on backend arrays (kernels, copies, fills, uploads, element-wise arithmetic,
reductions, downloads) is issued through a :class:`Backend` method on a named
:class:`Stream`:

==============  ==========================================================================
stream          what runs on it
==============  ==========================================================================
``compute``     everything by default: uploads, setters, solver steps without overlap,
                adjoint transposes, regularisation, optimiser arithmetic, reductions,
                downloads for output
``boundary``    overlapped step: the boundary shell (one launch), the halo pack (one launch),
                staging copies, the unpack (one launch); high priority on GPUs
``interior``    overlapped step: the interior box (one launch)
==============  ==========================================================================

Within a stream, work runs in issue order. Across streams nothing is ordered unless an event
says so: ``ev = bk.record(producer)`` then ``bk.wait(consumer, ev)``. The host sees device data
only through a synchronising call (``to_host``, ``gather``, ``max_abs``, ``dot``, ``sum``,
``sync``, ``synchronize``), and MPI touches a buffer only after the host synchronised the stream
that produced it (``host_access`` tells the stream checker when MPI reads or writes one).

Backends count what they issue (:attr:`Backend.counters`): ``kernels`` (compiled-kernel
launches), ``copies`` (copies, uploads, fills), ``maps`` (element-wise arithmetic),
``reductions``, ``syncs`` (host waits, all counted by :meth:`Backend.count_sync`) and ``plans``
(launch plans made: a new binding's first launch over a box list; on GPUs the first plan of a
kernel over a box list uploads its geometry, one host sync).

Backends count the memory they allocate (:attr:`Backend.memory`, a
:class:`~hpcinv.backend.memory_count.MemoryCounter`): bytes held and the high-water mark, by
kind (device arrays, pinned buffers, temporaries of one call); frees are counted when Python
frees an array's memory.
"""
from __future__ import annotations

import numpy as np

from .kernel import Kernel
from .memory_count import MemoryCounter
from .scratch import ScratchPool

STREAMS = ("compute", "boundary", "interior")

#: Counters every backend keeps (see :attr:`Backend.counters`).
COUNTERS = ("kernels", "copies", "maps", "reductions", "syncs", "plans")


class Stream:
    """A named in-order queue of device work (see the backend for its implementation)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"<stream {self.name}>"


class Backend:
    """Common interface of :class:`~hpcinv.backend.HostBackend` and ``CupyBackend``.

    Subclasses implement :meth:`_issue` (run or enqueue ``fn`` on a stream), :meth:`record`,
    :meth:`wait`, :meth:`_sync` and :meth:`_compile`; everything else is written once here in
    terms of those and of :attr:`xp` (the array module).
    """

    name = "?"
    xp = np
    #: True where MPI cannot read backend arrays directly (GPU memory without CUDA-aware MPI).
    device_memory = False
    #: The run's one CUDA-aware-MPI decision and why: True for host memory; for device
    #: memory ``None`` until :func:`hpcinv.parallel.decide_cuda_aware` decides.
    cuda_aware = True
    cuda_aware_reason = "host memory: MPI reads the arrays directly"
    #: This rank's place on its node (set by ``make_backend``).
    local_rank = 0
    local_size = 1
    #: Why ``make_backend("auto")`` did not pick the GPU (``""``: nothing fell back), and
    #: whether that deserves a warning (a GPU is there but CuPy cannot use it).
    fallback_reason = ""
    fallback_warning = False

    def free_memory(self) -> int | None:
        """Bytes free on this rank's device (``None``: arrays in host memory, or unknown)."""
        return None

    def ranks_per_device(self) -> int:
        """Ranks of this node sharing this rank's device (1 for host memory)."""
        return 1

    def __init__(self):
        self._kernels = {}
        self.streams = {n: self._make_stream(n) for n in STREAMS}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.memory = MemoryCounter()
        self.scratch_pools = {}       # (shape, dtype) -> ScratchPool (:meth:`scratch`)

    # --- streams and events -----------------------------------------------------------------
    def _make_stream(self, name: str) -> Stream:
        return Stream(name)

    @property
    def compute(self) -> Stream:
        return self.streams["compute"]

    def stream(self, name: str) -> Stream:
        return self.streams[name]

    def _s(self, stream) -> Stream:
        return self.compute if stream is None else stream

    def new_event(self):
        """A reusable event for :meth:`record` (``None`` where the backend makes its own per
        record: the host backends). On GPUs a CUDA event without timing data."""
        return None

    def record(self, stream, event=None):
        """An event marking the work issued on ``stream`` so far: ``event`` (one of
        :meth:`new_event`'s, re-recorded: a ``wait`` issued earlier keeps the position it was
        issued for, as CUDA's ``cudaStreamWaitEvent`` does) or a new one."""
        raise NotImplementedError

    def wait(self, stream, event):
        """Work issued on ``stream`` after this call starts after ``event``'s work is done."""
        raise NotImplementedError

    def count_sync(self):
        """Count one host sync: every host wait goes through here (:meth:`sync`,
        :meth:`synchronize`, the reads, and the GPU kernels' launch-geometry uploads)."""
        self.counters["syncs"] += 1

    def sync(self, stream=None):
        """The host waits until ``stream``'s work is done (a host sync)."""
        self.count_sync()
        self._sync(self._s(stream))

    def synchronize(self):
        """The host waits for every stream (a host sync)."""
        self.count_sync()
        for s in self.streams.values():
            self._sync(s)

    def _sync(self, stream):
        raise NotImplementedError

    def _issue(self, stream, fn, reads=(), writes=(), kind="copies", what=""):
        """Run or enqueue ``fn()`` on ``stream``; ``reads``/``writes`` are ``(array,
        footprint)`` pairs (footprint ``None``: whole array; a tuple of slices; or a list of
        ``(lo, hi)`` boxes) that the stream checker tracks."""
        raise NotImplementedError

    def host_access(self, array, write: bool, what: str):
        """The host (MPI) reads or writes ``array`` now; the stream checker verifies that no
        unsynchronised device work touches it. No-op elsewhere."""

    def reset_counters(self) -> dict:
        """The counters so far, then zero them."""
        out = dict(self.counters)
        self.counters = dict.fromkeys(COUNTERS, 0)
        return out

    # --- kernels ----------------------------------------------------------------------------
    def kernel(self, kernel: Kernel, ndim: int, dtype):
        """The compiled kernel (compiled on first use, then cached in memory and on disk);
        bind its arguments by name with ``.bind(...)`` and launch with :meth:`launch`."""
        key = (kernel, ndim, np.dtype(dtype).str)
        if key not in self._kernels:
            self._kernels[key] = self._compile(kernel, ndim, dtype)
        return self._kernels[key]

    def _compile(self, kernel, ndim, dtype):
        raise NotImplementedError

    def launch(self, bound, boxes, stream=None):
        """Launch a bound kernel over one box ``(lo, hi)`` or a list of boxes, in one launch."""
        plan = bound.cached_plan(boxes)
        if plan is None:
            self.counters["plans"] += 1
            plan = bound.plan(boxes)
        if plan.cells == 0:
            return
        self.counters["kernels"] += 1
        self._issue(self._s(stream), plan.run, plan.reads, plan.writes, "kernels",
                    bound.kernel.name)

    # --- allocation and copies --------------------------------------------------------------
    def empty(self, shape, dtype):
        """An uninitialised backend array (no device work), counted in :attr:`memory`."""
        return self.memory.track(self._empty(shape, dtype), "arrays")

    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def scratch(self, shape, dtype, n: int):
        """``with backend.scratch(shape, dtype, n) as fields:`` ``n`` fields lent for the
        block from the backend's shared pool (contents undefined; :mod:`.scratch`)."""
        key = (tuple(int(k) for k in shape), np.dtype(dtype).str)
        if key not in self.scratch_pools:
            self.scratch_pools[key] = ScratchPool(self, shape, dtype)
        return self.scratch_pools[key].borrow(n)

    def release_scratch(self):
        """Drop the scratch pools that lend nothing now (their fields go when nothing else
        holds them), e.g. a coarse level's once the next level starts."""
        self.scratch_pools = {k: p for k, p in self.scratch_pools.items() if p.lent}

    def pinned(self, shape, dtype):
        """A host buffer for staging device data to MPI (page-locked on GPUs), counted in
        :attr:`memory`."""
        return self.memory.track(self._pinned(shape, dtype), "pinned")

    def _pinned(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype, stream=None):
        a = self.empty(shape, dtype)
        self.fill(a, 0, stream=stream)
        return a

    def upload(self, host, dtype=None, stream=None):
        """A new backend array holding a copy of the host (or backend) array ``host``."""
        src = host if self._is_device(host) else np.array(host, dtype=dtype, order="C")
        out = self.empty(src.shape, dtype if dtype is not None else src.dtype)
        self.copy(out, src, stream=stream)
        return out

    asarray = upload

    def clone(self, a, stream=None):
        """A new backend array equal to ``a``."""
        out = self.empty(a.shape, a.dtype)
        self.copy(out, a, stream=stream)
        return out

    def _is_device(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def copy(self, dst, src, region=None, src_region=None, stream=None, snapshot=True):
        """``dst[region] = src[src_region]`` (``src``: backend array or host array). Host
        data are read when the call is made, as CUDA does for pageable memory, unless
        ``snapshot=False`` (a :meth:`pinned` buffer, read when the copy runs)."""
        region = _region(region, dst.ndim)
        src_region = region if src_region is None else _region(src_region, src.ndim)
        if not self._is_device(src) and snapshot:
            src = np.array(src, dtype=dst.dtype, order="C")        # snapshot now
            reads = []
        else:
            reads = [(src, src_region)]
        self.counters["copies"] += 1
        self._issue(self._s(stream), lambda: self._copy(dst, region, src, src_region), reads,
                    [(dst, region)], "copies", "copy")

    def _copy(self, dst, region, src, src_region):
        self.xp.copyto(dst[region], self.xp.asarray(src[src_region]), casting="unsafe")

    def fill(self, dst, value, region=None, stream=None):
        """``dst[region] = value``."""
        region = _region(region, dst.ndim)
        value = float(value)
        self.counters["copies"] += 1

        def run():
            dst[region] = value
        self._issue(self._s(stream), run, [], [(dst, region)], "copies", "fill")

    def elementwise(self, fn, *inputs, out=None, stream=None):
        """``out[...] = fn(xp, *inputs)`` on a stream (``out``: new array shaped like the first
        input when ``None``; it may be one of the inputs). Returns ``out``."""
        if out is None:
            out = self.empty(inputs[0].shape, inputs[0].dtype)
        xp = self.xp
        self.counters["maps"] += 1

        def run():
            value = fn(xp, *inputs)
            if isinstance(value, xp.ndarray) and getattr(value, "base", None) is None:  # new
                self.memory.transient(value.nbytes)
            out[...] = value
        self._issue(self._s(stream), run, [(a, None) for a in inputs], [(out, None)], "maps",
                    getattr(fn, "__name__", "elementwise"))
        return out

    # --- host reads (each a host sync) -------------------------------------------------------
    def _read(self, fn, reads, stream, what):
        """Run ``fn() -> host value`` on ``stream`` and wait for it (one host sync)."""
        box = []
        self.counters["reductions"] += 1

        def run():
            box.append(fn())
        s = self._s(stream)
        self._issue(s, run, reads, [], "reductions", what)
        self.count_sync()
        self._sync(s)
        return box[0]

    def to_host(self, a, region=None, stream=None) -> np.ndarray:
        """A NumPy copy of ``a[region]`` (waits for the stream)."""
        region = _region(region, a.ndim)
        return self._read(lambda: self._download(a[region]), [(a, region)], stream, "to_host")

    def _download(self, a) -> np.ndarray:
        return np.array(a)

    def gather(self, a, index, stream=None) -> np.ndarray:
        """``a[index]`` (``index``: tuple of host integer arrays) as a NumPy array."""
        index = tuple(np.asarray(i, dtype=np.int64) for i in index)
        xp = self.xp

        def run():
            return self._download(a[tuple(xp.asarray(i) for i in index)])
        return self._read(run, [(a, None)], stream, "gather")

    def max_abs(self, a, region=None, stream=None) -> float:
        """Local max-norm of ``a[region]`` as a float (0 for an empty region)."""
        region = _region(region, a.ndim)

        return self._read(lambda: self._max_abs(a[region]), [(a, region)], stream, "max_abs")

    def _max_abs(self, v) -> float:
        """``max |v|`` of a view (runs on the stream); here with an ``abs(v)`` temporary."""
        xp = self.xp
        self.memory.transient(v.nbytes)                         # abs(v)
        return float(xp.max(xp.abs(v))) if v.size else 0.0

    def dot(self, a, b, region=None, stream=None) -> float:
        """Local ``sum(a[region] * b[region])`` as a float."""
        region = _region(region, a.ndim)
        return self._read(lambda: self._dot(a[region], b[region]), [(a, region), (b, region)],
                          stream, "dot")

    def _dot(self, x, y) -> float:
        """``sum(x * y)`` of two views (runs on the stream); here with a product temporary."""
        self.memory.transient(x.nbytes)                         # the product
        return float(self.xp.sum(x * y))

    def sum(self, a, region=None, stream=None) -> float:
        """Local ``sum(a[region])`` as a float."""
        region = _region(region, a.ndim)
        xp = self.xp
        return self._read(lambda: float(xp.sum(a[region])), [(a, region)], stream, "sum")

    # --- overlap policy and description -----------------------------------------------------
    def overlap_pays(self, ranks_on_node: int = 1) -> tuple[bool, str]:
        """Whether ``overlap = "auto"`` hides the halo exchange, and why."""
        return True, "GPU: interior on its own stream"

    def describe(self) -> dict:
        return {"backend": self.name}


def _region(region, ndim):
    """A full tuple of slices/ints for ``region`` (``None``: everything)."""
    if region is None:
        return (slice(None),) * ndim
    return tuple(region) if isinstance(region, tuple) else (region,)
