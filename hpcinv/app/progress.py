"""Progress lines of the run commands besides the inversion's iterations (issue 22): the PT
solves' residual lines, labelled with what they solve, and the kernel compilation of a first
run (a cold kernel cache), which would otherwise be seconds of silence before the header and
would count in the ETA of the iteration that compiled a kernel late.

Both print through a :class:`~hpcinv.app.run.Reporter` (rank 0's ``say``, ``--quiet``,
``--json``).
"""
from __future__ import annotations

import time


class Progress:
    """Rank-0 progress lines of PT solves, at most one per ``every`` seconds, each labelled
    with :attr:`label` (what the solve is for, e.g. ``"synthetic observations"``) when set."""

    def __init__(self, say, quiet: bool, every: float = 1.0, label: str = ""):
        self.say, self.quiet, self.every, self.label = say, quiet, every, label
        self._last = -1e30

    def __call__(self, it, err, elapsed, what="forward"):
        now = time.perf_counter()
        if self.quiet or now - self._last < self.every:
            return
        self._last = now
        head = f"{self.label}: " if self.label else ""
        self.say(f"{head}{what:8s} iter {it:8d}  residual {err:.3e}  elapsed {elapsed:8.2f} s")


class CompileNotice:
    """While active (``with CompileNotice(reporter):``), a line before the first kernel that
    is not in the kernel cache is compiled, ``compiling kernels (first run, N kernels): S s``
    once the set-up is done (:meth:`summary`), and every compile's seconds handed to
    ``reporter.pause`` (kept out of the ETA). Host backend: see
    :func:`hpcinv.backend.cache.add_compile_listener`."""

    def __init__(self, reporter):
        self.reporter = reporter
        self.count, self.seconds = 0, 0.0
        self._announced = self._summarised = False
        self._remove = None

    def __enter__(self):
        from ..backend.cache import add_compile_listener
        self._remove = add_compile_listener(self)
        return self

    def __exit__(self, *exc):
        if self._remove is not None:
            self._remove()
        return False

    def __call__(self, phase: str, seconds: float):
        if phase == "start" and not self._announced:     # (after the set-up: silently)
            self._announced = True
            self.reporter.progress("compile", "compiling kernels (first run: not in the kernel "
                                   "cache yet; later runs skip this) ...")
        elif phase == "done":
            self.count += 1
            self.seconds += seconds
            self.reporter.pause(seconds)

    def summary(self):
        """The line saying how many kernels the set-up compiled and how long it took (none if
        every kernel was cached); the set-up is over: later compiles are only kept out of the
        ETA, without a line between the iterations."""
        self._announced = True          # later compiles (a kernel first used in an iteration)
        if self.count and not self._summarised:
            self._summarised = True
            n, s = self.count, self.seconds
            self.reporter.progress("compile", f"compiling kernels (first run, {n} kernels): "
                                   f"{s:.1f} s", kernels=n, seconds=round(s, 3))
