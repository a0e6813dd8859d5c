"""Grid transfer between two Cartesian grids of the same box on two decompositions: restriction
(averaging) of a cell field to a coarser grid and prolongation (piecewise constant, or
cell-centred multilinear) back.

The correspondence is geometric and per axis: fine cell ``i`` of ``n_f`` belongs to the coarse
cell of ``n_c`` (``n_c <= n_f``) that contains its centre,

    c(i) = floor((i + 1/2) n_c / n_f) = ((2 i + 1) n_c) // (2 n_f)      (integers, exact)

so it holds for any shapes (``n_c = ceil(n_f / f)`` need not divide ``n_f``). Every coarse cell
then contains at least one fine centre, and the fine cells of coarse cell ``c`` along an axis are
a contiguous range. Restriction averages the fine cells of each coarse cell; prolongation gives
each fine cell the value of its coarse cell, so prolongation then restriction is the identity.

Both are distributed and bitwise independent of both decompositions: every rank computes every
block of both splits (no messages needed for that), so a sender and a receiver agree on the box
of values that passes between them; one ``Alltoallv`` carries the values (C order of each box),
nobody gathers a global field. The receiver of a restriction assembles the fine cells of its
coarse block and sums the fine cells of each coarse cell in global C order, the same sequence of
additions whatever the split; piecewise-constant prolongation only copies, and the multilinear
one weights the ``2**ndim`` coarse neighbours of each fine centre in a fixed order, with weights
computed from global indices.

Arrays are the padded local host arrays of :mod:`hpcinv.parallel.decomposition` (owned cells
``[1:-1]``); results have zero ghosts.
"""
from __future__ import annotations

import itertools

import numpy as np
from mpi4py import MPI

from .decomposition import Decomposition, split_extent


def coarse_index(n_fine: int, n_coarse: int) -> np.ndarray:
    """``c(i)`` for every fine cell ``i`` along one axis (the coarse cell containing its
    centre)."""
    if not 1 <= n_coarse <= n_fine:
        raise ValueError(f"a coarse axis needs 1 <= n_coarse <= n_fine, got {n_coarse}, "
                         f"{n_fine}")
    i = np.arange(n_fine, dtype=np.int64)
    return ((2 * i + 1) * n_coarse) // (2 * n_fine)


def coarse_shape(shape, factor: int, rounding: str = "ceil") -> tuple[int, ...]:
    """The shape of a grid coarsened by ``factor`` per axis: ``ceil(n / factor)`` (default;
    ``"floor"``: ``max(1, n // factor)``)."""
    f = int(factor)
    if f < 1:
        raise ValueError(f"a coarsening factor must be >= 1, got {factor}")
    if rounding == "ceil":
        return tuple(-(-int(n) // f) for n in shape)
    return tuple(max(1, int(n) // f) for n in shape)


def _blocks(decomp: Decomposition):
    """``{rank: (offsets, sizes)}`` of every block of ``decomp`` (computed, not exchanged)."""
    out = {}
    for coords in itertools.product(*[range(p) for p in decomp.dims]):
        ext = [split_extent(n, p, c) for n, p, c in zip(decomp.global_shape, decomp.dims,
                                                          coords)]
        out[decomp.comm.Get_cart_rank(list(coords))] = (tuple(o for _, o in ext),
                                                        tuple(s for s, _ in ext))
    return out


def _intersect(a, b):
    """Intersection of boxes ``(lo, hi)`` per axis, or ``None`` when empty."""
    lo = tuple(max(x, y) for x, y in zip(a[0], b[0]))
    hi = tuple(min(x, y) for x, y in zip(a[1], b[1]))
    return None if any(h <= l for l, h in zip(lo, hi)) else (lo, hi)


class GridTransfer:
    """Restriction and prolongation between a fine and a coarse decomposition of the same box
    (collective over their communicator; the same ranks, any two splits).

    Args:
        fine, coarse: the two :class:`Decomposition` s; ``coarse.global_shape <=
            fine.global_shape`` per axis, both over the same ranks.
    """

    def __init__(self, fine: Decomposition, coarse: Decomposition):
        if fine.ndim != coarse.ndim:
            raise ValueError(f"grid transfer between a {fine.ndim}D and a {coarse.ndim}D grid")
        if fine.comm.Get_size() != coarse.comm.Get_size():
            raise ValueError("grid transfer needs both decompositions over the same ranks")
        self.fine, self.coarse = fine, coarse
        self.comm = fine.comm
        self.rank = fine.comm.Get_rank()
        self.maps = [coarse_index(nf, nc) for nf, nc in zip(fine.global_shape,
                                                             coarse.global_shape)]
        # fine range [lo, hi) of every coarse cell, per axis
        self.lo = [np.searchsorted(m, np.arange(nc), "left")
                   for m, nc in zip(self.maps, coarse.global_shape)]
        self.hi = [np.searchsorted(m, np.arange(nc), "right")
                   for m, nc in zip(self.maps, coarse.global_shape)]
        self.fine_blocks, self.coarse_blocks = _blocks(fine), _blocks(coarse)
        self.size = self.comm.Get_size()

    # --- boxes -------------------------------------------------------------------------------
    def _fine_box(self, rank):
        off, n = self.fine_blocks[rank]
        return off, tuple(o + s for o, s in zip(off, n))

    def _coarse_box(self, rank):
        off, n = self.coarse_blocks[rank]
        return off, tuple(o + s for o, s in zip(off, n))

    def _preimage(self, cbox):
        """The fine box whose cells belong to the coarse box ``cbox``."""
        return (tuple(int(self.lo[a][l]) for a, l in enumerate(cbox[0])),
                tuple(int(self.hi[a][h - 1]) for a, h in enumerate(cbox[1])))

    def _image(self, fbox):
        """The coarse box holding the coarse cells of the fine box ``fbox``."""
        return (tuple(int(self.maps[a][l]) for a, l in enumerate(fbox[0])),
                tuple(int(self.maps[a][h - 1]) + 1 for a, h in enumerate(fbox[1])))

    @staticmethod
    def _slices(box, origin):
        """Slices of ``box`` in an array whose first element is global cell ``origin``."""
        return tuple(slice(l - o, h - o) for l, h, o in zip(box[0], box[1], origin))

    @staticmethod
    def _count(box) -> int:
        return int(np.prod([h - l for l, h in zip(*box)])) if box is not None else 0

    def _exchange(self, send_pieces, recv_boxes):
        """Alltoallv of float64 boxes: ``send_pieces[r]`` (a C-ordered array or ``None``) to
        rank ``r``; returns ``{r: flat array}`` of the sizes of ``recv_boxes[r]``."""
        scounts = np.array([0 if p is None else p.size for p in send_pieces], dtype=np.int64)
        rcounts = np.array([self._count(b) for b in recv_boxes], dtype=np.int64)
        sdispl = np.concatenate([[0], np.cumsum(scounts)[:-1]])
        rdispl = np.concatenate([[0], np.cumsum(rcounts)[:-1]])
        sendbuf = np.empty(int(scounts.sum()), dtype=np.float64)
        for r, p in enumerate(send_pieces):
            if p is not None:
                sendbuf[sdispl[r]:sdispl[r] + p.size] = p.ravel()
        recvbuf = np.empty(int(rcounts.sum()), dtype=np.float64)
        if self.size == 1:
            recvbuf[:] = sendbuf
        else:
            self.comm.Alltoallv([sendbuf, (scounts, sdispl), MPI.DOUBLE],
                                [recvbuf, (rcounts, rdispl), MPI.DOUBLE])
        return {r: recvbuf[rdispl[r]:rdispl[r] + rcounts[r]] for r in range(self.size)}

    def _assemble(self, local, src, src_box, need):
        """``(region, box)``: the cells of the global box ``box = need(self.rank)`` of the
        source decomposition ``src``, assembled on this rank from the ranks that own them
        (collective; one ``Alltoallv``; copies only, so exact). ``local``: padded local array of
        ``src`` (owned cells read); ``src_box(r)``: rank r's owned box; ``need(r)``: the box
        rank r needs."""
        own = np.asarray(local, dtype=np.float64)[src.owned()]
        mine = src_box(self.rank)
        send = []
        for r in range(self.size):
            box = _intersect(mine, need(r))
            send.append(None if box is None else
                        np.ascontiguousarray(own[self._slices(box, src.offset)]))
        want = need(self.rank)
        recv_boxes = [_intersect(src_box(r), want) for r in range(self.size)]
        got = self._exchange(send, recv_boxes)
        region = np.empty(tuple(h - l for l, h in zip(*want)), dtype=np.float64)
        for r, box in enumerate(recv_boxes):
            if box is not None:
                sl = self._slices(box, want[0])
                region[sl] = got[r].reshape(region[sl].shape)
        return region, want

    # --- the operators --------------------------------------------------------------------
    def restrict(self, fine_local) -> np.ndarray:
        """The coarse average of a fine cell field: padded local fine array (owned cells read)
        -> padded local coarse array (owned cells set, ghosts zero). Collective."""
        region, pre = self._assemble(fine_local, self.fine, self._fine_box,
                                     lambda r: self._preimage(self._coarse_box(r)))
        return self._average(region, pre)

    def _average(self, region, pre) -> np.ndarray:
        """Mean over the fine cells of every owned coarse cell, summed in global C order of the
        fine cells (offset by offset, so the sequence of additions is fixed)."""
        c_off, c_n = self.coarse.offset, self.coarse.local_shape
        nd = self.coarse.ndim
        lo, cnt = [], []
        for a in range(nd):
            cs = np.arange(c_off[a], c_off[a] + c_n[a])
            lo.append(self.lo[a][cs] - pre[0][a])               # into the region
            cnt.append(self.hi[a][cs] - self.lo[a][cs])
        total = np.zeros(c_n)
        for offs in itertools.product(*[range(int(c.max())) for c in cnt]):
            idx = np.ix_(*[np.minimum(lo[a] + offs[a], region.shape[a] - 1) for a in range(nd)])
            valid = np.ones(c_n, dtype=bool)
            for a in range(nd):
                shape = [1] * nd
                shape[a] = c_n[a]
                valid = valid & (offs[a] < cnt[a]).reshape(shape)
            total = np.where(valid, total + region[idx], total)
        count = np.ones(c_n)
        for a in range(nd):
            shape = [1] * nd
            shape[a] = c_n[a]
            count = count * cnt[a].reshape(shape)
        out = np.zeros(self.coarse.padded_shape)
        out[self.coarse.owned()] = total / count
        return out

    def prolong(self, coarse_local) -> np.ndarray:
        """Piecewise-constant prolongation: padded local coarse array (owned cells read) ->
        padded local fine array (every owned fine cell the value of the coarse cell holding its
        centre; ghosts zero). Collective; only copies, so exact."""
        region, img = self._assemble(coarse_local, self.coarse, self._coarse_box,
                                     lambda r: self._image(self._fine_box(r)))
        f_off, f_n = self.fine.offset, self.fine.local_shape
        idx = np.ix_(*[self.maps[a][f_off[a]:f_off[a] + f_n[a]] - img[0][a]
                       for a in range(self.fine.ndim)])
        out = np.zeros(self.fine.padded_shape)
        out[self.fine.owned()] = region[idx]
        return out


    def _linear_weights(self, axis: int, lo: int, hi: int):
        """``(c0, c1, w)`` for the fine cells ``lo..hi-1`` along ``axis``: the coarse cells on
        either side of each fine centre and the weight of ``c1`` (cell-centred linear
        interpolation; constant beyond the outermost coarse centres). Exact integer arithmetic:
        the fine centre sits at coarse coordinate ``t = ((2 i + 1) n_c - n_f) / (2 n_f)``."""
        nf, nc = self.fine.global_shape[axis], self.coarse.global_shape[axis]
        num = (2 * np.arange(lo, hi, dtype=np.int64) + 1) * nc - nf
        c0 = np.clip(num // (2 * nf), 0, nc - 1)
        c1 = np.minimum(c0 + 1, nc - 1)
        w = np.clip((num - 2 * nf * c0) / (2.0 * nf), 0.0, 1.0)
        return c0, c1, w

    def _linear_image(self, fbox):
        """The coarse box a multilinear prolongation onto the fine box ``fbox`` reads."""
        ends = [self._linear_weights(a, l, h) for a, (l, h) in enumerate(zip(*fbox))]
        return (tuple(int(c0[0]) for c0, _, _ in ends),
                tuple(int(c1[-1]) + 1 for _, c1, _ in ends))

    def prolong_linear(self, coarse_local) -> np.ndarray:
        """Cell-centred multilinear prolongation (bilinear in 2D, trilinear in 3D): padded local
        coarse array (owned cells read) -> padded local fine array (owned cells set, ghosts
        zero). Collective; bitwise independent of both decompositions (each fine cell sums its
        ``2**ndim`` weighted coarse neighbours in the same order). Smooth fields come back to
        second order, where :meth:`prolong` leaves first-order steps at coarse-cell faces."""
        region, img = self._assemble(coarse_local, self.coarse, self._coarse_box,
                                     lambda r: self._linear_image(self._fine_box(r)))
        nd = self.fine.ndim
        f_off, f_n = self.fine.offset, self.fine.local_shape
        axes = [self._linear_weights(a, f_off[a], f_off[a] + f_n[a]) for a in range(nd)]
        total = np.zeros(f_n)
        for corner in itertools.product((0, 1), repeat=nd):
            idx = np.ix_(*[axes[a][corner[a]] - img[0][a] for a in range(nd)])
            weight = np.ones(f_n)
            for a in range(nd):
                w = axes[a][2] if corner[a] else 1.0 - axes[a][2]
                shape = [1] * nd
                shape[a] = f_n[a]
                weight = weight * w.reshape(shape)
            total = total + weight * region[idx]
        out = np.zeros(self.fine.padded_shape)
        out[self.fine.owned()] = total
        return out


def restrict(fine: Decomposition, coarse: Decomposition, fine_local) -> np.ndarray:
    """:meth:`GridTransfer.restrict` in one call."""
    return GridTransfer(fine, coarse).restrict(fine_local)


def prolong(coarse: Decomposition, fine: Decomposition, coarse_local) -> np.ndarray:
    """:meth:`GridTransfer.prolong` in one call."""
    return GridTransfer(fine, coarse).prolong(coarse_local)
