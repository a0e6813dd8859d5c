"""The datasets of one :func:`~hpcinv.io.h5write.write_h5` call on this rank: where each
rank's block of a field goes in the global dataset, and how to get it.

A block is not held: :meth:`Item.load` downloads it (``to_host``) when the writer needs it, one
dataset at a time, so a write holds one block (two for an XDMF view, made from its field's
block) beyond the fields themselves, never all of its blocks and never a global field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .xdmf import view_block, view_name, view_shape


@dataclass
class Item:
    """One dataset of a write: where this rank's block goes, and how to get it (downloaded
    only by :meth:`load`, one dataset at a time, so no write holds all of its blocks)."""
    name: str
    fetch: Callable[[], np.ndarray]   # -> this rank's owned block (host, C-contiguous)
    offset: tuple                # global index of block[0, 0(, 0)]
    global_shape: tuple
    shape: tuple                 # the block's shape
    dtype: np.dtype

    @property
    def selection(self) -> tuple:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.shape))

    def load(self) -> np.ndarray:
        """The block, downloaded now (a new host array each call)."""
        b = self.fetch()
        if not isinstance(b, np.ndarray) or not b.flags.c_contiguous:
            raise ValueError(f"write_h5: block of {self.name!r} is not a C-contiguous NumPy "
                             "array")
        if b.shape != self.shape or b.dtype != self.dtype:
            raise ValueError(f"write_h5: block of {self.name!r} is {b.dtype}{list(b.shape)}, "
                             f"expected {self.dtype}{list(self.shape)}")
        return b


def region_item(name, v, region, offset, global_shape, to_host) -> Item:
    """The item of ``v[region]`` (a padded local array) at ``offset`` of ``global_shape``."""
    from .gather import host_block
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(region, np.shape(v)))
    dtype = np.dtype(v.dtype) if hasattr(v, "dtype") else np.asarray(v).dtype
    return Item(name, lambda: host_block(v, region, to_host), tuple(offset),
                tuple(global_shape), shape, dtype)


def view_item(it: Item) -> Item:
    """The item of ``it``'s XDMF view (:func:`~hpcinv.io.xdmf.view_block`), made from
    ``it``'s block when loaded."""
    off = tuple(it.offset)[::-1]
    if len(off) == 2:
        off = (0, *off)
    return Item(view_name(it.name),
                lambda: view_block(it.load(), it.offset, it.global_shape)[0], off,
                view_shape(it.global_shape), view_shape(it.shape), it.dtype)


def dataset_items(decomp, cells, faces, to_host, views=()) -> list[Item]:
    """The items of a write (arguments as for :func:`~hpcinv.io.h5write.write_h5`): the cell
    fields, the face fields, then the XDMF views named in ``views``; nothing is downloaded."""
    from .gather import owned_face_block
    out = [region_item(name, v, decomp.owned(), decomp.offset, decomp.global_shape, to_host)
           for name, v in (cells or {}).items()]
    for name, (v, axis) in (faces or {}).items():
        sl, off, gshape = owned_face_block(decomp, axis)
        out.append(region_item(name, v, sl, off, gshape, to_host))
    names = [it.name for it in out]
    unknown = sorted(set(views) - set(names))
    if unknown:
        raise ValueError(f"views {unknown} name no cell or face field of this write")
    out += [view_item(it) for it in out if it.name in views]
    names = [it.name for it in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate dataset names in {names}")
    return out
