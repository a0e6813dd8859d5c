"""The backend choice is one decision for the whole run (issue 19, finding 2).

With ``--backend cupy`` a rank that cannot use its GPU must not leave the others waiting in
their next collective: every rank raises the same one-line BackendError naming the ranks that
failed (one exit status everywhere). With ``auto`` either every rank uses its GPU or every rank
falls back to the host, the reason naming the ranks that could not; never a mix. Errors of any
type from CuPy while the GPU backend is set up (an ``AttributeError`` of an API CuPy lacks, a
CUDA runtime error) become a BackendError, so ``auto`` falls back.

No GPU is needed: the serial tests use the fake CuPy of ``test_gpu_selection``; the MPI tests
replace the GPU backend's constructor by one that fails on rank 1 only.
"""
from __future__ import annotations

import sys
import types

import pytest
from mpi4py import MPI
from test_gpu_selection import CUDARuntimeError, fake_cupy

from hpcinv.app.cli import main
from hpcinv.backend import cuda_compile, cupy_backend, make_backend
from hpcinv.backend.host_backend import HostBackend
from hpcinv.errors import BackendError, GpuUnusableError


def _fake_cupy_failing_in_setup(exc):
    """A fake CuPy that passes the usability check (it counts a GPU, compiles and runs the
    probe) and raises ``exc`` where the backend creates its streams or calls a runtime
    function the check does not use (stream priorities, memory)."""
    cp = fake_cupy()

    def raise_exc(*args, **kwargs):
        raise exc

    class Runtime(types.SimpleNamespace):
        def __getattr__(self, name):
            return raise_exc
    cp.cuda.runtime = Runtime(**vars(cp.cuda.runtime))
    cp.cuda.Stream = raise_exc
    return cp


@pytest.fixture
def gpu_setup_raises(monkeypatch):
    """``gpu_setup_raises(exc)``: install a fake CuPy whose backend set-up raises ``exc``."""
    def install(exc):
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy_failing_in_setup(exc))
        monkeypatch.setattr(cuda_compile, "_driver_present", lambda: True)
    monkeypatch.delenv("HPCINV_STREAM_CHECK", raising=False)
    return install


ATTRIBUTE_ERROR = AttributeError(
    "module 'cupy.cuda.runtime' has no attribute 'deviceGetStreamPriorityRange'")
RUNTIME_ERROR = CUDARuntimeError("cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are "
                                 "busy or unavailable")


@pytest.mark.parametrize("exc", [ATTRIBUTE_ERROR, RUNTIME_ERROR], ids=["attribute", "runtime"])
def test_auto_falls_back_on_any_cupy_error_at_construction(gpu_setup_raises, exc):
    gpu_setup_raises(exc)
    bk = make_backend("auto")
    assert isinstance(bk, HostBackend)
    assert bk.fallback_warning                 # a GPU is there and left unused: warn
    assert type(exc).__name__ in bk.fallback_reason, bk.fallback_reason
    assert "\n" not in bk.fallback_reason


@pytest.mark.parametrize("exc", [ATTRIBUTE_ERROR, RUNTIME_ERROR], ids=["attribute", "runtime"])
def test_cupy_names_the_error_in_one_line(gpu_setup_raises, exc):
    gpu_setup_raises(exc)
    with pytest.raises(GpuUnusableError) as e:
        make_backend("cupy")
    msg = str(e.value)
    assert "\n" not in msg and type(exc).__name__ in msg, msg


def test_cli_cupy_setup_error_is_one_line_exit_2(gpu_setup_raises, capsys):
    gpu_setup_raises(ATTRIBUTE_ERROR)
    assert main(["info", "--backend", "cupy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AttributeError" in err[0], err


# --------------------------------------------------------------------------- several ranks

class _GpuOnRank0(HostBackend):
    """Plays the GPU backend on rank 0 (a host backend named ``cupy``)."""

    name = "cupy"

    def __init__(self, local_rank=0):
        super().__init__(threads=1)


def _failing_on_rank1(exc):
    """A GPU-backend constructor that works on rank 0 and raises ``exc`` on rank 1."""
    def construct(local_rank=0):
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise exc
        return _GpuOnRank0(local_rank)
    return construct


def _same_everywhere(value):
    values = MPI.COMM_WORLD.allgather(value)
    assert all(v == values[0] for v in values), values
    return values[0]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("exc", [
    GpuUnusableError("backend 'cupy': a test kernel does not run on GPU 0 (CUDADriverError)"),
    ATTRIBUTE_ERROR], ids=["unusable", "attribute"])
def test_cupy_fails_on_every_rank_when_one_rank_fails(monkeypatch, exc):
    monkeypatch.setattr(cupy_backend, "CupyBackend", _failing_on_rank1(exc))
    with pytest.raises(BackendError) as e:
        make_backend("cupy", comm=MPI.COMM_WORLD)
    msg = _same_everywhere(str(e.value))
    assert "\n" not in msg
    size = MPI.COMM_WORLD.Get_size()
    assert f"1 of {size} ranks" in msg and "rank 1" in msg, msg
    assert type(exc).__name__ in msg or "CUDADriverError" in msg, msg


@pytest.mark.mpi(min_size=2)
def test_auto_falls_back_on_every_rank_when_one_rank_fails(monkeypatch):
    monkeypatch.setattr(cupy_backend, "CupyBackend", _failing_on_rank1(ATTRIBUTE_ERROR))
    bk = make_backend("auto", comm=MPI.COMM_WORLD, threads=1)
    # rank 0's GPU is not used either: no mix (the stream checker's host backend is a
    # HostBackend too)
    assert isinstance(bk, HostBackend) and not isinstance(bk, _GpuOnRank0)
    reason = _same_everywhere(bk.fallback_reason)
    assert "rank 1" in reason and "AttributeError" in reason, reason
    assert _same_everywhere(bk.fallback_warning) is True


@pytest.mark.mpi(min_size=2)
def test_auto_uses_gpus_when_every_rank_can(monkeypatch):
    monkeypatch.setattr(cupy_backend, "CupyBackend", lambda local_rank=0: _GpuOnRank0())
    bk = make_backend("auto", comm=MPI.COMM_WORLD)
    assert bk.name == "cupy" and bk.fallback_reason == ""


@pytest.mark.mpi(min_size=2)
def test_cli_exit_status_is_the_same_on_every_rank(monkeypatch, capsys):
    monkeypatch.setattr(cupy_backend, "CupyBackend", _failing_on_rank1(ATTRIBUTE_ERROR))
    code = main(["info", "--backend", "cupy"])
    assert _same_everywhere(code) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if MPI.COMM_WORLD.Get_rank() == 0:
        assert len(err) == 1 and "rank 1" in err[0], err
    else:
        assert err == [], err
