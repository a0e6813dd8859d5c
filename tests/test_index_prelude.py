"""The CUDA prelude's index unravelling, run on the host (issue 19, finding 5).

The prelude of :mod:`hpcinv.backend.cuda_compile` turns CuPy's flat launch index ``i`` into the box
number and the padded-array indices ``ix, iy, iz, idx``. It divides in 32-bit unsigned
arithmetic where the arrays have fewer than 2**31 cells (GPUs emulate 64-bit division), else
in 64 bits. Here the very prelude text is compiled by the host C++ compiler inside a loop over
chosen positions ``i`` and compared with NumPy's unravelling, for both widths, in 2D and 3D,
over several boxes, and at the last positions of a launch just under 2**31 cells.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from hpcinv.backend.cache import load_library
from hpcinv.backend.cuda_compile import _PRELUDE, index32, index_type
from hpcinv.backend.host_compile import compile_library
from hpcinv.backend.kernel import BOX_INTS, launch_geometry

_HARNESS = r"""
#include <cstddef>
#define NDIM %(ndim)d
%(index_type)s
extern "C" void unravel(const long long* hpcinv_boxes, long long hpcinv_nbox, long long Ny,
                        long long Nz, const long long* positions, long long n, long long* out)
{
    for (long long k = 0; k < n; ++k) {
        const ptrdiff_t i = (ptrdiff_t)positions[k];
%(prelude)s
        out[5 * k] = ib; out[5 * k + 1] = ix; out[5 * k + 2] = iy; out[5 * k + 3] = iz;
        out[5 * k + 4] = idx;
    }
}
"""


def _prelude_fn(ndim: int, idx32: bool):
    src = _HARNESS % dict(ndim=ndim, index_type=index_type(idx32), prelude=_PRELUDE)
    lib = load_library(compile_library(src, flags=("-O2", "-fPIC", "-shared", "-std=c++17")))
    fn = lib.unravel
    fn.restype = None
    return fn


def _run(fn, boxes, shape, positions):
    geom, _ = launch_geometry(boxes, shape)
    g = np.asarray(geom, dtype=np.int64)
    pos = np.ascontiguousarray(positions, dtype=np.int64)
    out = np.zeros((len(pos), 5), dtype=np.int64)
    ny, nz = shape[1], (shape[2] if len(shape) == 3 else 1)
    ptr = ctypes.POINTER(ctypes.c_longlong)
    fn(g.ctypes.data_as(ptr), ctypes.c_longlong(len(g) // BOX_INTS), ctypes.c_longlong(ny),
       ctypes.c_longlong(nz), pos.ctypes.data_as(ptr), ctypes.c_longlong(len(pos)),
       out.ctypes.data_as(ptr))
    return out


def _expected(boxes, shape, positions):
    """``(box, ix, iy, iz, idx)`` per position, from NumPy's unravelling."""
    geom, _ = launch_geometry(boxes, shape)
    g = np.asarray(geom, dtype=np.int64).reshape(-1, BOX_INTS)
    shape3 = tuple(shape) + (1,) * (3 - len(shape))
    rows = []
    for i in positions:
        b = int(np.searchsorted(g[:, 6], i, side="right") - 1)
        o, e = g[b, :3], g[b, 3:6]
        local = np.unravel_index(int(i - g[b, 6]), tuple(int(x) for x in e))
        ix, iy, iz = (int(a + b_) for a, b_ in zip(o, local))
        rows.append((b, ix, iy, iz, int(np.ravel_multi_index((ix, iy, iz), shape3))))
    return np.asarray(rows, dtype=np.int64)


CASES = {
    2: ((9, 7), [((1, 1), (2, 6)), ((7, 1), (8, 6)), ((2, 1), (7, 2)), ((2, 2), (7, 6))]),
    3: ((6, 7, 5), [((1, 1, 1), (2, 6, 4)), ((4, 1, 1), (5, 6, 4)), ((2, 2, 2), (4, 5, 3)),
                    ((2, 1, 1), (4, 2, 4))]),
}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("idx32", [True, False], ids=["u32", "i64"])
def test_every_position_of_a_multi_box_launch(ndim, idx32):
    shape, boxes = CASES[ndim]
    cells = launch_geometry(boxes, shape)[1]
    positions = np.arange(cells)
    got = _run(_prelude_fn(ndim, idx32), boxes, shape, positions)
    np.testing.assert_array_equal(got, _expected(boxes, shape, positions))


def test_last_positions_just_under_the_32_bit_limit():
    """The largest launch that still unravels in 32 bits: its last cells are right in both
    widths (an int-typed ``_l`` or a signed overflow would show here)."""
    shape = (1290, 1290, 1290)                     # 2_146_689_000 cells < 2**31
    assert index32(shape) and not index32((1291, 1290, 1290))
    boxes = [((0, 0, 0), shape)]
    cells = launch_geometry(boxes, shape)[1]
    positions = np.array([0, 1, 1289, 1290, 2 ** 31 - 2 ** 20, cells - 1291, cells - 1])
    want = _expected(boxes, shape, positions)
    for idx32 in (True, False):
        np.testing.assert_array_equal(_run(_prelude_fn(3, idx32), boxes, shape, positions),
                                      want)
