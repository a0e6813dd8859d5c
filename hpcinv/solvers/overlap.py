"""Box partitions of a local block and the overlapped update-then-exchange pattern."""
from __future__ import annotations


def owned_box(padded_shape):
    """``(lo, hi)`` of the owned cells of a padded block."""
    return tuple(1 for _ in padded_shape), tuple(n - 1 for n in padded_shape)


def shell_and_interior(padded_shape):
    """Split the owned cells into boundary slabs one cell thick and the interior.

    Returns ``(shell, interior)``: ``shell`` is a list of non-overlapping ``(lo, hi)`` boxes
    covering every owned cell that touches a side of the block, ``interior`` the box of the
    rest (possibly empty). Slab along axis ``a`` spans the interior range of the axes before
    ``a`` and the full owned range of the axes after it, so the slabs do not overlap.
    """
    n = [s - 2 for s in padded_shape]
    ndim = len(n)
    shell = []
    for a in range(ndim):
        for side in (0, 1):
            if side == 1 and n[a] == 1:
                break   # one cell thick: the lower slab already covers it
            lo, hi = [], []
            for b in range(ndim):
                if b == a:
                    i = 1 if side == 0 else n[a]
                    lo.append(i), hi.append(i + 1)
                elif b < a:
                    lo.append(2), hi.append(max(2, n[b]))
                else:
                    lo.append(1), hi.append(n[b] + 1)
            if all(h > l for l, h in zip(lo, hi)):
                shell.append((tuple(lo), tuple(hi)))
    interior = (tuple(2 for _ in n), tuple(max(2, m) for m in n))
    return shell, interior


class OverlappedUpdate:
    """Update a cell field and refresh its ghosts, hiding the messages behind the interior.

    ``update(launch, field)`` with ``launch(lo, hi)`` computing the new values of ``field``
    (and anything else) over a box:

    * no neighbours: one launch over the owned box, no messages;
    * ``overlap=True``: boundary slabs (on the backend's boundary stream), ``halo.start``,
      interior concurrently (worker thread on CPUs, second stream on GPUs), ``halo.finish``;
    * ``overlap=False``: one launch over the owned box, then a blocking exchange.
    """

    def __init__(self, padded_shape, backend, halo, overlap: bool = True):
        self.backend, self.halo, self.overlap = backend, halo, overlap
        self.full = owned_box(padded_shape)
        self.shell, self.interior = shell_and_interior(padded_shape)

    def __call__(self, launch, field):
        if not self.halo.active:
            launch(*self.full)
            return
        if not self.overlap:
            launch(*self.full)
            self.backend.synchronize()
            self.halo.exchange(field)
            return
        with self.backend.boundary():
            for lo, hi in self.shell:
                launch(lo, hi)
        self.halo.start(field)
        pending = self.backend.start_interior(lambda: launch(*self.interior))
        self.halo.finish()
        pending.wait()
