"""Host reductions without a full-field temporary: ``max |a|`` and ``sum(a * b)`` of a region.

The obvious NumPy expressions (``max(abs(v))``, ``sum(x * y)``) allocate a temporary the size
of the region: one field per call, the high-water mark of a solve's residual check. Here the
region is walked in C order in leaves of at most :data:`CHUNK` values, each leaf written into
one small buffer (its boxes: :func:`flat_boxes`) and reduced there, so the memory a reduction
needs does not grow with the field.

The results are bitwise those of the full-temporary expressions, because the leaves follow
NumPy's own summation tree: ``numpy.add.reduce`` of a contiguous array of ``n`` values is one
pairwise sum (``pairwise_sum`` in NumPy's ``loops_utils.h``): below 8 values a plain loop, up to
128 eight accumulators, above that the sum of the first ``n2`` values plus the sum of the rest,
``n2 = n/2`` rounded down to a multiple of 8. :func:`dot` splits the same way until a part fits
a leaf, reduces each leaf with ``numpy.add.reduce`` (the same pairwise sum over that part) and
adds the parts in the tree's order, in the arrays' dtype. ``tests/test_bounded_memory.py``
checks the equality on random 1D/2D/3D fields and regions, float64 and float32. A maximum does
not depend on the order at all (NaN propagates as in ``numpy.max``).
"""
from __future__ import annotations

import math

import numpy as np

#: Values per leaf (a leaf's buffer: 256 KiB in float64).
CHUNK = 1 << 15


def flat_boxes(shape, lo: int, hi: int) -> list:
    """Boxes (tuples of slices, one per axis) of an array of ``shape`` whose C-order
    concatenation is the values ``lo <= k < hi`` of its C-order flattening (at most
    ``2 ndim - 1`` boxes)."""
    if hi <= lo:
        return []
    if not shape:
        return [()]
    inner = math.prod(shape[1:])
    i0, r0 = divmod(lo, inner)
    i1, r1 = divmod(hi, inner)
    if i0 == i1:
        return [(slice(i0, i0 + 1),) + b for b in flat_boxes(shape[1:], r0, r1)]
    out = []
    if r0:
        out += [(slice(i0, i0 + 1),) + b for b in flat_boxes(shape[1:], r0, inner)]
        i0 += 1
    if i1 > i0:
        out.append((slice(i0, i1),) + (slice(None),) * (len(shape) - 1))
    if r1:
        out += [(slice(i1, i1 + 1),) + b for b in flat_boxes(shape[1:], 0, r1)]
    return out


def _leaf(fn, arrays, lo, hi, buf):
    """``fn(*pieces, out=piece of buf)`` over the boxes of ``[lo, hi)``: the leaf's values,
    contiguous in ``buf[:hi - lo]``."""
    k = 0
    for box in flat_boxes(arrays[0].shape, lo, hi):
        pieces = [a[box] for a in arrays]
        m = pieces[0].size
        fn(*pieces, out=buf[k:k + m].reshape(pieces[0].shape))
        k += m
    return buf[:k]


def _pairwise(x, y, lo, hi, buf):
    """NumPy's pairwise sum of the products ``x * y`` over the flat range ``[lo, hi)``."""
    n = hi - lo
    if n <= CHUNK:
        return np.add.reduce(_leaf(np.multiply, (x, y), lo, hi, buf))
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(x, y, lo, lo + n2, buf) + _pairwise(x, y, lo + n2, hi, buf)


def dot(x, y) -> float:
    """``float(numpy.sum(x * y))`` of two equally shaped arrays (views), bitwise, holding at
    most :data:`CHUNK` products at once."""
    if x.size <= CHUNK:
        return float(np.sum(x * y))
    dtype = np.result_type(x, y)
    buf = np.empty(CHUNK, dtype)
    return float(dtype.type(0) + _pairwise(x, y, 0, x.size, buf))


def max_abs(v) -> float:
    """``float(numpy.max(numpy.abs(v)))`` (0 for an empty ``v``), holding at most
    :data:`CHUNK` values at once."""
    if v.size <= CHUNK:
        return float(np.max(np.abs(v))) if v.size else 0.0
    buf = np.empty(CHUNK, v.dtype)
    leaves = [np.max(_leaf(np.abs, (v,), lo, min(lo + CHUNK, v.size), buf))
              for lo in range(0, v.size, CHUNK)]
    return float(np.max(np.array(leaves)))


def temporary_bytes(*arrays) -> int:
    """Bytes of the buffer :func:`dot` or :func:`max_abs` allocates for these arrays."""
    return min(arrays[0].size, CHUNK) * np.result_type(*arrays).itemsize
