"""CuPy backend: the kernel text as a ``cupy.ElementwiseKernel`` over a flat launch index.

:func:`elementwise_parts` builds the (``in_params``, ``out_params``, ``operation``,
``preamble``) handed to CuPy; it needs no CuPy, so the test suite also compiles exactly this
text with ``nvcc`` on machines without a GPU (see ``tests/test_nvcc.py`` and
:mod:`hpcinv.backend.nvcc_check`).

Every array is passed as a flat 1-D view (``raw``), so ``A[idx]`` is a plain pointer offset.
Arrays are CuPy *out_params*: CuPy declares every in_param ``const`` (``const CArray<...>``,
whose ``operator[]`` yields a ``const T&``), and a kernel writes some of its arrays. The
scalars, ints and launch geometry are the in_params, so the call order is
``(*scalars, *ints, *geometry, *arrays)``.

CuPy's ``cupy/complex.cuh``, included in every kernel, has ``using thrust::real;`` at global
scope, so ``typedef double real;`` does not compile there: the CUDA preamble first defines
``real`` as a macro for ``hpcinv_real`` (kernel bodies must not call a function ``real()``).

Kernels compile with ``-fmad=false``: no fused multiply-add contraction, so a face value
computed by either neighbouring rank is bitwise identical (decomposition invariance).
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError
from .kernel import Kernel, box_args, header

NVRTC_OPTIONS = ("-fmad=false",)

#: Unravels CuPy's flat index ``i`` over the box into padded-array indices.
_PRELUDE = r"""
const ptrdiff_t sz = 1, sy = Nz, sx = (ptrdiff_t)Ny * Nz;
#if NDIM == 3
const ptrdiff_t iz = oz + (ptrdiff_t)(i % ez);
const ptrdiff_t _t = (ptrdiff_t)(i / ez);
#else
const ptrdiff_t iz = 0;
const ptrdiff_t _t = (ptrdiff_t)i;
#endif
const ptrdiff_t iy = oy + _t % ey;
const ptrdiff_t ix = ox + _t / ey;
const ptrdiff_t idx = ix * sx + iy * sy + iz;
(void)sz; (void)iz;
"""

_GEOMETRY = ("ox", "oy", "oz", "ex", "ey", "ez", "Ny", "Nz")


def elementwise_parts(kernel: Kernel, ndim: int, dtype):
    """``(in_params, out_params, operation, preamble)`` of the ElementwiseKernel for this kernel.

    Launch as ``ek(*scalars, *ints, *geometry, *arrays, size=n)``.
    """
    t = np.dtype(dtype).name
    in_params = ([f"{t} {s}" for s in kernel.scalars] + [f"int64 {s}" for s in kernel.ints]
                 + [f"int64 {g}" for g in _GEOMETRY])
    out_params = [f"raw {t} {a}" for a in kernel.arrays]
    preamble = ("#define HPCINV_INLINE __device__ __forceinline__\n"
                "#define real hpcinv_real\n" + header(kernel, ndim, dtype))
    operation = _PRELUDE + "{\n" + kernel.body + "\n}\n"
    return ", ".join(in_params), ", ".join(out_params), operation, preamble


def import_cupy():
    """Import CuPy and check that a device is usable; a clear error otherwise."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendError("backend 'cupy' needs CuPy: pip install 'hpcinv[cuda12]' or "
                           "'hpcinv[cuda13]' (matching your CUDA driver)") from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, insufficient driver, ...
        raise BackendError(f"backend 'cupy': CuPy finds no usable GPU ({exc})") from exc
    if n < 1:
        raise BackendError("backend 'cupy': CuPy finds no GPU")
    return cupy


class CudaKernel:
    """A CuPy ElementwiseKernel: ``k(lo, hi, *arrays, *scalars, *ints)`` on the current stream."""

    def __init__(self, kernel: Kernel, ndim: int, dtype):
        cupy = import_cupy()
        self.kernel, self.dtype = kernel, np.dtype(dtype)
        in_params, out_params, operation, preamble = elementwise_parts(kernel, ndim, dtype)
        self._ek = cupy.ElementwiseKernel(in_params, out_params, operation, name=kernel.name,
                                          preamble=preamble, options=NVRTC_OPTIONS,
                                          no_return=True)
        self._na = len(kernel.arrays)

    def __call__(self, lo, hi, *args):
        arrays = args[:self._na]
        shape = arrays[0].shape
        geom = box_args(lo, hi, shape)
        size = geom[3] * geom[4] * geom[5]
        if size == 0:
            return
        for a in arrays:   # reshape(-1) of a non-contiguous array would copy: writes lost
            if a.shape != shape or a.dtype != self.dtype or not a.flags.c_contiguous:
                raise ValueError(f"kernel {self.kernel.name}: arrays must be C-contiguous "
                                 f"{self.dtype} of one shape {shape}, got {a.shape} {a.dtype}")
        flat = [a.reshape(-1) for a in arrays]   # views: arrays are C-contiguous
        self._ek(*args[self._na:], *geom, *flat, size=size)
