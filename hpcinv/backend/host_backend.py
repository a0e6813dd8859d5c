"""The host backend: NumPy arrays, kernels compiled by the C++ compiler with OpenMP.

Streams on the host: ``compute`` and ``boundary`` run their work at once, in the calling
thread, which is CUDA's order for them (in order, and before anything the host does next);
``interior`` is a worker thread with a FIFO queue, so the interior update of an overlapped step
runs while the main thread drives MPI (ctypes releases the GIL inside a kernel). Events
recorded on the worker are futures; waiting for one from an immediate stream blocks the caller.

``HPCINV_STREAM_CHECK=1`` replaces all of this by :class:`~hpcinv.backend.checker.CheckedHostBackend`,
which runs every stream asynchronously and verifies the ordering.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ..errors import BackendError
from . import host_reduce
from .base import Backend, Stream


class _Done:
    """An event whose work is complete."""

    def done(self) -> bool:
        return True

    def wait_host(self):
        pass


DONE = _Done()


class WorkerStream(Stream):
    """A stream whose work runs in order on one worker thread."""

    def __init__(self, name: str):
        super().__init__(name)
        self._pool = None
        self._error = None

    def submit(self, fn):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hpcinv-{self.name}")

        def run():
            if self._error is None:
                try:
                    fn()
                except BaseException as exc:   # surfaced at the next sync
                    self._error = exc
        return self._pool.submit(run)

    def record(self):
        if self._pool is None:
            return DONE
        fut = self.submit(lambda: None)
        fut.wait_host = fut.result
        return fut

    def raise_error(self):
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc


def host_threads(threads: int | None, local_size: int) -> int:
    """OpenMP threads per rank: ``threads``, else ``HPCINV_NUM_THREADS``, ``OMP_NUM_THREADS``
    (first level of a nested list), else usable cores / ranks on this node."""
    source = "thread count"
    if threads is None:
        for var in ("HPCINV_NUM_THREADS", "OMP_NUM_THREADS"):
            env = os.environ.get(var, "").strip()
            if env:
                try:
                    threads = int(env.split(",")[0])
                except ValueError:
                    raise BackendError(f"{var} must be a positive integer, got {env!r}") from None
                source = var
                break
        else:
            threads = max(1, usable_cores() // max(1, local_size))
    if threads < 1:
        raise BackendError(f"{source} must be >= 1, got {threads}")
    return threads


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)


class HostBackend(Backend):
    """NumPy arrays; kernels compiled by the host C++ compiler with OpenMP."""

    name = "host"

    def __init__(self, threads: int | None = None, local_size: int = 1):
        from .host_compile import find_compiler
        find_compiler()   # fail early with a clear message
        self.threads = host_threads(threads, local_size)
        self.local_size = max(1, local_size)
        # Idle OpenMP threads sleep instead of spinning unless the user chose otherwise: spinning
        # threads steal the cores of other ranks and processes (3x slower under load), while
        # sleeping costs little on an idle machine (docs/performance.md, "OpenMP wait policy").
        # Read by libgomp when it loads, i.e. before the first kernel library: here.
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        super().__init__()

    def _make_stream(self, name):
        return WorkerStream(name) if name == "interior" else Stream(name)

    def _compile(self, kernel, ndim, dtype):
        from .host_compile import HostKernel
        return HostKernel(kernel, ndim, dtype, self.threads)

    def _issue(self, stream, fn, reads=(), writes=(), kind="copies", what=""):
        if isinstance(stream, WorkerStream):
            stream.submit(fn)
        else:
            fn()

    def record(self, stream, event=None):
        return stream.record() if isinstance(stream, WorkerStream) else DONE

    def wait(self, stream, event):
        if event.done():
            return
        if isinstance(stream, WorkerStream):
            stream.submit(event.wait_host)
        else:
            event.wait_host()                 # an immediate stream: its next work is now

    def _sync(self, stream):
        if isinstance(stream, WorkerStream):
            stream.record().wait_host()
            stream.raise_error()

    def _max_abs(self, v) -> float:
        """``max |v|`` in leaves of a small buffer: no temporary the size of ``v``, result
        bitwise NumPy's (:mod:`hpcinv.backend.host_reduce`)."""
        self.memory.transient(host_reduce.temporary_bytes(v))
        return host_reduce.max_abs(v)

    def _dot(self, x, y) -> float:
        """``sum(x * y)`` in leaves of a small buffer, bitwise NumPy's summation."""
        self.memory.transient(host_reduce.temporary_bytes(x, y))
        return host_reduce.dot(x, y)

    def overlap_pays(self, ranks_on_node: int = 1) -> tuple[bool, str]:
        spare = usable_cores() - self.threads * max(1, ranks_on_node)
        if spare >= max(1, ranks_on_node):
            return True, f"a spare core per rank ({usable_cores()} cores, {ranks_on_node} " \
                         f"rank(s) x {self.threads} thread(s))"
        return False, f"no spare core per rank ({usable_cores()} cores, {ranks_on_node} " \
                      f"rank(s) x {self.threads} thread(s)): the interior thread would compete"

    def describe(self):
        return {"backend": "host", "device": cpu_model(), "threads": self.threads}


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
