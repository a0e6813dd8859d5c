"""Kernel arguments bound by name, checked against the kernel's declaration once per binding.

A launch never passes arguments by position: ``compiled.bind(Pf=..., q=[qx, qy], damp=...)``
maps every declared name to a value and checks, before anything runs:

* every declared array, scalar and int is given exactly once (a per-axis family such as
  ``qx, qy`` may be given as one list ``q=[...]``, see :meth:`Kernel.groups`), and no unknown
  name is given (with the closest declared name suggested);
* arrays are arrays (C-contiguous, the kernel's dtype, all non-``flat`` ones of one shape) and
  scalars and ints are numbers, so an array given for a scalar or the reverse is an error;
* no written array shares memory with any other argument (a swapped ``Pf``/``Pf_new`` pair
  that binds one buffer twice, or an in-place update that the kernel does not support).

The binding is made once per solver (per ping-pong parity), so a launch costs only the call.
"""
from __future__ import annotations

import difflib
import numbers

import numpy as np

from .kernel import Kernel, as_boxes


class KernelArgumentError(TypeError):
    """A kernel was bound with missing, extra, misplaced or aliased arguments."""


def _span(a) -> tuple[int, int]:
    """``(first byte, one past the last byte)`` of an array's memory (NumPy or CuPy)."""
    data = getattr(a, "data", None)
    ptr = getattr(data, "ptr", None)        # CuPy: a MemoryPointer
    if ptr is None:
        ptr = a.__array_interface__["data"][0]
    return int(ptr), int(ptr) + int(a.nbytes)


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0


def resolve_names(kernel: Kernel, given: dict) -> dict:
    """``{declared name: value}`` from keyword arguments, expanding per-axis groups."""
    declared = list(kernel.arrays) + list(kernel.scalars) + list(kernel.ints)
    groups = kernel.groups()
    out = {}
    for key, value in given.items():
        if key in groups and key not in declared:
            members = groups[key]
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") \
                    or _is_array(value) or len(value) != len(members):
                raise KernelArgumentError(
                    f"kernel {kernel.name}: {key}= must be a list of {len(members)} values for "
                    f"{', '.join(members)}")
            pairs = zip(members, value)
        elif key in declared:
            pairs = [(key, value)]
        else:
            close = difflib.get_close_matches(key, declared + list(groups), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KernelArgumentError(f"kernel {kernel.name}: unknown argument {key!r}{hint}; "
                                      f"it takes {', '.join(declared)}")
        for name, v in pairs:
            if name in out:
                raise KernelArgumentError(f"kernel {kernel.name}: argument {name!r} given twice")
            out[name] = v
    missing = [n for n in declared if n not in out]
    if missing:
        raise KernelArgumentError(f"kernel {kernel.name}: missing arguments {', '.join(missing)}")
    return out


def check_values(kernel: Kernel, values: dict, dtype) -> tuple:
    """Type, shape, dtype and aliasing checks; returns the padded shape of the launch."""
    dtype = np.dtype(dtype)
    shape = None
    for name in kernel.arrays:
        a = values[name]
        if not _is_array(a):
            raise KernelArgumentError(f"kernel {kernel.name}: array argument {name!r} got "
                                      f"{type(a).__name__} {a!r:.40}")
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise KernelArgumentError(f"kernel {kernel.name}: array {name!r} must be a "
                                      f"C-contiguous {dtype} array, got {a.dtype}"
                                      f"{'' if a.flags.c_contiguous else ' (not contiguous)'}")
        if name in kernel.flat:
            continue
        if shape is None:
            shape = tuple(a.shape)
        elif tuple(a.shape) != shape:
            raise KernelArgumentError(f"kernel {kernel.name}: array {name!r} has shape "
                                      f"{tuple(a.shape)}, the others {shape}")
    for name in kernel.scalars + kernel.ints:
        v = values[name]
        if _is_array(v) or not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise KernelArgumentError(f"kernel {kernel.name}: {name!r} takes a number, got "
                                      f"{type(v).__name__}")
        if name in kernel.ints and not isinstance(v, numbers.Integral):
            raise KernelArgumentError(f"kernel {kernel.name}: {name!r} takes an integer, got "
                                      f"{v!r}")
    spans = {n: _span(values[n]) for n in kernel.arrays}
    for w in kernel.writes:
        lo, hi = spans[w]
        for other, (olo, ohi) in spans.items():
            if other != w and lo < ohi and olo < hi:
                raise KernelArgumentError(
                    f"kernel {kernel.name}: arrays {w!r} and {other!r} share memory, but "
                    f"{w!r} is written (swapped or repeated buffers?)")
    if shape is None:
        raise KernelArgumentError(f"kernel {kernel.name}: no array of the launch's shape")
    return shape


class BoundKernel:
    """A compiled kernel with all of its arguments, ready to launch over boxes.

    Made by ``backend.kernel(...).bind(**names)``; launched by ``backend.launch(bound, boxes,
    stream)``. Attributes: ``kernel`` (the :class:`Kernel`), ``values`` (name -> value),
    ``shape`` (padded shape of the launch), ``reads``/``writes`` (name -> array).
    """

    def __init__(self, compiled, values: dict, shape: tuple):
        self.compiled, self.kernel = compiled, compiled.kernel
        self.values, self.shape = values, shape
        self.reads = {n: values[n] for n in self.kernel.reads}
        self.writes = {n: values[n] for n in self.kernel.writes}
        self.prepared = compiled.prepare(values)
        self._plans = {}

    def cached_plan(self, boxes) -> "LaunchPlan | None":
        """The plan of an earlier launch over ``boxes`` (``None``: none yet)."""
        return self._plans.get(boxes if isinstance(boxes, tuple) else tuple(boxes))

    def plan(self, boxes) -> "LaunchPlan":
        """What a launch over ``boxes`` needs, made once per distinct box list and cached."""
        key = boxes if isinstance(boxes, tuple) else tuple(boxes)
        p = self._plans.get(key)
        if p is None:
            p = self._plans[key] = LaunchPlan(self, as_boxes(boxes))
        return p

    def geometry(self, boxes):
        """``(compiled launch geometry, cells)`` of ``boxes``."""
        p = self.plan(boxes)
        return p.geometry, p.cells

    def __call__(self, *args, **kwargs):
        raise KernelArgumentError(f"kernel {self.kernel.name}: launch it through the backend, "
                                  "backend.launch(bound, boxes, stream)")


class LaunchPlan:
    """A bound kernel over fixed boxes: the compiled geometry, the call, and the read and write
    footprints (boxes per array) that the stream checker tracks."""

    def __init__(self, bound: BoundKernel, boxes):
        k, shape = bound.kernel, bound.shape
        self.geometry = bound.compiled.geometry(boxes, shape)
        self.cells = self.geometry[-1]
        run, prepared, geometry = bound.compiled.run, bound.prepared, self.geometry
        self.run = lambda: run(prepared, geometry)
        self.reads = [(a, widen(boxes, k.reach, shape) if n not in k.flat else None)
                      for n, a in bound.reads.items()]
        self.writes = [(a, written(boxes, shape) if n not in k.flat else None)
                       for n, a in bound.writes.items()]


def widen(boxes, reach, shape):
    """Boxes widened by ``reach`` cells on every side, clipped to ``shape``."""
    if reach == 0:
        return list(boxes)
    return [(tuple(max(0, l - reach) for l in lo), tuple(min(n, h + reach) for h, n in
                                                         zip(hi, shape))) for lo, hi in boxes]


def written(boxes, shape):
    """What a launch may write: its boxes, plus the upper face along each axis where a box
    reaches the last owned cell (face arrays store that face from the last cell)."""
    return [(lo, tuple(h + 1 if h == n - 1 else h for h, n in zip(hi, shape)))
            for lo, hi in boxes]


class CompiledKernel:
    """Base of the backends' compiled kernels: :meth:`bind` by name, never positional calls."""

    kernel: Kernel
    dtype: np.dtype

    def bind(self, **arguments) -> BoundKernel:
        values = resolve_names(self.kernel, arguments)
        shape = check_values(self.kernel, values, self.dtype)
        return BoundKernel(self, values, shape)

    def __call__(self, *args, **kwargs):
        raise KernelArgumentError(
            f"kernel {self.kernel.name}: arguments are bound by name, "
            f"kernel.bind({', '.join(n + '=...' for n in self.kernel.arrays[:2])}, ...), "
            "and launched with backend.launch(bound, boxes)")

    def prepare(self, values: dict):          # pragma: no cover - abstract
        raise NotImplementedError

    def geometry(self, boxes, shape):         # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, prepared, geometry):        # pragma: no cover - abstract
        raise NotImplementedError
