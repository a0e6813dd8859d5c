"""float32 host vs GPU: subnormals (issue 19, finding 6).

CuPy compiles kernels with ``-ftz=true`` (float32 subnormals flushed to zero on GPUs); the host
backend keeps gradual underflow. ``docs/architecture.md`` ("float32: where host and GPU results
may differ") states exactly that difference; these tests pin both halves of it, so a change on
either side (a host build that flushes, a CuPy that stops flushing) fails here and the text must
be revisited.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from hpcinv.backend import HostBackend, Kernel

ROOT = Path(__file__).resolve().parents[1]
SCALE = Kernel("hpcinv_ftz_probe", ("A", "B"), ("s",), "B[idx] = A[idx] * s;", writes=("B",),
               reach=0)
TINY = float(np.finfo(np.float32).tiny)           # 1.18e-38, the smallest normal float32


def _host_scale(a, s):
    bk = HostBackend(threads=1)
    A = bk.upload(np.asarray(a, dtype=np.float32))
    B = bk.zeros(A.shape, np.float32)
    bound = bk.kernel(SCALE, 2, np.float32).bind(A=A, B=B, s=s)
    bk.launch(bound, ((0, 0), A.shape))
    return bk.to_host(B)


def test_host_float32_keeps_subnormal_results_and_inputs():
    a = np.array([[1e-30, -1e-30], [1e-40, TINY]], dtype=np.float32)   # 1e-40: subnormal
    got = _host_scale(a, 1e-10)
    want = a * np.float32(1e-10)                  # NumPy: IEEE gradual underflow
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert got[0, 0] != 0 and abs(got[0, 0]) < TINY    # a subnormal result, not flushed
    kept = _host_scale(np.array([[1e-40, 3e-39], [0, 1]], dtype=np.float32), 1.0)
    assert kept[0, 0] == np.float32(1e-40) and kept[0, 1] == np.float32(3e-39)  # inputs kept


def test_cupy_compiles_with_flush_to_zero():
    pytest.importorskip("cupy")
    from cupy.cuda import compiler
    assert "'-ftz=true'" in inspect.getsource(compiler._compile_with_cache_cuda)
    from hpcinv.backend import nvcc_check
    assert "-ftz=true" in nvcc_check.nvcc_command("nvcc")       # test_nvcc compiles the same


def test_the_difference_is_documented():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("### float32: where host and GPU results may differ", 1)[1]
    for needle in ("-ftz=true", "1.18e-38", "float64 is not affected",
                   "test_float32_subnormals.py"):
        assert needle in section, needle
