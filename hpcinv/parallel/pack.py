"""Pack and unpack kernels of the halo exchange: all faces of a field in one launch each.

A launch over several boxes (the layers to send, or the ghost layers to fill) numbers its cells
consecutively (``i_all``: box after box, each in row-major order), so the faces of all
neighbours land in one contiguous buffer, message after message. Nothing here knows about the
physics: the field is any cell-centred array of the padded local shape.
"""
from __future__ import annotations

from ..backend.kernel import Kernel

PACK = Kernel("halo_pack", ("A", "buf"), (), "buf[i_all] = A[idx];", writes=("buf",),
              flat=("buf",), reach=0)
"""``buf[i_all] = A[idx]`` over the layers to send (``A``: the field; ``buf``: send buffer)."""

UNPACK = Kernel("halo_unpack", ("buf", "A"), (), "A[idx] = buf[i_all];", writes=("A",),
                flat=("buf",), reach=0)
"""``A[idx] = buf[i_all]`` over the ghost layers (``buf``: receive buffer; ``A``: the field)."""


def all_kernels(ndim: int):
    """Every kernel of this module (the nvcc compile test iterates over these)."""
    return [PACK, UNPACK]
