"""Assemble global arrays from the ranks' blocks on one root rank (small and medium runs).

Cell fields: each rank contributes its owned cells. Face fields along axis ``a``: each rank owns
the lower faces of its cells, and the rank at the upper end of the axis also the last face, so
the global face array has ``n_a + 1`` entries along ``a``.
"""
from __future__ import annotations

import numpy as np


def owned_face_block(decomp, axis: int):
    """``(slices, offset, global_shape)`` of the faces along ``axis`` this rank owns."""
    last = decomp.coords[axis] == decomp.dims[axis] - 1
    sl = list(decomp.owned())
    n = decomp.local_shape[axis]
    sl[axis] = slice(1, n + 2 if last else n + 1)
    gshape = list(decomp.global_shape)
    gshape[axis] += 1
    return tuple(sl), tuple(decomp.offset), tuple(gshape)


def host_block(a, region, to_host=None) -> np.ndarray:
    """``a[region]`` as a C-contiguous NumPy array: ``to_host(a, region)`` (e.g.
    ``backend.to_host`` for a backend array), or for ``to_host=None`` a NumPy ``a`` read
    directly."""
    block = np.asarray(a[region]) if to_host is None else to_host(a, region)
    return np.ascontiguousarray(block)


def _gather(decomp, block: np.ndarray, offset, global_shape, root: int):
    blocks = decomp.comm.gather((tuple(offset), block), root=root)
    if decomp.rank != root:
        return None
    out = np.empty(global_shape, dtype=block.dtype)
    filled = np.zeros(global_shape, dtype=bool)
    for off, b in blocks:
        sl = tuple(slice(o, o + n) for o, n in zip(off, b.shape))
        out[sl] = b
        filled[sl] = True
    if not filled.all():
        raise RuntimeError("gather: the ranks' blocks do not cover the global array")
    return out


def gather_cells(decomp, local, to_host=None, root: int = 0):
    """Global cell array (shape ``decomp.global_shape``) on ``root``; ``None`` elsewhere.

    ``local`` is a padded local array: a NumPy array (``to_host=None``), or a backend array
    with ``to_host=backend.to_host`` (called as ``to_host(local, region)``).
    """
    block = host_block(local, decomp.owned(), to_host)
    return _gather(decomp, block, decomp.offset, decomp.global_shape, root)


def gather_faces(decomp, local, axis: int, to_host=None, root: int = 0):
    """Global face array along ``axis`` (``n_axis + 1`` faces) on ``root``; ``None`` elsewhere
    (``to_host`` as for :func:`gather_cells`)."""
    sl, off, gshape = owned_face_block(decomp, axis)
    block = host_block(local, sl, to_host)
    return _gather(decomp, block, off, gshape, root)
