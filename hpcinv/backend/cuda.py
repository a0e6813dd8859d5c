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

import numpy as np

from ..errors import BackendError
from .binding import CompiledKernel
from .kernel import BOX_INTS, Kernel, header, launch_geometry

NVRTC_OPTIONS = ("-fmad=false",)

#: Finds the box of CuPy's flat index ``i`` and unravels it into padded-array indices.
_PRELUDE = r"""
const ptrdiff_t sz = 1, sy = Nz, sx = (ptrdiff_t)Ny * Nz;
ptrdiff_t ib = 0;
while (ib + 1 < hpcinv_nbox && (ptrdiff_t)i >= (ptrdiff_t)hpcinv_boxes[7 * (ib + 1) + 6]) ++ib;
const ptrdiff_t ox = hpcinv_boxes[7 * ib], oy = hpcinv_boxes[7 * ib + 1];
const ptrdiff_t oz = hpcinv_boxes[7 * ib + 2];
const ptrdiff_t ey = hpcinv_boxes[7 * ib + 4], ez = hpcinv_boxes[7 * ib + 5];
const ptrdiff_t i_all = (ptrdiff_t)i;
const ptrdiff_t _l = i_all - (ptrdiff_t)hpcinv_boxes[7 * ib + 6];
#if NDIM == 3
const ptrdiff_t iz = oz + _l % ez;
const ptrdiff_t _t = _l / ez;
#else
const ptrdiff_t iz = 0;
const ptrdiff_t _t = _l;
#endif
const ptrdiff_t iy = oy + _t % ey;
const ptrdiff_t ix = ox + _t / ey;
const ptrdiff_t idx = ix * sx + iy * sy + iz;
(void)sz; (void)iz; (void)oz; (void)ez; (void)i_all;
"""

_GEOMETRY = ("raw int64 hpcinv_boxes", "int64 hpcinv_nbox", "int64 Ny", "int64 Nz")


def elementwise_parts(kernel: Kernel, ndim: int, dtype):
    """``(in_params, out_params, operation, preamble)`` of the ElementwiseKernel for this kernel.

    Launch as ``ek(*scalars, *ints, boxes, nbox, Ny, Nz, *reads, *writes, size=cells)``.
    """
    t = np.dtype(dtype).name
    in_params = ([f"{t} {s}" for s in kernel.scalars] + [f"int64 {s}" for s in kernel.ints]
                 + list(_GEOMETRY) + [f"raw {t} {a}" for a in kernel.reads])
    out_params = [f"raw {t} {a}" for a in kernel.writes]
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


class CudaKernel(CompiledKernel):
    """A CuPy ElementwiseKernel; ``bind(**names)`` it, then ``backend.launch(bound, boxes)``."""

    def __init__(self, kernel: Kernel, ndim: int, dtype):
        cupy = import_cupy()
        self._cp = cupy
        self.kernel, self.dtype = kernel, np.dtype(dtype)
        in_params, out_params, operation, preamble = elementwise_parts(kernel, ndim, dtype)
        self._ek = cupy.ElementwiseKernel(in_params, out_params, operation, name=kernel.name,
                                          preamble=preamble, options=NVRTC_OPTIONS,
                                          no_return=True)

    def prepare(self, values: dict) -> tuple:
        """``(leading scalars and ints, flat arrays)`` in the ElementwiseKernel's order."""
        k = self.kernel
        head = tuple(values[s] for s in k.scalars) + tuple(int(values[i]) for i in k.ints)
        flat = tuple(values[a].reshape(-1) for a in k.reads + k.writes)   # views: contiguous
        return head, flat

    def geometry(self, boxes, shape):
        geom, cells = launch_geometry(boxes, shape)
        dev = self._cp.asarray(np.asarray(geom or [0], dtype=np.int64))
        if hasattr(self._cp, "cuda"):
            # Made once per launch plan, read by kernels on any stream: complete the upload.
            self._cp.cuda.get_current_stream().synchronize()
        ny, nz = shape[1], (shape[2] if len(shape) == 3 else 1)
        return dev, len(geom) // BOX_INTS, ny, nz, cells

    def run(self, prepared, geometry):
        head, flat = prepared
        dev, nbox, ny, nz, cells = geometry
        if cells:
            self._ek(*head, dev, nbox, ny, nz, *flat, size=cells)
