"""Kernel descriptions: one C/CUDA loop-body text, compiled by either backend.

A :class:`Kernel` is written once as the body of a loop over the cells of a *box* (an
offset and an extent per dimension) of C-contiguous arrays that all share one padded shape.
Both backends wrap the identical body text:

* ``cupy``: a :class:`cupy.ElementwiseKernel` launched with ``size = prod(extent)``; the flat
  launch index ``i`` is unravelled into ``ix, iy, iz``.
* ``host``: a C++ function with an OpenMP loop nest over ``ix, iy(, iz)``, compiled by the host
  compiler and called through ctypes.

Names the body may use (all ``ptrdiff_t``): ``ix, iy, iz`` (indices into the padded arrays;
``iz == 0`` in 2D), ``idx`` (flat index of the cell), ``sx, sy, sz`` (flat strides of the three
axes; in 2D ``sx = Ny``, ``sy = 1``). ``NDIM`` is a preprocessor macro (2 or 3) and ``real`` is
the floating-point type (``double`` or ``float``). Helper functions in ``preamble`` must be
declared ``HPCINV_INLINE`` so that they compile for host and device alike. Arrays are indexed
with flat indices only (``A[idx + sx]``): on the GPU a C-contiguous CuPy ``CArray`` indexed by a
``ptrdiff_t`` is then a plain pointer offset, the same as a ``real*`` on the host.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: Names reserved by the kernel wrappers (and by CuPy: ``i``, ``n`` and leading underscores).
RESERVED = frozenset({"i", "n", "ix", "iy", "iz", "idx", "sx", "sy", "sz", "ox", "oy", "oz",
                      "ex", "ey", "ez", "Ny", "Nz", "real", "hpcinv_real", "NDIM", "nthreads"})


@dataclass(frozen=True)
class Kernel:
    """A loop body over a box of cells, with its argument list.

    Attributes:
        name: C identifier of the kernel.
        arrays: names of the ``real`` arrays (raw, flat-indexed, all of the launch's padded shape).
        scalars: names of ``real`` scalar arguments.
        ints: names of ``int64`` scalar arguments (``long long`` in C).
        body: the loop body (C/CUDA text) executed for each cell of the box.
        preamble: helper definitions placed before the kernel (``HPCINV_INLINE`` functions).
        defines: extra preprocessor macros ``{NAME: value}`` (variants of one body).
    """

    name: str
    arrays: tuple[str, ...]
    scalars: tuple[str, ...]
    body: str
    ints: tuple[str, ...] = ()
    preamble: str = ""
    defines: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self):
        names = list(self.arrays) + list(self.scalars) + list(self.ints)
        if len(set(names)) != len(names):
            raise ValueError(f"kernel {self.name}: duplicate argument names {names}")
        bad = [n for n in names if n in RESERVED or n.startswith("_")]
        if bad:
            raise ValueError(f"kernel {self.name}: reserved argument names {bad}")

    def variant(self, suffix: str, **defines: str) -> "Kernel":
        """The same body compiled with extra macros, under the name ``name_suffix``."""
        return Kernel(f"{self.name}_{suffix}", self.arrays, self.scalars, self.body, self.ints,
                      self.preamble, self.defines + tuple(sorted(defines.items())))


def c_type(dtype) -> str:
    """C name of a numpy floating dtype (``float64`` -> ``double``)."""
    import numpy as np
    dt = np.dtype(dtype)
    if dt == np.float64:
        return "double"
    if dt == np.float32:
        return "float"
    raise ValueError(f"unsupported floating-point dtype {dt} (use float64 or float32)")


def header(kernel: Kernel, ndim: int, dtype) -> str:
    """Preprocessor lines and preamble shared by both backends for one compilation."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    lines = [f"#define NDIM {ndim}", f"typedef {c_type(dtype)} real;"]
    lines += [f"#define {k} {v}" for k, v in kernel.defines]
    return "\n".join(lines) + "\n" + kernel.preamble + "\n"


def source_hash(*parts: str) -> str:
    """Short stable hash of source text and flags (cache key)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def box_args(lo, hi, shape):
    """Launch geometry ``(ox, oy, oz, ex, ey, ez, Ny, Nz)`` for a box ``[lo, hi)`` of a padded shape.

    ``lo``/``hi`` are per-dimension index bounds into arrays of ``shape`` (2 or 3 entries).
    """
    ndim = len(shape)
    ext = [max(0, h - l) for l, h in zip(lo, hi)]
    if ndim == 2:
        return (lo[0], lo[1], 0, ext[0], ext[1], 1, shape[1], 1)
    return (lo[0], lo[1], lo[2], ext[0], ext[1], ext[2], shape[1], shape[2])
