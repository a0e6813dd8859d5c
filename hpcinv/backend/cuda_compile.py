"""CuPy backend: the kernel text as a ``cupy.ElementwiseKernel`` over a flat launch index.

:func:`elementwise_parts` builds the (``in_params``, ``out_params``, ``operation``,
``preamble``) handed to CuPy; it needs no CuPy, so the test suite also compiles exactly this
text with ``nvcc`` on machines without a GPU (see ``tests/test_nvcc.py`` and
:mod:`hpcinv.backend.nvcc_check`).

Every array is passed as a flat 1-D view (``raw``), so ``A[idx]`` is a plain pointer offset.
The arrays a kernel writes (``Kernel.writes``) are CuPy *out_params*; the others are raw
*in_params*, which CuPy declares ``const`` (``const CArray<...>``, whose ``operator[]`` yields a
``const T&``), so a body that writes an array it did not declare does not compile. The launch
geometry is a raw ``int64`` array of boxes (see :func:`~hpcinv.backend.kernel.launch_geometry`)
uploaded once per binding; the flat launch index ``i`` runs over the boxes one after the other.
The call order is ``(*scalars, *ints, boxes, nbox, Ny, Nz, *read arrays, *written arrays)``.

CuPy's ``cupy/complex.cuh``, included in every kernel, has ``using thrust::real;`` at global
scope, so ``typedef double real;`` does not compile there: the CUDA preamble first defines
``real`` as a macro for ``hpcinv_real`` (kernel bodies must not call a function ``real()``).

Kernels compile with ``-fmad=false``: no fused multiply-add contraction, so a face value
computed by either neighbouring rank is bitwise identical (decomposition invariance).
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import BackendError, GpuUnusableError
from .binding import CompiledKernel
from .kernel import BOX_INTS, Kernel, header, launch_geometry

NVRTC_OPTIONS = ("-fmad=false",)

#: Finds the box of CuPy's flat index ``i`` and unravels it into padded-array indices. The
#: division and modulo run in ``hpcinv_uidx``: ``unsigned int`` where the launch's arrays have
#: fewer than 2**31 cells (:func:`index32`; GPUs emulate 64-bit division in software, some 20
#: instructions more per cell), else ``ptrdiff_t``. Both give the same indices.
_PRELUDE = r"""
const ptrdiff_t sz = 1, sy = Nz, sx = (ptrdiff_t)Ny * Nz;
ptrdiff_t ib = 0;
while (ib + 1 < hpcinv_nbox && (ptrdiff_t)i >= (ptrdiff_t)hpcinv_boxes[7 * (ib + 1) + 6]) ++ib;
const ptrdiff_t ox = hpcinv_boxes[7 * ib], oy = hpcinv_boxes[7 * ib + 1];
const ptrdiff_t oz = hpcinv_boxes[7 * ib + 2];
const ptrdiff_t ey = hpcinv_boxes[7 * ib + 4], ez = hpcinv_boxes[7 * ib + 5];
const ptrdiff_t i_all = (ptrdiff_t)i;
const hpcinv_uidx _l = (hpcinv_uidx)(i_all - (ptrdiff_t)hpcinv_boxes[7 * ib + 6]);
#if NDIM == 3
const ptrdiff_t iz = oz + (ptrdiff_t)(_l % (hpcinv_uidx)ez);
const hpcinv_uidx _t = _l / (hpcinv_uidx)ez;
#else
const ptrdiff_t iz = 0;
const hpcinv_uidx _t = _l;
#endif
const ptrdiff_t iy = oy + (ptrdiff_t)(_t % (hpcinv_uidx)ey);
const ptrdiff_t ix = ox + (ptrdiff_t)(_t / (hpcinv_uidx)ey);
const ptrdiff_t idx = ix * sx + iy * sy + iz;
(void)sz; (void)iz; (void)oz; (void)ez; (void)i_all;
"""

_GEOMETRY = ("raw int64 hpcinv_boxes", "int64 hpcinv_nbox", "int64 Ny", "int64 Nz")

#: Cells of the padded arrays below which the prelude unravels in 32-bit unsigned arithmetic.
INDEX32_LIMIT = 2 ** 31


def index32(shape) -> bool:
    """True when a launch over arrays of padded ``shape`` may unravel in 32 bits (every
    in-launch position and extent is below :data:`INDEX32_LIMIT`)."""
    return int(np.prod(shape, dtype=np.int64)) < INDEX32_LIMIT


def index_type(index32: bool) -> str:
    """The C typedef of ``hpcinv_uidx``, the prelude's unravelling type."""
    return "typedef unsigned int hpcinv_uidx;\n" if index32 else \
        "typedef ptrdiff_t hpcinv_uidx;\n"


def elementwise_parts(kernel: Kernel, ndim: int, dtype, index32: bool = False):
    """``(in_params, out_params, operation, preamble)`` of the ElementwiseKernel for this kernel
    (``index32``: the 32-bit unravelling of :func:`index32`, else 64-bit).

    Launch as ``ek(*scalars, *ints, boxes, nbox, Ny, Nz, *reads, *writes, size=cells)``.
    """
    t = np.dtype(dtype).name
    in_params = ([f"{t} {s}" for s in kernel.scalars] + [f"int64 {s}" for s in kernel.ints]
                 + list(_GEOMETRY) + [f"raw {t} {a}" for a in kernel.reads])
    out_params = [f"raw {t} {a}" for a in kernel.writes]
    preamble = ("#define HPCINV_INLINE __device__ __forceinline__\n"
                "#define real hpcinv_real\n" + index_type(index32) + header(kernel, ndim, dtype))
    operation = _PRELUDE + "{\n" + kernel.body + "\n}\n"
    return ", ".join(in_params), ", ".join(out_params), operation, preamble


def cupy_extra() -> str:
    """The hpcinv extra matching the installed CuPy wheel: ``"hpcinv[cuda13]"`` for
    ``cupy-cuda13x``, ``"hpcinv[cuda12]"`` for ``cupy-cuda12x``, else both (a CuPy from conda
    or from source)."""
    from importlib.metadata import PackageNotFoundError, version
    for extra, dist in (("cuda13", "cupy-cuda13x"), ("cuda12", "cupy-cuda12x")):
        try:
            version(dist)
            return f'"hpcinv[{extra}]"'
        except PackageNotFoundError:
            pass
    return '"hpcinv[cuda13]" (CUDA 13 driver) or "hpcinv[cuda12]" (CUDA 12 driver)'


def install_fix() -> str:
    """The one-line fix for a CuPy that cannot load NVRTC or the CUDA runtime."""
    return (f"pip install {cupy_extra()} (brings NVRTC and the CUDA runtime) or "
            "`module load cuda` (a CUDA toolkit on the system)")


def _driver_present() -> bool:
    """True when an NVIDIA kernel driver is loaded (Linux), i.e. there is a GPU to waste."""
    return os.path.exists("/proc/driver/nvidia/version")


def _why(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _library_missing(exc: BaseException) -> bool:
    """CuPy could not load a CUDA library (NVRTC, the runtime): cuda-pathfinder's
    ``DynamicLibNotFoundError`` or an OSError/RuntimeError naming ``libnvrtc``/``libcudart``."""
    text = f"{type(exc).__name__} {exc}".lower()
    return ("dynamiclibnotfound" in text or "libnvrtc" in text or "libcudart" in text
            or "nvrtc64" in text or "cudart64" in text)


def import_cupy():
    """Import CuPy and check that it counts at least one GPU; a one-line BackendError
    otherwise (:class:`~hpcinv.errors.GpuUnusableError` where a driver is loaded but CuPy
    cannot use it). Cheap; :func:`check_cupy_usable` also compiles and runs a kernel."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendError("backend 'cupy' needs CuPy: pip install 'hpcinv[cuda12]' or "
                           "'hpcinv[cuda13]' (matching your CUDA driver)") from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, insufficient driver, no runtime
        if _library_missing(exc):
            err = GpuUnusableError if _driver_present() else BackendError
            raise err(f"backend 'cupy': CuPy cannot load the CUDA runtime ({_why(exc)}); "
                      f"fix: {install_fix()}") from exc
        if _driver_present() and "insufficientdriver" in str(exc).replace(" ", "").lower():
            raise GpuUnusableError(
                f"backend 'cupy': the NVIDIA driver is older than CuPy's CUDA runtime "
                f"({_why(exc)}); fix: install the extra of the driver's CUDA major version "
                f"(nvidia-smi shows it: pip install \"hpcinv[cuda12]\" for CUDA 12) or update "
                f"the driver") from exc
        none = "" if _driver_present() else "no NVIDIA driver loaded: "
        raise BackendError(f"backend 'cupy': CuPy finds no usable GPU ({none}{_why(exc)})") \
            from exc
    if n < 1:
        raise BackendError("backend 'cupy': CuPy finds no GPU")
    return cupy


#: The probe of :func:`check_cupy_usable`: compiled through NVRTC like every hpcinv kernel.
_PROBE = ("float64 x", "float64 y", "y = 2.0 * x + 1.0", "hpcinv_probe")


def check_cupy_usable(device_id: int | None = None):
    """CuPy imports, counts a GPU, loads NVRTC, and compiles and runs a trivial
    ``ElementwiseKernel`` (through NVRTC, with hpcinv's options) on ``device_id`` (default: the
    current device). Returns the ``cupy`` module.

    Raises a one-line :class:`~hpcinv.errors.BackendError` naming the fix; where a GPU is
    there but CuPy cannot use it (NVRTC or the CUDA runtime not found, a driver too old for
    them, a kernel that does not run) it is a :class:`~hpcinv.errors.GpuUnusableError`, on
    which ``make_backend("auto")`` falls back to the host backend with a warning. Without this
    check, ``import cupy`` and ``getDeviceCount()`` succeed on a node with only a driver and the
    first real kernel dies with a traceback.
    """
    cupy = import_cupy()
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:   # DynamicLibNotFoundError (a RuntimeError), OSError
        raise GpuUnusableError(f"backend 'cupy': CuPy cannot load NVRTC, CUDA's runtime "
                               f"compiler ({_why(exc)}); fix: {install_fix()}") from exc
    dev = "?" if device_id is None else device_id
    try:
        dev = cupy.cuda.runtime.getDevice() if device_id is None else device_id
        with cupy.cuda.Device(dev):
            in_p, out_p, op, name = _PROBE
            k = cupy.ElementwiseKernel(in_p, out_p, op, name, options=NVRTC_OPTIONS)
            got = cupy.asnumpy(k(cupy.arange(4, dtype=cupy.float64))).tolist()
    except Exception as exc:  # CompileException, NVRTCError, CUDADriverError, RuntimeError
        if _library_missing(exc) or "nvrtc" in type(exc).__name__.lower() \
                or "compile" in type(exc).__name__.lower():
            raise GpuUnusableError(f"backend 'cupy': CuPy cannot compile a test kernel with "
                                   f"NVRTC ({_why(exc)}); fix: {install_fix()}") from exc
        raise GpuUnusableError(f"backend 'cupy': a test kernel does not run on GPU {dev} "
                               f"({_why(exc)}); fix: a driver at least as new as NVRTC "
                               f"(hpcinv info shows both), or {install_fix()}") from exc
    if got != [1.0, 3.0, 5.0, 7.0]:
        raise GpuUnusableError(f"backend 'cupy': a test kernel on GPU {dev} returned {got}, "
                               "expected [1.0, 3.0, 5.0, 7.0]")
    return cupy


def cupy_status() -> str:
    """One line for ``hpcinv info``: the CuPy version, NVRTC, the GPUs CuPy counts and the
    driver's CUDA version, each with the reason where it fails (never raises)."""
    try:
        import cupy
    except ImportError:
        return "not installed (GPUs need pip install 'hpcinv[cuda12]' or 'hpcinv[cuda13]')"
    except Exception as exc:
        return f"does not import ({_why(exc)})"
    parts = [str(getattr(cupy, "__version__", "?"))]
    try:
        parts.append("NVRTC " + ".".join(map(str, cupy.cuda.nvrtc.getVersion())))
    except Exception as exc:
        parts.append(f"NVRTC not found ({_why(exc, 140)})")
    try:
        parts.append(f"{cupy.cuda.runtime.getDeviceCount()} GPU(s)")
        v = cupy.cuda.runtime.driverGetVersion()
        parts.append(f"driver for CUDA {v // 1000}.{(v % 1000) // 10}" if v else "no driver")
    except Exception as exc:
        parts.append(f"no GPU ({_why(exc, 140)})")
    return ", ".join(parts)


class CudaKernel(CompiledKernel):
    """A CuPy ElementwiseKernel; ``bind(**names)`` it, then ``backend.launch(bound, boxes)``.

    Two ElementwiseKernels of the same body: the 32-bit unravelling (:func:`index32`) and the
    64-bit one, chosen per launch geometry; CuPy compiles each on its first launch. ``count_sync``
    counts each host sync the kernel makes (the backend's :meth:`~.base.Backend.count_sync`).
    """

    def __init__(self, kernel: Kernel, ndim: int, dtype, count_sync=None):
        cupy = import_cupy()
        self._cp = cupy
        self.kernel, self.ndim, self.dtype = kernel, ndim, np.dtype(dtype)
        self._ek = {}                       # index32 -> ElementwiseKernel
        self._geometry = {}                 # (boxes, shape) -> geometry: one upload each
        self._count_sync = count_sync
        self.elementwise(False)             # CuPy checks the parameter lists here

    def elementwise(self, index32: bool):
        """The ElementwiseKernel of one unravelling width (made on first use)."""
        ek = self._ek.get(index32)
        if ek is None:
            in_params, out_params, operation, preamble = elementwise_parts(
                self.kernel, self.ndim, self.dtype, index32)
            ek = self._ek[index32] = self._cp.ElementwiseKernel(
                in_params, out_params, operation, name=self.kernel.name, preamble=preamble,
                options=NVRTC_OPTIONS, no_return=True)
        return ek

    def prepare(self, values: dict) -> tuple:
        """``(leading scalars and ints, flat arrays)`` in the ElementwiseKernel's order."""
        k = self.kernel
        head = tuple(values[s] for s in k.scalars) + tuple(int(values[i]) for i in k.ints)
        flat = tuple(values[a].reshape(-1) for a in k.reads + k.writes)   # views: contiguous
        return head, flat

    def geometry(self, boxes, shape):
        """The launch geometry on the device, uploaded once per box list and shape for all
        bindings of this kernel (a new binding, e.g. new PT parameters, costs no upload)."""
        key = (tuple((tuple(lo), tuple(hi)) for lo, hi in boxes), tuple(shape))
        g = self._geometry.get(key)
        if g is None:
            g = self._geometry[key] = self._upload_geometry(boxes, shape)
        return g

    def _upload_geometry(self, boxes, shape):
        geom, cells = launch_geometry(boxes, shape)
        dev = self._cp.asarray(np.asarray(geom or [0], dtype=np.int64))
        if hasattr(self._cp, "cuda"):
            # Read by kernels on any stream: complete the upload (a host sync).
            self._cp.cuda.get_current_stream().synchronize()
            if self._count_sync is not None:
                self._count_sync()
        ny, nz = shape[1], (shape[2] if len(shape) == 3 else 1)
        return dev, len(geom) // BOX_INTS, ny, nz, index32(shape), cells

    def run(self, prepared, geometry):
        head, flat = prepared
        dev, nbox, ny, nz, idx32, cells = geometry
        if cells:
            self.elementwise(idx32)(*head, dev, nbox, ny, nz, *flat, size=cells)
