"""``cupy.ElementwiseKernel`` compiled by the host C++ compiler.

The real CuPy (imported without a GPU) parses the parameter lists (``ParameterInfo``), decides
the types (``_decide_params_type``) and writes the very CUDA source it would hand NVRTC
(``_get_elementwise_kernel_code``): the parameters as ``CArray<T, ndim, ...>`` (``const`` for
in_params), scalars by value, the body inside ``CUPY_FOR(i, _ind.size())``. That text is
compiled here with g++ under a small header (:data:`_SHIM`) in which ``CUPY_FOR`` is a plain
loop over ``i = 0 .. size-1``, ``CArray::operator[](ptrdiff_t)`` is a bounds-checked pointer
offset that also marks each element read (``const``) or written, and ``__device__`` &c. are
empty. The call checks CuPy's preconditions with CuPy's messages (``size=`` iff every array is
raw, output arrays given or allocatable, dtypes), and the launch is recorded on its stream
with exactly the elements it touched (:mod:`.tracking`).

NVRTC options: ``-fmad=false`` becomes ``-ffp-contract=off`` (otherwise ``-ffp-contract=fast``
on ``-march=native``, as NVRTC contracts by default); ``-ftz``, ``-prec-div`` &c. have no host
equivalent and are accepted but not modelled. An unknown option is refused, as NVRTC refuses it.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np

from hpcinv.backend.cache import load_library
from hpcinv.backend.host_compile import compile_library

from . import array as _array
from .streams import get_current_stream
from .tracking import Footprint, issue

_SHIM = r"""
#include <cstddef>
#include <cmath>
#include <algorithm>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
using std::fabs; using std::sqrt; using std::exp; using std::log; using std::fmax;
using std::fmin; using std::pow;
template <typename T, int ndim, bool c_contiguous = false, bool use_32bit = false,
          int core_ndim = 0>
class CArray {
  T* data_; ptrdiff_t size_; unsigned char* mask_; long long* oob_;
  T* at(ptrdiff_t i, unsigned char bit) const {
    if (i < 0 || i >= size_) { if (*oob_ < 0) *oob_ = (long long)i; return data_; }
    mask_[i] |= bit;
    return data_ + i;
  }
 public:
  CArray(T* d, ptrdiff_t n, unsigned char* m, long long* oob)
      : data_(d), size_(n), mask_(m), oob_(oob) {}
  ptrdiff_t size() const { return size_; }
  const T& operator[](ptrdiff_t i) const { return *at(i, 1); }
  T& operator[](ptrdiff_t i) { return *at(i, 2); }
};
template <int ndim, bool use_32bit = false>
class CIndexer {
  ptrdiff_t size_, i_;
 public:
  explicit CIndexer(ptrdiff_t n) : size_(n), i_(0) {}
  ptrdiff_t size() const { return size_; }
  void set(ptrdiff_t i) { i_ = i; }
  ptrdiff_t get() const { return i_; }
};
#define CUPY_FOR(i, n) for (ptrdiff_t i = 0; i < (n); ++i)
"""

_KNOWN_OPTIONS = re.compile(r"^(-fmad=(true|false)|-ftz=(true|false)|-prec-(div|sqrt)=(true|false)"
                            r"|--?std=c\+\+\d\d|-use_fast_math|--use_fast_math|-D\w+(=\S*)?)$")
_BASE_FLAGS = ("-O1", "-fPIC", "-shared", "-std=c++17", "-fno-fast-math", "-w")


def host_flags(options) -> tuple:
    """g++ flags for NVRTC ``options`` (refusing what NVRTC would not accept)."""
    for o in options:
        if not isinstance(o, str) or not _KNOWN_OPTIONS.match(o):
            raise ValueError(f"CuPy stand-in: NVRTC option {o!r} unknown here")
    fmad = "-fmad=false" not in options
    extra = tuple(o for o in options if o.startswith("-D"))
    return _BASE_FLAGS + (("-march=native", "-ffp-contract=fast") if fmad
                          else ("-ffp-contract=off",)) + extra


def _split_params(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + ([cur.strip()] if cur.strip() else [])


def _entry(code: str) -> tuple[str, list[str]]:
    """The g++ translation unit for CuPy's ``code`` and the parameter kinds in order."""
    m = re.search(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', code, re.S)
    name, params = m.group(1), _split_params(m.group(2))
    args, kinds = [], []
    for k, p in enumerate(params):
        typ = p.rsplit(None, 1)[0].removeprefix("const ").strip()
        if typ.startswith("CArray<"):
            elem = _split_params(typ[len("CArray<"):-1])[0]
            args.append(f"{typ}(({elem}*)a[{k}], n[{k}], m[{k}], oob)")
            kinds.append("array")
        elif typ.startswith("CIndexer<"):
            args.append(f"{typ}(size)")
            kinds.append("indexer")
        else:
            args.append(f"*(const {typ}*)a[{k}]")
            kinds.append("scalar")
    entry = (f'\nextern "C" void hpcinv_standin_entry(void** a, long long* n, '
             f'unsigned char** m, long long* oob, long long size)\n'
             f'{{ {name}({", ".join(args)}); }}\n')
    return _SHIM + code + entry, kinds


_libraries: dict = {}


def _compiled(code: str, flags: tuple):
    key = (code, flags)
    if key not in _libraries:
        source, kinds = _entry(code)
        lib = load_library(compile_library(source, flags))
        fn = lib.hpcinv_standin_entry
        fn.restype = None
        _libraries[key] = (fn, kinds)
    return _libraries[key]


class ElementwiseKernel:
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name='kernel',
    reduce_dims=True, preamble='', no_return=False, return_tuple=False, **kwargs)``."""

    def __init__(self, in_params, out_params, operation, name='kernel', reduce_dims=True,
                 preamble='', no_return=False, return_tuple=False, **kwargs):
        from .real import real_cupy
        # CuPy's own constructor: its parameter parsing and name checks, its errors
        self._ek = real_cupy().ElementwiseKernel(in_params, out_params, operation, name,
                                                 reduce_dims, preamble, no_return,
                                                 return_tuple, **kwargs)
        self.name, self.nin, self.nout = name, self._ek.nin, self._ek.nout
        self.nargs, self.no_return, self.return_tuple = self._ek.nargs, no_return, return_tuple
        self._flags = host_flags(tuple(kwargs.get("options", ())))

    def __call__(self, *args, **kwargs):
        ek = self._ek
        size = kwargs.pop('size', -1)
        stream = kwargs.pop('stream', None)
        block_size = kwargs.pop('block_size', 128)
        if len(kwargs):
            raise TypeError('Wrong arguments %s' % kwargs)
        if block_size <= 0:
            raise ValueError('block_size must be greater than zero')
        if len(args) != self.nin and len(args) != self.nargs:
            raise TypeError(f'Wrong number of arguments for {self.name!r}. It must be either '
                            f'{self.nin} or {self.nargs} (with outputs), but given '
                            f'{len(args)}.')
        for a in args:
            if not isinstance(a, (_array.ndarray,) + _array._SCALARS):
                raise TypeError(f'Unsupported type {type(a)}')
        params = ek.in_params + ek.out_params
        nonraw = [a for a, p in zip(args, params) if not p.raw and isinstance(a, _array.ndarray)]
        if size != -1 and nonraw:
            raise ValueError("Specified 'size' can be used only if all of the ndarray are "
                             "'raw'.")
        if size == -1 and not nonraw:
            raise ValueError('Loop size is undecided.')
        if nonraw and len({a.shape for a in nonraw}) > 1:
            raise NotImplementedError("CuPy stand-in: broadcasting of non-raw arrays")
        shape = (int(size),) if size != -1 else nonraw[0].shape
        in_args, out_args = list(args[:self.nin]), list(args[self.nin:])
        in_types = tuple(a.dtype if isinstance(a, _array.ndarray) else None for a in in_args)
        out_types0 = tuple(a.dtype for a in out_args)
        in_t, out_t, type_map = ek._decide_params_type(in_types, out_types0)
        if not out_args:
            if any(p.raw for p in ek.out_params) and size == -1:
                raise ValueError('Output array size is Undecided')
            out_args = [_array.empty(shape, t) for t in out_t]
        for a, p in zip(out_args, ek.out_params):
            if not isinstance(a, _array.ndarray):
                raise TypeError('Output arguments type must be cupy.ndarray')
            if not p.raw and a.shape != shape:
                raise ValueError('Out shape is mismatched')
        ret = None if self.no_return else (
            out_args[0] if not self.return_tuple and self.nout == 1 else tuple(out_args))
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return ret
        self._launch(in_args + out_args, in_t + out_t, type_map, n,
                     get_current_stream() if stream is None else stream)
        return ret

    def _launch(self, inout, types, type_map, n, stream):
        from .real import arginfos, kernel_code
        ek = self._ek
        params = ek.in_params + ek.out_params
        for a, p in zip(inout, params):
            if isinstance(a, _array.ndarray) and not a._a.flags.c_contiguous:
                raise NotImplementedError(f"CuPy stand-in: non-contiguous array for "
                                          f"{p.name!r}")
        code = kernel_code(ek, arginfos(inout, params, types, n), type_map)
        fn, kinds = _compiled(code, self._flags)
        k = len(inout) + 1
        ptrs, sizes = (ctypes.c_void_p * k)(), (ctypes.c_longlong * k)()
        masks_c, keep, masks = (ctypes.c_void_p * k)(), [], {}
        for j, (a, t) in enumerate(zip(inout, types)):
            if isinstance(a, _array.ndarray):
                ptrs[j], sizes[j] = a._a.ctypes.data, a.size
                masks[j] = np.zeros(a.size, dtype=np.uint8)
                masks_c[j] = masks[j].ctypes.data
            else:
                box = np.array([a], dtype=t)           # CScalar.apply_dtype
                keep.append(box)
                ptrs[j] = box.ctypes.data
        oob = ctypes.c_longlong(-1)
        fn(ptrs, sizes, masks_c, ctypes.byref(oob), ctypes.c_longlong(n))
        accesses = []
        for j, mask in masks.items():
            a = inout[j]._a
            base = a.__array_interface__["data"][0] - _root_ptr(a)
            for bit, write in ((1, False), (2, True)):
                fp = Footprint.from_elements(base, a.itemsize, (mask & bit) != 0)
                if fp is not None:
                    accesses.append((a, fp, write))
        if oob.value >= 0:
            raise IndexError(f"CuPy stand-in: kernel {self.name} indexed an array at "
                             f"{oob.value}, outside it (a GPU would read or write foreign "
                             "memory)")
        issue(stream, accesses, f"kernel {self.name}")


def _root_ptr(a: np.ndarray) -> int:
    from hpcinv.backend.checker import _root
    return _root(a).__array_interface__["data"][0]
