"""Compile CuPy kernels with ``nvcc`` on a machine without a GPU (for ``tests/test_nvcc.py``).

CuPy builds an ElementwiseKernel's CUDA source only when it is called, which needs device
arrays. :func:`cuda_source` asks the installed CuPy to generate the very same translation unit
without a device: it constructs the real ``cupy.ElementwiseKernel`` exactly as
:class:`~hpcinv.backend.cuda_compile.CudaKernel` does, describes the launch arguments the way
``ElementwiseKernel.__call__`` does (every array ``raw``, flattened to 1-D and C-contiguous; the
scalars; a 1-D ``CIndexer``) and calls CuPy's own code generator
(``cupy._core._kernel._get_elementwise_kernel_code``) and header list. :func:`nvcc_command`
reproduces CuPy's NVRTC options for ``nvcc``. These are private CuPy APIs (checked against
CuPy 14.2): if a CuPy release changes them, this module fails loudly rather than testing
something else.

What this cannot check: anything at run time, and NVRTC itself (CuPy's compiler, which shares
nvcc's front end and code generator but defines ``__CUDACC_RTC__``, finds no system headers and
treats unannotated functions as ``__device__``; nvcc preprocesses with the host compiler and
includes ``cuda_runtime.h`` implicitly). So keep preambles free of system ``#include``s and mark
helpers ``HPCINV_INLINE``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np

from .cuda_compile import NVRTC_OPTIONS, elementwise_parts
from .kernel import Kernel

# cupy/_core/_kernel.pxd: cdef enum _ArgKind { ARG_KIND_NDARRAY = 1, _INDEXER, _SCALAR, ... }
_ARG_KIND_NDARRAY, _ARG_KIND_INDEXER, _ARG_KIND_SCALAR = 1, 2, 3

#: NVRTC-only options CuPy adds that nvcc does not accept (nvcc needs none of them here:
#: every function of ours is explicitly ``__device__`` or ``__global__``).
_NVRTC_ONLY = ("--device-as-default-execution-space", "--pch")


def cuda_source(kernel: Kernel, ndim: int, dtype, index_32_bits: bool = True) -> str:
    """The CUDA translation unit CuPy compiles for ``CudaKernel(kernel, ndim, dtype)``.

    ``index_32_bits`` is CuPy's choice for arrays of at most 2**31 bytes and launches of at
    most 2**31 threads (``CArray<T, 1, true, true>``, ``CIndexer<1, true>``); larger ones get
    the 64-bit variants; hpcinv's prelude unravels in 32 bits with them
    (:func:`~hpcinv.backend.cuda_compile.index32`: fewer than 2**31 cells), so both of its variants
    are compiled too.
    """
    import cupy
    from cupy._core import _kernel, _scalar, _carray, core

    in_params, out_params, operation, preamble = elementwise_parts(kernel, ndim, dtype,
                                                                   index_32_bits)
    # The same constructor call as CudaKernel: CuPy validates the parameter lists here.
    ek = cupy.ElementwiseKernel(in_params, out_params, operation, name=kernel.name,
                                preamble=preamble, options=NVRTC_OPTIONS, no_return=True)
    # As in ElementwiseKernel.__call__: scalar in_args are Python/NumPy scalars (dtype None,
    # wrapped in CScalar and cast to the parameter's dtype); raw in_args (read-only arrays, the
    # int64 box table) and the out_args (written arrays) are flat 1-D C-contiguous arrays.
    in_dtypes = tuple(p.dtype if p.raw else None for p in ek.in_params)
    in_types, out_types, type_map = ek._decide_params_type(
        in_dtypes, tuple(p.dtype for p in ek.out_params))
    arginfos = []
    for p, t in zip(ek.in_params, in_types):
        if p.raw:
            arginfos.append(_kernel._ArgInfo(_ARG_KIND_NDARRAY, cupy.ndarray, np.dtype(t), 1,
                                             True, index_32_bits))
        else:
            arginfos.append(_kernel._ArgInfo(_ARG_KIND_SCALAR, _scalar.CScalar, np.dtype(t), 0,
                                             True, True))
    arginfos += [_kernel._ArgInfo(_ARG_KIND_NDARRAY, cupy.ndarray, np.dtype(t), 1, True,
                                  index_32_bits) for t in out_types]
    arginfos.append(_kernel._ArgInfo(_ARG_KIND_INDEXER, _carray.Indexer, None, 1, True,
                                     index_32_bits))
    code = _kernel._get_elementwise_kernel_code(tuple(arginfos), type_map, ek.params,
                                                ek.operation, ek.name, ek.preamble, **ek.kwargs)
    # cupy/_core/core.pyx compile_with_cache: prepend_cupy_headers.
    header = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
    return header + code


def combined_source(sources: list[str]) -> str:
    """One translation unit holding several :func:`cuda_source` units (kernels of distinct
    names), so that nvcc parses CuPy's headers once for all of them: the shared ``#include``
    lines first, then each unit's code in a namespace of its own (its ``extern "C"`` kernel
    keeps its name) followed by ``#undef`` of every macro it defined (``NDIM`` differs
    between units). A unit compiles in it exactly as alone, or the whole fails (then compile
    the units one by one to tell which)."""
    out, includes = [], []
    for n, src in enumerate(sources):
        lines = src.splitlines()
        head = [ln for ln in lines if ln.startswith("#include <")]
        includes += [ln for ln in head if ln not in includes]
        body = "\n".join(ln for ln in lines if not ln.startswith("#include <"))
        macros = dict.fromkeys(re.findall(r"^\s*#\s*define\s+(\w+)", body, re.M))
        out.append(f"namespace hpcinv_unit_{n} {{\n{body}\n}}\n"
                   + "".join(f"#undef {m}\n" for m in macros))
    return "\n".join(includes) + "\n" + "".join(out)


def find_nvcc() -> str | None:
    """Path of ``nvcc`` (``$NVCC``, ``$CUDA_PATH/bin``, ``PATH``), or None."""
    cands = [os.environ.get("NVCC")]
    if os.environ.get("CUDA_PATH"):
        cands.append(os.path.join(os.environ["CUDA_PATH"], "bin", "nvcc"))
    cands.append(shutil.which("nvcc"))
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def nvcc_command(nvcc: str, arch: str = "90") -> list[str]:
    """nvcc plus the options CuPy hands NVRTC for an ElementwiseKernel of ours.

    ``assemble_cupy_compiler_options(("-fmad=false",))`` (CuPy's CCCL and header ``-I``s,
    ``--std=c++17``; without its ``-I`` of CUDA toolkit headers: nvcc uses its own),
    ``-ftz=true`` (``_compile_with_cache_cuda``) and ``-arch=sm_XX``.
    """
    from cupy._core import core
    try:
        opts = tuple(core.assemble_cupy_compiler_options(NVRTC_OPTIONS))
    except Exception:  # needs a CUDA runtime library; fall back to the essential ones
        opts = NVRTC_OPTIONS + ("--std=c++17", "-I" + core._get_header_dir_path())
    opts = tuple(o for o in opts if o not in _NVRTC_ONLY and not _toolkit_include(o))
    return [nvcc, f"-arch=sm_{arch}", *opts, "-ftz=true"]


def _toolkit_include(opt: str) -> bool:
    """``-I<dir>`` of CUDA toolkit headers (``cuda_runtime_api.h`` there), which CuPy adds for
    NVRTC: nvcc brings its own, and those of a newer toolkit (the ``nvidia-cuda-runtime``
    wheel of ``hpcinv[cuda13]``) make an older nvcc stop with "CUDA compiler and CUDA toolkit
    headers are incompatible". CuPy's own include directories have no such file."""
    return opt.startswith("-I") and os.path.isfile(os.path.join(opt[2:], "cuda_runtime_api.h"))


def nvcc_compile(path: str, command: list[str]) -> subprocess.CompletedProcess:
    """``command -cubin path`` (``command`` from :func:`nvcc_command`); the cubin goes beside it.

    ``-cubin`` runs nvcc's whole device pipeline (front end, cicc, ptxas) but no host pass.
    """
    out = os.path.splitext(path)[0] + ".cubin"
    return subprocess.run(list(command) + ["-cubin", path, "-o", out],
                          capture_output=True, text=True, timeout=600)
