"""The stand-in ``cupy.ndarray`` and the array functions hpcinv calls.

An array is a NumPy view (``_a``) onto a pooled block (:mod:`.memory`); every operation that
touches its data is issued on the current stream (or the one given) and recorded by
:mod:`.tracking`, then runs at once with NumPy, so values are exactly the host backend's.
CuPy's preconditions are enforced with CuPy's own messages (``set``, ``get(out=...)``,
implicit NumPy conversion, mixing NumPy arrays into device arithmetic).
"""
from __future__ import annotations

import numbers

import numpy as np

from . import memory
from .streams import Device, get_current_stream
from .tracking import host_access, host_join, issue

_SCALARS = (numbers.Number, np.generic)


def _shape(shape) -> tuple:
    return (int(shape),) if isinstance(shape, (numbers.Integral, np.integer)) else \
        tuple(int(n) for n in shape)


def _alloc(shape, dtype, order='C') -> "ndarray":
    dtype, shape = np.dtype(dtype), _shape(shape)
    if order not in ('C', 'F'):
        raise ValueError(f"order not understood: {order!r}")
    mp = memory.get_default_memory_pool().malloc(int(np.prod(shape, dtype=np.int64))
                                                 * dtype.itemsize)
    a = np.ndarray(shape, dtype=dtype, buffer=mp.mem.buf, order=order)
    return ndarray._wrap(a, mp)


def _device_arg(x, what: str):
    """The NumPy view of a stand-in array, a scalar as is; NumPy arrays are refused as CuPy
    refuses them."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _SCALARS):
        return x
    raise TypeError(f"Unsupported type {type(x)}")


def _run(what, reads, out_fn, stream=None):
    """Issue ``out = out_fn(*numpy reads)`` into a new array on the current stream."""
    args = [_device_arg(r, what) for r in reads]
    value = np.asarray(out_fn(*args))
    out = _alloc(value.shape, value.dtype)
    s = get_current_stream() if stream is None else stream
    issue(s, [(r._a, None, False) for r in reads if isinstance(r, ndarray)]
          + [(out._a, None, True)], what)
    out._a[...] = value
    return out


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = False

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class ndarray:
    """``cupy.ndarray`` (stand-in): device memory that the host reads only through ``get``."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order='C'):
        if memptr is not None or strides is not None:
            raise NotImplementedError("CuPy stand-in: ndarray(memptr=, strides=)")
        a = _alloc(shape, dtype, order)
        self._a, self.data = a._a, a.data

    @classmethod
    def _wrap(cls, a: np.ndarray, data) -> "ndarray":
        obj = cls.__new__(cls)
        obj._a, obj.data = a, data
        return obj

    # --- metadata (no device work) ----------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    device = property(lambda self: Device(self.data.device_id))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"<stand-in cupy.ndarray shape={self.shape} dtype={self.dtype}>"

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def __iter__(self):
        raise TypeError("CuPy stand-in: iterating a device array reads it element by element")

    @property
    def __cuda_array_interface__(self) -> dict:
        """Hands the device pointer to another library (mpi4py): the host side's access to
        the data begins now (counted as a write: a receive or a send, unknown here). mpi4py
        swallows exceptions raised here, so a race is raised at the stand-in's next call."""
        host_access(self._a, True, "__cuda_array_interface__ (MPI)", deferred=True)
        a = self._a
        s = get_current_stream()
        return {"shape": a.shape, "typestr": a.dtype.str, "descr": [("", a.dtype.str)],
                "data": (a.__array_interface__["data"][0], False), "version": 3,
                "strides": None if a.flags.c_contiguous else a.strides,
                "stream": 1 if s.ptr == 0 else s.ptr}

    # --- views ------------------------------------------------------------------------------
    def __getitem__(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, ndarray) for k in keys):          # advanced indexing: a gather
            idx = [k for k in keys if isinstance(k, ndarray)]
            np_key = tuple(k._a if isinstance(k, ndarray) else k for k in keys)
            return _run("gather", [self] + idx, lambda a, *_: a[np_key])
        if any(isinstance(k, (np.ndarray, list)) for k in keys):
            raise NotImplementedError("CuPy stand-in: indexing with host arrays")
        return ndarray._wrap(self._a[key], self.data)

    def reshape(self, *shape, order='C'):
        if len(shape) == 1 and not isinstance(shape[0], (numbers.Integral, np.integer)):
            shape = tuple(shape[0])
        if order != 'C' or not self._a.flags.c_contiguous:
            raise NotImplementedError("CuPy stand-in: reshape of a non-C-contiguous array")
        return ndarray._wrap(self._a.reshape(shape), self.data)

    # --- device work ------------------------------------------------------------------------
    def __setitem__(self, key, value):
        view = self._a[key]
        src = _device_arg(value, "setitem")
        reads = [(value._a, None, False)] if isinstance(value, ndarray) else []
        issue(get_current_stream(), reads + [(view, None, True)], "setitem")
        view[...] = src

    def fill(self, value):
        self[...] = value

    def astype(self, dtype, order='K', casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _run("astype", [self], lambda a: a.astype(dtype))

    def copy(self, order='C'):
        return _run("copy", [self], lambda a: a.copy())

    def __neg__(self):
        return _run("negative", [self], np.negative)

    def __abs__(self):
        return _run("absolute", [self], np.absolute)

    def _binary(self, other, fn, reflected=False):
        if isinstance(other, np.ndarray):
            raise TypeError(f"Unsupported type {type(other)}")
        if not isinstance(other, (ndarray,) + _SCALARS):
            return NotImplemented
        pair = [other, self] if reflected else [self, other]
        return _run(fn.__name__, pair, fn)

    __add__ = lambda self, o: self._binary(o, np.add)
    __radd__ = lambda self, o: self._binary(o, np.add, True)
    __sub__ = lambda self, o: self._binary(o, np.subtract)
    __rsub__ = lambda self, o: self._binary(o, np.subtract, True)
    __mul__ = lambda self, o: self._binary(o, np.multiply)
    __rmul__ = lambda self, o: self._binary(o, np.multiply, True)
    __truediv__ = lambda self, o: self._binary(o, np.true_divide)
    __rtruediv__ = lambda self, o: self._binary(o, np.true_divide, True)

    # --- host transfers ---------------------------------------------------------------------
    def set(self, arr, stream=None):
        """Copies the host array ``arr`` into this array (CuPy's checks and messages)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError('Only numpy.ndarray can be set to cupy.ndarray')
        if self.dtype != arr.dtype:
            raise TypeError(f'{arr.dtype} array cannot be set to {self.dtype} array')
        if self.shape != arr.shape:
            raise ValueError(f'Shape mismatch. Old shape: {self.shape}, new shape: '
                             f'{arr.shape}')
        if self._a.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        elif self._a.flags.f_contiguous:
            arr = np.asfortranarray(arr)
        else:
            raise RuntimeError('Cannot set to non-contiguous array')
        s = get_current_stream() if stream is None else stream
        if memory.is_pinned(arr):       # the copy engine reads it when the copy runs
            issue(s, [(arr, None, False), (self._a, None, True)], "set (pinned host -> device)")
        else:                           # pageable memory: staged by the call itself
            issue(s, [(self._a, None, True)], "set (host -> device)")
        self._a[...] = arr
        if stream is None:
            s.synchronize()

    def get(self, stream=None, order='C', out=None, blocking=True):
        """A host copy (``out``: into that NumPy array), CuPy's checks and messages."""
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError('Only numpy.ndarray can be obtained fromcupy.ndarray')
            if self.dtype != out.dtype:
                raise TypeError(f'{out.dtype} array cannot be obtained from {self.dtype} '
                                'array')
            if self.shape != out.shape:
                raise ValueError(f'Shape mismatch. Expected shape: {self.shape}, actual '
                                 f'shape: {out.shape}')
            if not (out.flags.c_contiguous or out.flags.f_contiguous):
                raise RuntimeError('`out` cannot be specified when copying to '
                                   'non-contiguous ndarray')
            target = out
        else:
            if order.upper() not in ('C', 'F', 'A'):
                raise ValueError(f'unsupported order: {order}')
            target = np.empty(self.shape, dtype=self.dtype)
        s = get_current_stream() if stream is None else stream
        accesses = [(self._a, None, False)]
        pinned = out is not None and memory.is_pinned(out)
        if pinned:                      # written by the copy engine when the copy runs
            accesses.append((out, None, True))
        issue(s, accesses, "get (device -> host)")
        target[...] = self._a
        if blocking or stream is None or not pinned:
            s.synchronize()             # pageable targets: the copy returns when done
        return target

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def item(self):
        return self.get().item()


# --- array creation and functions ---------------------------------------------------------------
def empty(shape, dtype=float, order='C') -> ndarray:
    return _alloc(shape, dtype, order)


def zeros(shape, dtype=float, order='C') -> ndarray:
    a = _alloc(shape, dtype, order)
    issue(get_current_stream(), [(a._a, None, True)], "zeros (memset)")
    a._a[...] = 0
    return a


def arange(start, stop=None, step=1, dtype=None) -> ndarray:
    value = np.arange(start, stop, step, dtype=dtype) if stop is not None else \
        np.arange(start, step=step, dtype=dtype)
    out = _alloc(value.shape, value.dtype)
    issue(get_current_stream(), [(out._a, None, True)], "arange")
    out._a[...] = value
    return out


def asarray(a, dtype=None, order=None, *, blocking=False) -> ndarray:
    """A device array of ``a`` (the same array when it already is one of that dtype)."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    value = np.array(a, dtype=dtype, order='C')            # host data read now
    out = _alloc(value.shape, value.dtype)
    issue(get_current_stream(), [(out._a, None, True)], "asarray (host -> device)")
    out._a[...] = value
    if blocking:
        get_current_stream().synchronize()
    return out


def asnumpy(a, stream=None, order='C', out=None, *, blocking=True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    value = np.asarray(a, order=order)
    if out is None:
        return value
    out[...] = value
    return out


def copyto(dst, src, casting='same_kind', where=None):
    """``dst[...] = src`` on the current stream, with NumPy's casting rule."""
    if where is not None:
        raise NotImplementedError("CuPy stand-in: copyto(where=)")
    if not isinstance(dst, ndarray):
        raise TypeError(f"Unsupported type {type(dst)}")
    if isinstance(src, ndarray):
        if not np.can_cast(src.dtype, dst.dtype, casting):
            raise TypeError(f"Cannot cast array data from {src.dtype!r} to {dst.dtype!r} "
                            f"according to the rule {casting!r}")
        np.broadcast_shapes(src.shape, dst.shape)
        issue(get_current_stream(), [(src._a, None, False), (dst._a, None, True)], "copyto")
        np.copyto(dst._a, src._a, casting=casting)
    elif isinstance(src, _SCALARS):
        issue(get_current_stream(), [(dst._a, None, True)], "copyto (scalar)")
        np.copyto(dst._a, src, casting="unsafe")
    else:
        raise TypeError(f"Unsupported type {type(src)}")


def sum(a, axis=None, dtype=None, out=None, keepdims=False):     # noqa: A001 - cupy.sum
    if out is not None:
        raise NotImplementedError("CuPy stand-in: sum(out=)")
    return _run("sum", [a], lambda v: np.sum(v, axis=axis, dtype=dtype, keepdims=keepdims))


def amax(a, axis=None, out=None, keepdims=False):
    if out is not None:
        raise NotImplementedError("CuPy stand-in: amax(out=)")
    return _run("amax", [a], lambda v: np.max(v, axis=axis, keepdims=keepdims))


def max(a, axis=None, out=None, keepdims=False):    # noqa: A001 - cupy.max
    return amax(a, axis=axis, out=out, keepdims=keepdims)


def _ufunc(name, fn):
    def ufunc(x, /, out=None, **kwargs):       # a ufunc takes its inputs positionally only
        if out is not None or kwargs:
            raise NotImplementedError(f"CuPy stand-in: {name}(out=, ...)")
        return _run(name, [x], fn)
    ufunc.__name__ = name
    return ufunc


abs = absolute = _ufunc("absolute", np.absolute)    # noqa: A001 - cupy.abs
rint = _ufunc("rint", np.rint)


def clip(a, a_min, a_max, out=None, **kwargs):
    if out is not None or kwargs:
        raise NotImplementedError("CuPy stand-in: clip(out=, ...)")
    return _run("clip", [a], lambda v: np.clip(v, a_min, a_max))
