"""The CuPy backend: device arrays on one GPU per rank, ElementwiseKernels, CUDA streams.

The three streams of :mod:`hpcinv.backend.base` are non-blocking CUDA streams (``boundary`` at
the highest priority), and ``compute`` is made the thread's current stream, so that nothing of
hpcinv's lands on the legacy default stream, which does not order with non-blocking streams.
Every operation is issued inside ``with stream:`` of its named stream; cross-stream
dependencies are CUDA events; host reads synchronise the stream they were issued on.
"""
from __future__ import annotations

import numpy as np

from .base import Backend, Stream


class CudaStream(Stream):
    def __init__(self, name, cp_stream):
        super().__init__(name)
        self.cp = cp_stream


class CupyBackend(Backend):
    """CuPy arrays on one GPU (chosen from the node-local rank); ElementwiseKernels."""

    name = "cupy"
    device_memory = True

    def __init__(self, local_rank: int = 0):
        from .cuda_compile import check_cupy_usable, import_cupy
        cp = import_cupy()
        self.xp = cp
        self.devices = ndev = cp.cuda.runtime.getDeviceCount()
        self.device_id = local_rank % ndev
        cp.cuda.Device(self.device_id).use()
        check_cupy_usable(self.device_id)   # NVRTC there, a kernel compiles and runs: else
        # one line naming the fix here, not a traceback at the first kernel of the run
        super().__init__()
        self.compute.cp.use()       # stray work goes to compute, never to the legacy stream
        cp.zeros(1)                 # initialise CUDA here (Open MPI 5's CUDA-aware query needs it)

    def free_memory(self) -> int | None:
        return int(self.xp.cuda.runtime.memGetInfo()[0])

    #: Ranks of this node on this rank's GPU, counted by PCI bus id over the node's ranks
    #: (:func:`~hpcinv.backend.device_sharing.ranks_sharing`, by ``make_backend`` given a
    #: communicator); None: not counted.
    device_sharing = None

    def pci_bus_id(self) -> str | None:
        """This rank's GPU as the node knows it (``"0000:3B:00.0"``), whatever
        ``CUDA_VISIBLE_DEVICES`` shows the rank; None where CUDA cannot say."""
        try:
            return str(self.xp.cuda.Device(self.device_id).pci_bus_id)
        except Exception:       # noqa: BLE001 - a CUDA error: the caller counts this rank alone
            return None

    def ranks_per_device(self) -> int:
        """Node-local ranks on this rank's GPU: ``device_sharing`` (counted by PCI bus id,
        right under ``jobs/gpu_bind.sh``, which shows each rank one GPU), else the ranks that
        pick this device round-robin (``local_rank mod devices``: right only where every rank
        sees all of the node's GPUs)."""
        if self.device_sharing is not None:
            return self.device_sharing
        return len(range(self.device_id, max(self.local_size, 1), self.devices)) or 1

    #: Requested stream priorities: CUDA clamps a priority outside the device's range to the
    #: range's end (CuPy 14 has no ``deviceGetStreamPriorityRange``), so ``boundary`` gets the
    #: device's highest priority (lower is higher) and the others the default, 0 (the lowest).
    PRIORITY = {"boundary": -(1 << 20)}

    def _make_stream(self, name):
        cp = self.xp
        prio = self.PRIORITY.get(name, 0)
        return CudaStream(name, cp.cuda.Stream(non_blocking=True, priority=prio))

    def _compile(self, kernel, ndim, dtype):
        from .cuda_compile import CudaKernel
        return CudaKernel(kernel, ndim, dtype, count_sync=self.count_sync)

    def _issue(self, stream, fn, reads=(), writes=(), kind="copies", what=""):
        with stream.cp:
            fn()

    def new_event(self):
        return self.xp.cuda.Event(disable_timing=True)     # no timestamps: cheaper

    def record(self, stream, event=None):
        return stream.cp.record(self.new_event() if event is None else event)

    def wait(self, stream, event):
        stream.cp.wait_event(event)

    def _sync(self, stream):
        stream.cp.synchronize()

    def _pinned(self, shape, dtype):
        import cupyx
        return cupyx.empty_pinned(shape, dtype=dtype)

    def _copy(self, dst, region, src, src_region):
        cp = self.xp
        s = src[src_region]
        if isinstance(s, np.ndarray):
            # host -> device: pinned staging buffers copy asynchronously on this stream
            dst[region].set(np.ascontiguousarray(s), stream=cp.cuda.get_current_stream()) \
                if dst[region].flags.c_contiguous else cp.copyto(dst[region], cp.asarray(s))
        elif isinstance(dst, np.ndarray):
            s.get(out=dst[region], stream=cp.cuda.get_current_stream(), blocking=False)
        else:
            cp.copyto(dst[region], s, casting="unsafe")

    def _is_device(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def _download(self, a):
        return self.xp.asnumpy(a, stream=self.xp.cuda.get_current_stream())

    def describe(self):
        cp = self.xp
        props = cp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        return {"backend": "cupy", "device": name.decode() if isinstance(name, bytes) else name,
                "device_id": self.device_id, "cupy": cp.__version__}
