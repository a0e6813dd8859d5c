"""A CPU stand-in for exactly the CuPy subset hpcinv uses, so that ``CupyBackend`` and
``hpcinv/backend/cuda_compile.py`` run in tests on machines without a GPU (issue 19).

:func:`install` puts module objects named ``cupy``, ``cupy.cuda``, ``cupy.cuda.runtime``,
``cupy.cuda.nvrtc`` and ``cupyx`` into ``sys.modules`` (``tests/conftest.py`` calls it when
``HPCINV_CUPY_STANDIN=1``; nothing under ``hpcinv/`` imports this package). What it emulates:

* ``ElementwiseKernel``: CuPy's own generated source, compiled by g++ (:mod:`.kernel`);
* arrays in host memory behind a device-like API with ``__cuda_array_interface__``
  (:mod:`.array`), the stream-ordered pool and pinned buffers (:mod:`.memory`);
* streams, events and devices with CUDA's ordering rules, checked for races by the stream
  checker's vector clocks (:mod:`.streams`, :mod:`.tracking`); work runs eagerly.
"""
from __future__ import annotations

import sys
import types

import numpy as np

from . import array, memory, runtime, streams, tracking
from .kernel import ElementwiseKernel
from .tracking import StreamRaceError

__all__ = ["API", "StreamRaceError", "host_access", "install", "reset", "uninstall"]

host_access = tracking.host_access

#: Public names of the stand-in, per module (each must exist in the real CuPy).
API = {
    "cupy": ["ndarray", "ElementwiseKernel", "empty", "zeros", "arange", "asarray", "asnumpy",
             "copyto", "sum", "max", "amax", "abs", "absolute", "rint", "clip", "float64",
             "float32", "int64", "int32", "dtype", "get_default_memory_pool", "__version__"],
    "cupy.cuda": ["Stream", "Event", "Device", "get_current_stream"],
    "cupy.cuda.runtime": ["getDeviceCount", "getDevice", "memGetInfo", "getDeviceProperties",
                          "runtimeGetVersion", "driverGetVersion", "streamGetPriority",
                          "CUDARuntimeError"],
    "cupy.cuda.nvrtc": ["getVersion"],
    "cupyx": ["empty_pinned"],
}

_SOURCES = {"cupy": array, "cupy.cuda": streams, "cupy.cuda.runtime": runtime,
            "cupy.cuda.nvrtc": runtime.nvrtc, "cupyx": memory}


def _build() -> dict:
    from .real import real_cupy
    version = real_cupy().__version__
    mods = {name: types.ModuleType(name, f"CuPy stand-in: {name}") for name in API}
    extra = {"ElementwiseKernel": ElementwiseKernel, "float64": np.float64,
             "float32": np.float32, "int64": np.int64, "int32": np.int32, "dtype": np.dtype,
             "get_default_memory_pool": memory.get_default_memory_pool,
             "__version__": version}
    for name, names in API.items():
        for attr in names:
            value = extra[attr] if name == "cupy" and attr in extra else \
                getattr(_SOURCES[name], attr)
            setattr(mods[name], attr, value)
    mods["cupy"].cuda = mods["cupy.cuda"]
    mods["cupy.cuda"].runtime = mods["cupy.cuda.runtime"]
    mods["cupy.cuda"].nvrtc = mods["cupy.cuda.nvrtc"]
    mods["cupy"].__standin__ = True
    return mods


_modules: dict = {}
_saved: dict = {}


def modules() -> dict:
    """The stand-in's modules by ``sys.modules`` name (``cupy``, ``cupy.cuda``, ..., built once),
    for a caller that installs them itself (e.g. with ``monkeypatch.setitem``)."""
    if not _modules:
        _modules.update(_build())
    return dict(_modules)


def install():
    """Make ``import cupy`` / ``import cupyx`` give the stand-in (idempotent)."""
    if not _modules:
        _modules.update(_build())
    for name, mod in _modules.items():
        if sys.modules.get(name) is not mod:
            _saved.setdefault(name, sys.modules.get(name))
            sys.modules[name] = mod
    return _modules["cupy"]


def uninstall():
    """Give the names back to whatever held them before :func:`install`."""
    for name, old in _saved.items():
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old
    _saved.clear()


def reset():
    """A fresh stand-in device: no streams, empty pool, no access history."""
    tracking.STATE.reset()
    streams.reset()
    memory.reset()

