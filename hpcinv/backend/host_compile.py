"""Host backend: the kernel text in an OpenMP loop nest, compiled by the C++ compiler.

Each (kernel, ndim, dtype) is compiled once into a shared library cached on disk under
``$HPCINV_CACHE_DIR`` (default ``~/.cache/hpcinv``), keyed by a hash of the generated source,
the compiler's version and the flags; concurrent ranks serialise the build with a file lock.
The cache is code that later runs execute, so :mod:`.cache` keeps it private (owned by the
user, mode 0700; a group- or world-writable one is refused), never follows links when it
writes, and uses a library only if its SHA-256 matches the manifest written when it was built.
The library is called through ctypes, which releases the GIL, so a kernel can run in a worker
thread while the main thread drives MPI.

Floating-point contraction is disabled (``-ffp-contract=off``) so that a face flux computed
by two neighbouring ranks, or by one rank, is bitwise the same whatever the decomposition.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import BackendError
from .binding import CompiledKernel
from .cache import load_library
from .kernel import BOX_INTS, Kernel, c_type, header, launch_geometry, source_hash

DEFAULT_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-fast-math",
                 "-fPIC", "-shared", "-std=c++17")

_WRAPPER = r"""
#include <cmath>
#include <cstddef>
#include <algorithm>
#define HPCINV_INLINE static inline
using std::fabs; using std::sqrt; using std::exp; using std::log;
/* fmax/fmin with exactly glibc's x86-64 results (maxsd/minsd for ordered operands, the other
   operand when one is NaN) written as selects, so that loops calling them vectorise: GCC
   does not vectorise calls to the libm functions without -ffinite-math-only. */
HPCINV_INLINE double hpcinv_fmax(double a, double b) { return (a > b || b != b) ? a : b; }
HPCINV_INLINE float hpcinv_fmax(float a, float b) { return (a > b || b != b) ? a : b; }
HPCINV_INLINE double hpcinv_fmin(double a, double b) { return (a < b || b != b) ? a : b; }
HPCINV_INLINE float hpcinv_fmin(float a, float b) { return (a < b || b != b) ? a : b; }
/* mixed argument types promote to double, as std::fmax does */
template <class A, class B> HPCINV_INLINE double hpcinv_fmax(A a, B b)
{ return hpcinv_fmax((double)a, (double)b); }
template <class A, class B> HPCINV_INLINE double hpcinv_fmin(A a, B b)
{ return hpcinv_fmin((double)a, (double)b); }
namespace std { using ::hpcinv_fmax; using ::hpcinv_fmin; }   /* std::fmax in kernel text */
#define fmax hpcinv_fmax
#define fmin hpcinv_fmin
/* Boxes smaller than this run on the calling thread: waking a team costs more than it saves
   (thin boundary slabs of the overlapped update, small grids, busy machines). */
#ifndef HPCINV_OMP_MIN_CELLS
#define HPCINV_OMP_MIN_CELLS 16384
#endif
/* The loop body sees the outer indices (ix in 2D; ix, iy in 3D) through per-lane copies that
   the compiler cannot prove uniform (the empty asm hides how the array was filled), so the
   body's tests on them (walls, last owned cell) vectorise as masks: GCC does not vectorise a
   select on a loop-invariant condition, and unswitching the several tests of a fused body
   would need one loop copy per combination. Addresses use the uniform jx, jy. Same values,
   same arithmetic: only the instruction selection changes. */
#define HPCINV_LANES 256
#define HPCINV_LANE_FILL(arr, value, count) \
    ptrdiff_t arr[HPCINV_LANES]; \
    for (ptrdiff_t l_ = 0; l_ < std::min<ptrdiff_t>(count, HPCINV_LANES); ++l_) arr[l_] = (value); \
    __asm__ __volatile__("" : : "r"(arr) : "memory");
%(header)s
extern "C" void %(name)s(%(params)s
    const long long* hpcinv_boxes, long long hpcinv_nbox, long long Ny, long long Nz,
    int nthreads)
{
    (void)Nz;
  for (ptrdiff_t ib = 0; ib < hpcinv_nbox; ++ib) {
    const long long* box_ = hpcinv_boxes + 7 * ib;
    const ptrdiff_t ox = box_[0], oy = box_[1], oz = box_[2];
    const ptrdiff_t ex = box_[3], ey = box_[4], ez = box_[5], start_ = box_[6];
    (void)oz; (void)ez; (void)start_;
#if NDIM == 2
    /* Unit stride known at compile time (2D launches have Nz = 1): contiguous vector
       loads and stores along iy. */
    const ptrdiff_t sz = 1, sy = 1, sx = (ptrdiff_t)Ny;
    (void)sz;
    #pragma omp parallel for num_threads(nthreads) schedule(static) \
        if (nthreads > 1 && ex * ey >= HPCINV_OMP_MIN_CELLS)
    for (ptrdiff_t jx = ox; jx < ox + ex; ++jx) {
        HPCINV_LANE_FILL(lane_ix, jx, ey)
        for (ptrdiff_t y0 = oy; y0 < oy + ey; y0 += HPCINV_LANES) {
            const ptrdiff_t y1 = std::min<ptrdiff_t>(y0 + HPCINV_LANES, oy + ey);
            #pragma omp simd
            for (ptrdiff_t iy = y0; iy < y1; ++iy) {
                const ptrdiff_t ix = lane_ix[iy - y0], iz = 0; (void)ix; (void)iz;
                const ptrdiff_t idx = jx * sx + iy;
                const ptrdiff_t i_all = start_ + (jx - ox) * ey + (iy - oy); (void)i_all;
                %(body)s
            }
        }
    }
#else
    const ptrdiff_t sz = 1, sy = (ptrdiff_t)Nz, sx = (ptrdiff_t)Ny * Nz;
    (void)sz;
    #pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static) \
        if (nthreads > 1 && ex * ey * ez >= HPCINV_OMP_MIN_CELLS)
    for (ptrdiff_t jx = ox; jx < ox + ex; ++jx) {
        for (ptrdiff_t jy = oy; jy < oy + ey; ++jy) {
            HPCINV_LANE_FILL(lane_ix, jx, ez)
            HPCINV_LANE_FILL(lane_iy, jy, ez)
            for (ptrdiff_t z0 = oz; z0 < oz + ez; z0 += HPCINV_LANES) {
                const ptrdiff_t z1 = std::min<ptrdiff_t>(z0 + HPCINV_LANES, oz + ez);
                #pragma omp simd
                for (ptrdiff_t iz = z0; iz < z1; ++iz) {
                    const ptrdiff_t ix = lane_ix[iz - z0], iy = lane_iy[iz - z0];
                    (void)ix; (void)iy;
                    const ptrdiff_t idx = jx * sx + jy * sy + iz;
                    const ptrdiff_t i_all = start_ + ((jx - ox) * ey + (jy - oy)) * ez
                                            + (iz - oz);
                    (void)i_all;
                    %(body)s
                }
            }
        }
    }
#endif
  }
}
"""


def host_source(kernel: Kernel, ndim: int, dtype) -> str:
    """The complete C++ translation unit for one kernel (exposed for inspection and tests)."""
    real = c_type(dtype)
    params = "".join([f"{'' if a in kernel.writes else 'const '}{real}* __restrict__ {a}, "
                      for a in kernel.arrays]
                     + [f"{real} {s}, " for s in kernel.scalars]
                     + [f"long long {s}, " for s in kernel.ints])
    return _WRAPPER % dict(header=header(kernel, ndim, dtype), name=kernel.name, params=params,
                           body="{ " + kernel.body + " }")


def cache_dir() -> Path:
    """The private kernel cache directory, ``$HPCINV_CACHE_DIR/kernels`` (see :mod:`.cache`)."""
    from .cache import kernel_dir
    return kernel_dir()


def find_compiler() -> list[str]:
    """The host C++ compiler command (``$CXX``, else ``c++``/``g++``/``clang++``)."""
    cxx = os.environ.get("CXX")
    candidates = [cxx] if cxx else ["c++", "g++", "clang++"]
    for c in candidates:
        cmd = shlex.split(c)
        if cmd and shutil.which(cmd[0]):
            return cmd
    raise BackendError(
        "no C++ compiler found for the host backend (looked for "
        f"{', '.join(candidates)}); install g++ (apt-get install g++) or set CXX")


_compiler_ids: dict[str, str] = {}


def _compiler_id(cmd: list[str]) -> str:
    key = " ".join(cmd)
    if key not in _compiler_ids:
        try:
            out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
            _compiler_ids[key] = out.stdout.splitlines()[0] if out.stdout else key
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendError(f"C++ compiler {key!r} does not run: {exc}") from exc
    return _compiler_ids[key]


def _cpu_id() -> str:
    """CPU model and feature flags (Linux), identifying what -march=native compiles for."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        import platform
        model = platform.processor() or platform.machine()
    return model + flags


def compile_library(source: str, flags=DEFAULT_FLAGS) -> Path:
    """Compile ``source`` into a cached shared library and return its path."""
    cmd = find_compiler()
    extra = tuple(shlex.split(os.environ.get("HPCINV_CXXFLAGS", "")))
    flags = tuple(flags) + extra
    # -march=native code from one CPU may not run on another sharing the cache (login vs
    # compute nodes): the CPU is part of the key then.
    cpu = _cpu_id() if any(f.startswith("-march=native") for f in flags) else ""
    key = source_hash(source, _compiler_id(cmd), " ".join(flags), cpu)
    from .cache import announced, compile_and_install   # verified, locked, atomic
    with announced(key):                  # a first run's progress line (app/progress.py)
        return compile_and_install(key, cmd, flags, source)


class HostKernel(CompiledKernel):
    """A compiled host kernel; ``bind(**names)`` it, then ``backend.launch(bound, boxes)``."""

    def __init__(self, kernel: Kernel, ndim: int, dtype, nthreads: int):
        self.kernel, self.ndim, self.dtype = kernel, ndim, np.dtype(dtype)
        self.nthreads = nthreads
        lib = load_library(compile_library(host_source(kernel, ndim, dtype)))
        self._fn = getattr(lib, kernel.name)
        # Arguments are passed as ready-made ctypes objects (no argtypes): converting ~25
        # Python values on every call was most of a launch's host cost.
        self._real = ctypes.c_double if self.dtype == np.float64 else ctypes.c_float
        self._fn.restype = None
        self._nthreads = ctypes.c_int(nthreads)

    def prepare(self, values: dict) -> tuple:
        """Pointers, scalars and ints in the C function's order, as ctypes objects (made once
        per binding)."""
        k = self.kernel
        return (tuple(ctypes.c_void_p(values[a].ctypes.data) for a in k.arrays)
                + tuple(self._real(float(values[s])) for s in k.scalars)
                + tuple(ctypes.c_longlong(int(values[i])) for i in k.ints))

    def geometry(self, boxes, shape):
        geom, cells = launch_geometry(boxes, shape)
        buf = (ctypes.c_longlong * max(1, len(geom)))(*geom)
        ny, nz = shape[1], (shape[2] if len(shape) == 3 else 1)
        tail = (ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_longlong(len(geom) // BOX_INTS),
                ctypes.c_longlong(ny), ctypes.c_longlong(nz), self._nthreads)
        return (buf, tail, cells)

    def run(self, prepared, geometry):
        _, tail, cells = geometry
        if cells:
            self._fn(*prepared, *tail)
