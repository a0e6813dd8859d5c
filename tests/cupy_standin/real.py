"""The real CuPy wheel, imported without a GPU, for what it computes without one: parameter
parsing, type decisions and kernel source (:mod:`.kernel`), and the public API names that the
stand-in may offer (:mod:`tests.test_cupy_standin`)."""
from __future__ import annotations

import numpy as np

_real = {}


def real_cupy():
    """The real ``cupy`` module (imported once, before the stand-in takes its name)."""
    if "cupy" not in _real:
        import importlib
        import sys
        saved = {k: sys.modules.pop(k) for k in list(sys.modules)
                 if k == "cupy" or k.startswith("cupy.") or k == "cupyx"
                 or k.startswith("cupyx.")}
        try:
            _real["cupy"] = importlib.import_module("cupy")
            _real["cupyx"] = importlib.import_module("cupyx")
            # submodules by import, not as attributes: when the real CuPy was imported before
            # (e.g. by the conformance test), this second import re-runs only its Python
            # modules, and the cached extension modules are not bound to their packages again
            for name in ("_kernel", "_carray", "_scalar"):
                _real[name] = importlib.import_module(f"cupy._core.{name}")
        finally:
            for k in list(sys.modules):
                if k.split(".")[0] in ("cupy", "cupyx"):
                    del sys.modules[k]
            sys.modules.update(saved)
    return _real["cupy"]


def arginfos(inout, params, types, n) -> tuple:
    """CuPy's ``_ArgInfo`` tuple for an ElementwiseKernel call (``CArray``/scalar/``CIndexer``)
    with CuPy's 32-bit-indexing choice."""
    cp = real_cupy()
    K = _real["_kernel"]
    out = []
    for a, p, t in zip(inout, params, types):
        if hasattr(a, "_a"):
            i32 = a.nbytes <= 2 ** 31 - 1
            out.append(K._ArgInfo(1, cp.ndarray, np.dtype(t), a.ndim if p.raw else 1,
                                  True, i32))
        else:
            out.append(K._ArgInfo(3, _real["_scalar"].CScalar, np.dtype(t), 0, True, True))
    out.append(K._ArgInfo(2, _real["_carray"].Indexer, None, 1, True, n <= 2 ** 31 - 1))
    return tuple(out)


def kernel_code(ek, infos, type_map) -> str:
    """The CUDA source CuPy's ``ElementwiseKernel`` ``ek`` hands NVRTC for these arguments."""
    return _real["_kernel"]._get_elementwise_kernel_code(
        infos, type_map, ek.params, ek.operation, ek.name, ek.preamble, **ek.kwargs)
