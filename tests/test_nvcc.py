"""Every physics kernel, compiled for sm_90 by nvcc exactly as CuPy would hand it to NVRTC.

No GPU is needed: :func:`hpcinv.backend.nvcc_check.cuda_source` asks the installed CuPy to
generate the ElementwiseKernel's translation unit (the real ``cupy.ElementwiseKernel``
constructor and CuPy's own code generator and headers), and nvcc compiles it to a cubin with
CuPy's options. Kernels are discovered from every ``hpcinv.physics`` module that defines
``all_kernels(ndim)``, so new (e.g. adjoint) kernels are covered without touching this file.
All variants (ndim 2/3, float64/float32, CuPy's 32-/64-bit indexing) compile, grouped into one
translation unit per (ndim, dtype, index width), in parallel.

The host test checks that the host backend wraps the very same body text, and that its
translation unit passes the host compiler's front end.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

import hpcinv.physics
from hpcinv.backend import nvcc_check
from hpcinv.backend.cuda_compile import elementwise_parts
from hpcinv.backend.host_compile import DEFAULT_FLAGS, find_compiler, host_source
from hpcinv.backend.kernel import Kernel

NDIMS = (2, 3)
DTYPES = ("float64", "float32")


def _physics_kernels():
    """[(module name, ndim, kernel)] for every physics module with ``all_kernels``, and the
    halo's pack/unpack kernels."""
    found = []
    names = [i.name for i in pkgutil.iter_modules(hpcinv.physics.__path__,
                                                  hpcinv.physics.__name__ + ".")]
    for name in names + ["hpcinv.parallel.pack"]:
        mod = importlib.import_module(name)
        if callable(getattr(mod, "all_kernels", None)):
            for ndim in NDIMS:
                found += [(name, ndim, k) for k in mod.all_kernels(ndim)]
    return found


KERNELS = _physics_kernels()
CASES = [(m, nd, k, dt) for m, nd, k in KERNELS for dt in DTYPES]
IDS = [f"{k.name}-{dt}" for _, _, k, dt in CASES]


def test_kernels_discovered():
    assert KERNELS, "no hpcinv.physics module defines all_kernels(ndim)"
    names = [(nd, k.name) for _, nd, k in KERNELS]
    assert len(set(names)) == len(names), f"duplicate kernel names: {names}"


# ----------------------------------------------------------------------------- nvcc (CuPy)

def _import_cupy():
    try:
        import cupy   # imports (and builds ElementwiseKernel objects) without a GPU
    except ImportError:
        pytest.skip("CuPy not installed: pip install hpcinv[cuda13]")
    return cupy


def _need_cupy_and_nvcc():
    _import_cupy()
    nvcc = nvcc_check.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or CUDA_PATH, or put nvcc on PATH)")
    return nvcc


_BROKEN = Kernel("hpcinv_nvcc_selftest", ("A",), (), "A[idx] = undefined_in_cuda;",
                 writes=("A",))
#: Writes an array it declared read-only: must not compile (const CArray), as on the host.
_CONST = Kernel("hpcinv_nvcc_const", ("A", "B"), (), "B[idx] = A[idx];", writes=("A",))


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    """Compile every (kernel, ndim, dtype, index width) once.

    The kernels of one (ndim, dtype, index width) compile together, in one translation unit
    (:func:`~hpcinv.backend.nvcc_check.combined_source`: nvcc parses CuPy's headers once, not
    once per kernel: 8 nvcc runs instead of ~160); a group that fails is compiled again kernel
    by kernel, so a failure names its kernel. The two kernels that must fail compile alone.
    Groups run in parallel.

    Returns ``{(ndim, name, dtype, index_32_bits): (path of the kernel's own .cu,
    CompletedProcess of the nvcc run that compiled it)}``.
    """
    nvcc = _need_cupy_and_nvcc()
    d = tmp_path_factory.mktemp("nvcc")
    cmd = nvcc_check.nvcc_command(nvcc, arch="90")
    units, groups = {}, {}
    for _, ndim, k, dt in CASES + [("selftest", 2, _BROKEN, "float64"),
                                   ("selftest", 2, _CONST, "float64")]:
        for idx32 in (True, False):
            path = d / f"{k.name}_{ndim}d_{dt}_{'i32' if idx32 else 'i64'}.cu"
            path.write_text(nvcc_check.cuda_source(k, ndim, dt, index_32_bits=idx32))
            key = (ndim, k.name, dt, idx32)
            units[key] = str(path)
            alone = k in (_BROKEN, _CONST)
            groups.setdefault(key if alone else (ndim, dt, idx32), []).append(key)

    def compile_group(gkey, keys):
        if len(keys) == 1:
            return {keys[0]: nvcc_check.nvcc_compile(units[keys[0]], cmd)}
        path = d / ("group_" + "_".join(map(str, gkey)) + ".cu")
        path.write_text(nvcc_check.combined_source([open(units[k]).read() for k in keys]))
        proc = nvcc_check.nvcc_compile(str(path), cmd)
        if proc.returncode == 0:
            return dict.fromkeys(keys, proc)
        return {k: nvcc_check.nvcc_compile(units[k], cmd) for k in keys}

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        done = [pool.submit(compile_group, g, keys) for g, keys in groups.items()]
        procs = {k: p for f in done for k, p in f.result().items()}
    return {key: (units[key], procs[key]) for key in units}


def test_combined_source_keeps_each_kernel_and_fails_as_alone(tmp_path):
    """A group compiles each of its kernels as alone: a broken one fails the group (naming
    itself), and the units' macros do not leak into the next (``NDIM`` 2 then 3)."""
    nvcc = _need_cupy_and_nvcc()
    cmd = nvcc_check.nvcc_command(nvcc, arch="90")
    (_, nd2, k2, _), (_, nd3, k3, _) = CASES[0], next(c for c in CASES if c[1] == 3)
    good = [nvcc_check.cuda_source(k2, nd2, "float64"), nvcc_check.cuda_source(k3, nd3, "float64")]
    src = nvcc_check.combined_source(good)
    assert src.count("#include <cupy/carray.cuh>") == 1 and "#undef NDIM" in src
    path = tmp_path / "good.cu"
    path.write_text(src)
    assert nvcc_check.nvcc_compile(str(path), cmd).returncode == 0
    path.write_text(nvcc_check.combined_source(good + [nvcc_check.cuda_source(_BROKEN, 2,
                                                                             "float64")]))
    proc = nvcc_check.nvcc_compile(str(path), cmd)
    assert proc.returncode != 0 and "undefined_in_cuda" in proc.stderr


@pytest.mark.parametrize("module,ndim,kernel,dtype", CASES, ids=IDS)
@pytest.mark.parametrize("index_32_bits", [True, False], ids=["idx32", "idx64"])
def test_nvcc_compiles_cupy_kernel(nvcc_results, module, ndim, kernel, dtype, index_32_bits):
    path, proc = nvcc_results[(ndim, kernel.name, dtype, index_32_bits)]
    if proc.returncode != 0:
        pytest.fail(f"nvcc failed on {kernel.name} ({module}, {ndim}D, {dtype}, "
                    f"index_32_bits={index_32_bits}); source {path}\n"
                    f"$ {' '.join(proc.args)}\n{proc.stderr}", pytrace=False)
    src = open(path).read()
    # What nvcc compiled is exactly what CudaKernel hands to CuPy.
    _, _, operation, preamble = elementwise_parts(kernel, ndim, dtype, index_32_bits)
    assert operation in src and preamble in src
    assert ("typedef unsigned int hpcinv_uidx;" in src) == index_32_bits
    assert f'extern "C" __global__ void {kernel.name}(' in src
    assert f"CIndexer<1, {int(index_32_bits)}> _ind" in src
    ctype = {"float64": "double", "float32": "float"}[dtype]
    for a in kernel.writes:   # written arrays: non-const flat C-contiguous
        assert f", CArray<{ctype}, 1, 1, {int(index_32_bits)}> {a}," in src
    for a in kernel.reads:    # read-only arrays: const
        assert f"const CArray<{ctype}, 1, 1, {int(index_32_bits)}> {a}," in src


def test_nvcc_rejects_broken_kernel(nvcc_results):
    """The harness does catch errors (nvcc really compiles what it is given), including a
    write to an array the kernel declared read-only."""
    for idx32 in (True, False):
        _, proc = nvcc_results[(2, _BROKEN.name, "float64", idx32)]
        assert proc.returncode != 0 and "undefined_in_cuda" in proc.stderr
        _, proc = nvcc_results[(2, _CONST.name, "float64", idx32)]
        assert proc.returncode != 0 and "const" in proc.stderr


def test_cuda_call_order_matches_params():
    """CudaKernel passes values in the order of the ElementwiseKernel's parameters (no GPU)."""
    import numpy as np
    cupy = _import_cupy()
    from hpcinv.backend.cuda_compile import CudaKernel
    from hpcinv.backend.kernel import launch_geometry
    _, ndim, kernel = next(c for c in KERNELS if c[2].name.startswith("darcy_apt_step_3d"))
    calls = []
    ck = object.__new__(CudaKernel)      # __init__ needs a GPU; set what the launch uses
    ck.kernel, ck.dtype, ck._cp = kernel, np.dtype("float64"), np
    ck._ek = dict.fromkeys((True, False), lambda *args, **kw: calls.append((args, kw)))
    ck._geometry, ck._count_sync = {}, None
    shape = (5, 6, 7)[:ndim]
    arrays = {a: np.full(shape, j, dtype="float64") for j, a in enumerate(kernel.arrays)}
    scalars = {s: 0.5 + j for j, s in enumerate(kernel.scalars)}
    ints = {s: 10 + j for j, s in enumerate(kernel.ints)}
    bound = ck.bind(**arrays, **scalars, **ints)
    boxes = [((1,) * ndim, tuple(n - 1 for n in shape)), ((0,) * ndim, (1,) * ndim)]
    geom, cells = bound.geometry(boxes)
    ck.run(bound.prepared, geom)
    (args, kw), = calls
    ek = cupy.ElementwiseKernel(*elementwise_parts(kernel, ndim, "float64")[:3], name=kernel.name,
                                no_return=True)
    names = [p.name for p in ek.in_params + ek.out_params]
    assert len(args) == len(names)
    got = dict(zip(names, args))
    for a, arr in arrays.items():
        assert got[a].ndim == 1 and got[a][0] == arr.flat[0] and np.shares_memory(got[a], arr)
    assert {s: got[s] for s in kernel.scalars} == scalars
    assert {s: got[s] for s in kernel.ints} == ints
    expect, n = launch_geometry(boxes, shape)
    assert list(got["hpcinv_boxes"]) == expect and got["hpcinv_nbox"] == 2
    assert got["Ny"] == shape[1] and got["Nz"] == shape[2]
    assert kw == {"size": n} and n == int(np.prod([m - 2 for m in shape])) + 1


# ------------------------------------------------------------------- one body, two backends

@pytest.mark.parametrize("module,ndim,kernel,dtype", CASES, ids=IDS)
def test_same_body_on_both_backends(module, ndim, kernel, dtype):
    _, _, operation, _ = elementwise_parts(kernel, ndim, dtype)
    assert kernel.body in operation
    assert kernel.body in host_source(kernel, ndim, dtype)


def test_host_compiles_same_body(tmp_path):
    """The host translation units of every case pass the host compiler (syntax only)."""
    try:
        cxx = find_compiler()
    except Exception as exc:
        pytest.skip(f"no host C++ compiler: {exc}")
    flags = [f for f in DEFAULT_FLAGS if f not in ("-shared", "-fPIC", "-O3")]
    paths = []
    for _, ndim, k, dt in CASES:
        p = tmp_path / f"{k.name}_{ndim}d_{dt}.cpp"
        p.write_text(host_source(k, ndim, dt))
        paths.append(p)

    def check(p):
        return p, subprocess.run(cxx + flags + ["-fsyntax-only", str(p)],
                                 capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failed = [(p, r.stderr) for p, r in pool.map(check, paths) if r.returncode != 0]
    assert not failed, "\n".join(f"{p}:\n{err}" for p, err in failed)
