"""Compute backends: array allocation, kernel compilation and asynchronous execution.

``make_backend("auto" | "host" | "cupy")`` returns a :class:`Backend`. ``auto`` picks CuPy when
it imports and sees a GPU, else the host (C++/OpenMP) backend. Physics code allocates arrays and
compiles kernels only through the backend, so the same code runs on both.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import BackendError
from .kernel import Kernel

BACKENDS = ("auto", "host", "cupy")


class Backend:
    """Common interface; see :class:`HostBackend` and :class:`CupyBackend`."""

    name = "?"
    xp = np

    def __init__(self):
        self._kernels = {}

    def kernel(self, kernel: Kernel, ndim: int, dtype):
        """The compiled kernel (compiled on first use, then cached in memory and on disk)."""
        key = (kernel, ndim, np.dtype(dtype).str)
        if key not in self._kernels:
            self._kernels[key] = self._compile(kernel, ndim, dtype)
        return self._kernels[key]

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, a, dtype=None):
        """A C-contiguous *copy* of ``a`` on the backend (never a view of the caller's array)."""
        return self.xp.array(a, dtype=dtype, order="C", copy=True)

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def max_abs(self, a) -> float:
        """Local max-norm of an array as a Python float (a device->host sync on GPUs)."""
        return float(self.xp.max(self.xp.abs(a))) if a.size else 0.0

    def synchronize(self):
        pass

    # --- overlap support ------------------------------------------------------------------
    def boundary(self):
        """Context in which boundary-strip kernels are launched (a high-priority stream)."""
        return _NullContext()

    def sync_boundary(self):
        """Wait for the boundary kernels: must precede every MPI send of their results."""

    def start_interior(self, fn):
        """Run ``fn()`` (interior kernels) concurrently; returns an object with ``wait()``."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name}


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Done:
    def wait(self):
        pass


class HostBackend(Backend):
    """numpy arrays; kernels compiled by the host C++ compiler with OpenMP."""

    name = "host"
    xp = np

    def __init__(self, threads: int | None = None, local_size: int = 1):
        super().__init__()
        from .host import find_compiler
        find_compiler()   # fail early with a clear message
        if threads is None:
            env = os.environ.get("HPCINV_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
            if env:
                threads = int(env)
            else:
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                    else (os.cpu_count() or 1)
                threads = max(1, cores // max(1, local_size))
        if threads < 1:
            raise BackendError(f"thread count must be >= 1, got {threads}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        if threads * max(1, local_size) > cores:
            # Oversubscribed: spinning OpenMP threads steal the cores other ranks need.
            # (Read by libgomp when it loads, i.e. before the first kernel library.)
            os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        self.threads = threads
        self._pool = None

    def _compile(self, kernel, ndim, dtype):
        from .host import HostKernel
        return HostKernel(kernel, ndim, dtype, self.threads)

    def start_interior(self, fn):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpcinv-interior")
        fut = self._pool.submit(fn)   # ctypes releases the GIL inside the kernel
        fut.wait = fut.result
        return fut

    def describe(self):
        return {"backend": "host", "device": cpu_model(), "threads": self.threads}


class CupyBackend(Backend):
    """CuPy arrays on one GPU (chosen from the node-local rank); ElementwiseKernels."""

    name = "cupy"

    def __init__(self, local_rank: int = 0):
        super().__init__()
        from .cuda import import_cupy
        cp = import_cupy()
        self.xp = cp
        ndev = cp.cuda.runtime.getDeviceCount()
        self.device_id = local_rank % ndev
        cp.cuda.Device(self.device_id).use()
        lo, hi = cp.cuda.runtime.deviceGetStreamPriorityRange()
        self._boundary_stream = cp.cuda.Stream(non_blocking=True, priority=hi)
        self._interior_stream = cp.cuda.Stream(non_blocking=True, priority=lo)

    def _compile(self, kernel, ndim, dtype):
        from .cuda import CudaKernel
        return CudaKernel(kernel, ndim, dtype)

    def to_host(self, a):
        return self.xp.asnumpy(a)

    def synchronize(self):
        self.xp.cuda.Device().synchronize()

    def boundary(self):
        return self._boundary_stream

    def sync_boundary(self):
        self._boundary_stream.synchronize()

    def start_interior(self, fn):
        with self._interior_stream:
            fn()
        stream = self._interior_stream

        class _Wait:
            def wait(self_inner):
                stream.synchronize()
        return _Wait()

    def describe(self):
        cp = self.xp
        props = cp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        return {"backend": "cupy", "device": name.decode() if isinstance(name, bytes) else name,
                "device_id": self.device_id, "cupy": cp.__version__}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the machine type."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        from .cuda import import_cupy
        import_cupy()
        return True
    except BackendError:
        return False


def make_backend(name: str = "auto", *, local_rank: int = 0, local_size: int = 1,
                 threads: int | None = None) -> Backend:
    """Backend by name: ``auto`` (GPU if CuPy finds one, else host), ``host`` or ``cupy``."""
    if name not in BACKENDS:
        import difflib
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BackendError(f"unknown backend {name!r}{hint}; choose one of {', '.join(BACKENDS)}")
    if name == "cupy" or (name == "auto" and cupy_available()):
        return CupyBackend(local_rank=local_rank)
    return HostBackend(threads=threads, local_size=local_size)
