"""Kernel descriptions: one C/CUDA loop-body text, compiled by either backend.

A :class:`Kernel` is written once as the body of a loop over the cells of a *box* (an
offset and an extent per dimension) of C-contiguous arrays that all share one padded shape.
Both backends wrap the identical body text:

* ``cupy``: a :class:`cupy.ElementwiseKernel` launched with ``size = prod(extent)``; the flat
  launch index ``i`` is unravelled into ``ix, iy, iz``.
* ``host``: a C++ function with an OpenMP loop nest over ``ix, iy(, iz)``, compiled by the host
  compiler and called through ctypes.

A launch covers one or several boxes (up to :data:`MAX_BOXES`, e.g. the six boundary slabs
of a 3D block in one launch). Names the body may use (all ``ptrdiff_t``): ``ix, iy, iz``
(indices into the padded arrays; ``iz == 0`` in 2D), ``idx`` (flat index of the cell), ``sx,
sy, sz`` (flat strides of the three axes; in 2D ``sx = Ny``, ``sy = 1``), ``ib`` (the box's
number in the launch) and ``i_all`` (the cell's position in the launch: boxes one after the
other, each in row-major order; pack/unpack kernels index their contiguous buffers with it). ``NDIM`` is a preprocessor macro (2 or 3) and ``real`` is
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
                      "ex", "ey", "ez", "Ny", "Nz", "real", "hpcinv_real", "NDIM", "nthreads",
                      "ib", "i_all", "hpcinv_boxes", "hpcinv_nbox"})

#: Boxes one launch may cover (6: the boundary slabs of a 3D block).
MAX_BOXES = 6

#: Integers per box in the launch geometry: ``ox, oy, oz, ex, ey, ez, start``.
BOX_INTS = 7


@dataclass(frozen=True)
class Kernel:
    """A loop body over a box of cells, with its argument list.

    Attributes:
        name: C identifier of the kernel.
        arrays: names of the ``real`` arrays (raw, flat-indexed, all of the launch's padded shape
            except the ``flat`` ones).
        scalars: names of ``real`` scalar arguments.
        ints: names of ``int64`` scalar arguments (``long long`` in C).
        body: the loop body (C/CUDA text) executed for each cell of the box.
        preamble: helper definitions placed before the kernel (``HPCINV_INLINE`` functions).
        defines: extra preprocessor macros ``{NAME: value}`` (variants of one body).
        writes: the arrays the body writes; every other array is read-only and is declared
            ``const`` to both compilers, so a body that writes an undeclared array does not
            compile. The stream checker uses the same split (reads and writes per launch).
        flat: arrays that are contiguous buffers of any length, indexed with ``i_all`` (pack and
            unpack buffers), not of the launch's padded shape.
        reach: how far the body reads from a cell (1: face neighbours, 0: the cell only); the
            stream checker's read footprint is the launch's boxes widened by it.
    """

    name: str
    arrays: tuple[str, ...]
    scalars: tuple[str, ...]
    body: str
    ints: tuple[str, ...] = ()
    preamble: str = ""
    defines: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    writes: tuple[str, ...] = ()
    flat: tuple[str, ...] = ()
    reach: int = 1

    def __post_init__(self):
        names = list(self.arrays) + list(self.scalars) + list(self.ints)
        if len(set(names)) != len(names):
            raise ValueError(f"kernel {self.name}: duplicate argument names {names}")
        bad = [n for n in names if n in RESERVED or n.startswith("_")]
        if bad:
            raise ValueError(f"kernel {self.name}: reserved argument names {bad}")
        for what, sub in (("writes", self.writes), ("flat", self.flat)):
            unknown = [n for n in sub if n not in self.arrays]
            if unknown:
                raise ValueError(f"kernel {self.name}: {what} names {unknown} are not arrays")

    @property
    def reads(self) -> tuple[str, ...]:
        """The read-only arrays."""
        return tuple(a for a in self.arrays if a not in self.writes)

    def variant(self, suffix: str, **defines: str) -> "Kernel":
        """The same body compiled with extra macros, under the name ``name_suffix``."""
        return Kernel(f"{self.name}_{suffix}", self.arrays, self.scalars, self.body, self.ints,
                      self.preamble, self.defines + tuple(sorted(defines.items())),
                      self.writes, self.flat, self.reach)

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Per-axis argument groups: ``{"q": ("qx", "qy"), "inv_d": ("inv_dx", "inv_dy")}``.

        A group is a family of names that differ only in one axis letter (``x``, ``y``[, ``z``])
        at the same position; a launch may bind the family as one list under the name with
        that letter removed (``q=[qx, qy]``).
        """
        found = {}
        for family in (self.arrays, self.scalars, self.ints):
            names = set(family)
            for n in family:
                for pos, ch in enumerate(n):
                    if ch != "x":
                        continue
                    members = [n[:pos] + a + n[pos + 1:] for a in "xyz"]
                    if members[1] not in names:
                        continue
                    key = n[:pos] + n[pos + 1:]
                    if key and key not in names:
                        found[key] = tuple(m for m in members if m in names)
        return found


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


def as_boxes(boxes) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """A list of ``(lo, hi)`` boxes from one box ``(lo, hi)`` or a sequence of boxes."""
    boxes = list(boxes)
    if boxes and not isinstance(boxes[0][0], (tuple, list)):   # one box (lo, hi)
        boxes = [tuple(boxes)]
    return [(tuple(int(v) for v in lo), tuple(int(v) for v in hi)) for lo, hi in boxes]


def launch_geometry(boxes, shape) -> tuple[list[int], int]:
    """``(geometry, cells)`` of a launch over ``boxes`` of arrays of padded ``shape``.

    ``geometry`` holds :data:`BOX_INTS` integers per non-empty box: ``ox, oy, oz, ex, ey, ez,
    start`` (``start``: cells of the boxes before it, the base of ``i_all``); ``cells`` is the
    total. 2D boxes get ``oz = 0, ez = 1``.
    """
    geom, start = [], 0
    for lo, hi in as_boxes(boxes):
        if len(lo) != len(shape) or len(hi) != len(shape):
            raise ValueError(f"box {lo}, {hi} does not match the array rank {len(shape)}")
        ext = [max(0, h - l) for l, h in zip(lo, hi)]
        n = 1
        for e in ext:
            n *= e
        if n == 0:
            continue
        if any(l < 0 or h > s for l, h, s in zip(lo, hi, shape)):
            raise ValueError(f"box {lo}, {hi} exceeds the arrays' shape {tuple(shape)}")
        o3, e3 = (list(lo) + [0])[:3], (ext + [1])[:3]
        geom += o3 + e3 + [start]
        start += n
    if len(geom) > BOX_INTS * MAX_BOXES:
        raise ValueError(f"a launch covers at most {MAX_BOXES} boxes")
    return geom, start
