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


def resolve_overlap(overlap, backend, ranks_on_node: int = 1) -> tuple[bool, str]:
    """``(overlap on?, why)`` for ``overlap`` = ``True``, ``False`` or ``"auto"``.

    ``auto``: on for GPU backends (the interior runs on its own stream); on the host only where
    a core is free for the interior's worker thread beside each rank's OpenMP team (measured on
    2 cores, 2 ranks x 1 thread: the overlapped demo took 44.6 s against 23.3 s without).
    """
    if overlap is True or overlap is False:
        return overlap, "set by parallel.overlap"
    if overlap != "auto":
        raise ValueError(f"overlap must be true, false or 'auto', got {overlap!r}")
    on, why = backend.overlap_pays(ranks_on_node)
    return on, f"auto: {why}"


class OverlappedUpdate:
    """Update a cell field and refresh its ghosts, hiding the messages behind the interior.

    ``update(bound, field)`` launches the bound kernel ``bound`` (which computes the new values
    of ``field``, and anything else) over the owned cells and refreshes ``field``'s ghosts:

    * no neighbours: one launch over the owned box on ``compute``, no messages;
    * ``overlap=True``: ``compute`` records an event that ``boundary`` and ``interior`` wait
      for; the boundary shell (all slabs in one launch) on ``boundary``; the interior on
      ``interior``, launched before the host waits for anything; ``halo.start`` (pack, sync of
      ``boundary``, messages) and ``halo.finish`` (unpack) on ``boundary``; ``compute`` waits
      for events of both streams. Launches per step: shell, interior, pack, unpack.
    * ``overlap=False``: one launch over the owned box, then the exchange, all on ``compute``.
    """

    def __init__(self, padded_shape, backend, halo, overlap: bool = True):
        self.backend, self.halo, self.overlap = backend, halo, bool(overlap)
        self.full = [owned_box(padded_shape)]
        shell, interior = shell_and_interior(padded_shape)
        self.shell, self.interior = shell, [interior]
        # three events per step, made once and re-recorded (CUDA events without timing)
        self._events = tuple(backend.new_event() for _ in range(3))

    def __call__(self, bound, field):
        bk = self.backend
        if not self.halo.active:
            bk.launch(bound, self.full)
            return
        if not self.overlap:
            bk.launch(bound, self.full)
            self.halo.exchange(field)
            return
        compute, boundary, interior = bk.compute, bk.streams["boundary"], bk.streams["interior"]
        ready, boundary_done, interior_done = self._events
        inputs_ready = bk.record(compute, ready)
        bk.wait(boundary, inputs_ready)
        bk.wait(interior, inputs_ready)
        bk.launch(bound, self.shell, boundary)
        bk.launch(bound, self.interior, interior)    # before the host waits for the boundary
        self.halo.start(field, boundary)
        self.halo.finish()
        bk.wait(compute, bk.record(boundary, boundary_done))
        bk.wait(compute, bk.record(interior, interior_done))
