"""Backend selection where CuPy is installed but cannot compile kernels (issue 11, item 1).

CuPy 14 loads NVRTC and the CUDA runtime at run time; on a node with only a driver, ``import
cupy`` and ``getDeviceCount()`` succeed and the first kernel fails. hpcinv compiles and runs a
test kernel when it selects the backend (:func:`hpcinv.backend.cuda_compile.check_cupy_usable`):
``--backend cupy`` stops with one line naming the fix, ``--backend auto`` falls back to the host
backend and records why. No GPU is needed: a fake ``cupy`` module (installed in ``sys.modules``
for one test) plays a CuPy that counts a GPU and fails the way the real one does; one test
uses the real CuPy where it is installed. Also: the HDF5 output mode ``hpcinv info`` reports,
the extras in setup.cfg, and the nvcc test's include filter.
"""
from __future__ import annotations

import configparser
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hpcinv.app.cli import main
from hpcinv.backend import cuda_compile, make_backend
from hpcinv.backend.host_backend import HostBackend
from hpcinv.errors import BackendError, GpuUnusableError

ROOT = Path(__file__).resolve().parents[1]

try:                                     # the exception CuPy 14 raises when NVRTC is not found
    from cuda.pathfinder import DynamicLibNotFoundError
except Exception:                        # pragma: no cover - no cuda-pathfinder here
    class DynamicLibNotFoundError(RuntimeError):
        pass

NVRTC_MISSING = DynamicLibNotFoundError(
    'Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file: libnvrtc.so.13')


class CompileException(Exception):
    """Named like ``cupy.cuda.compiler.CompileException``."""


class CUDADriverError(RuntimeError):
    """Named like ``cupy_backends.cuda.api.driver.CUDADriverError``."""


class CUDARuntimeError(RuntimeError):
    """Named like ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""


def fake_cupy(ndev=1, nvrtc=None, compile_error=None, run_error=None, result=None):
    """A ``cupy`` module with ``ndev`` GPUs (or an exception from ``getDeviceCount``) whose
    ``nvrtc.getVersion``, kernel compilation or kernel launch raise the given exceptions."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "14.0.0+fake"

    def device_count():
        if isinstance(ndev, BaseException):
            raise ndev
        return ndev

    def nvrtc_version():
        if nvrtc is not None:
            raise nvrtc
        return (13, 0)

    class Device:
        def __init__(self, i=0):
            self.id = i

        def use(self):
            return None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def elementwise_kernel(in_params, out_params, operation, name, **kw):
        assert kw.get("options") == cuda_compile.NVRTC_OPTIONS     # hpcinv's NVRTC options
        if compile_error is not None:
            raise compile_error

        def launch(x):
            if run_error is not None:
                raise run_error
            return np.asarray(result) if result is not None else 2.0 * x + 1.0
        return launch

    runtime = types.SimpleNamespace(getDeviceCount=device_count, getDevice=lambda: 0,
                                    driverGetVersion=lambda: 13000)
    cp.cuda = types.SimpleNamespace(runtime=runtime, Device=Device,
                                    nvrtc=types.SimpleNamespace(getVersion=nvrtc_version))
    cp.ElementwiseKernel = elementwise_kernel
    cp.arange, cp.float64, cp.asnumpy = np.arange, np.float64, np.asarray
    return cp


@pytest.fixture
def with_cupy(monkeypatch):
    """Install a fake CuPy for this test: ``with_cupy(**fake_cupy_args)``."""
    def install(**kw):
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy(**kw))
        monkeypatch.setattr(cuda_compile, "_driver_present", lambda: True)
    monkeypatch.delenv("HPCINV_STREAM_CHECK", raising=False)
    return install


def _one_line_fix(msg: str):
    assert "\n" not in msg, msg
    assert "hpcinv[cuda1" in msg and "module load cuda" in msg, msg


# --------------------------------------------------------------------------- the check

def test_nvrtc_missing_is_one_line_naming_the_fix(with_cupy):
    with_cupy(nvrtc=NVRTC_MISSING)
    with pytest.raises(GpuUnusableError) as e:
        cuda_compile.check_cupy_usable()
    assert "NVRTC" in str(e.value) and "libnvrtc" in str(e.value)
    _one_line_fix(str(e.value))


@pytest.mark.parametrize("error, words", [
    (CompileException("catastrophic error: cannot open source file \"cuda_fp16.h\""),
     "cannot compile a test kernel with NVRTC"),
    (CUDADriverError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled "
                     "with an unsupported toolchain."), "does not run on GPU 0"),
])
def test_kernel_that_does_not_compile_or_run(with_cupy, error, words):
    phase = "compile_error" if isinstance(error, CompileException) else "run_error"
    with_cupy(**{phase: error})
    with pytest.raises(GpuUnusableError) as e:
        cuda_compile.check_cupy_usable(0)
    assert words in str(e.value), str(e.value)
    _one_line_fix(str(e.value))


def test_wrong_result_is_unusable(with_cupy):
    with_cupy(result=[0.0, 0.0, 0.0, 0.0])
    with pytest.raises(GpuUnusableError, match="returned"):
        cuda_compile.check_cupy_usable(0)


def test_usable_fake_gpu_passes(with_cupy):
    with_cupy()
    assert cuda_compile.check_cupy_usable(0) is sys.modules["cupy"]


def test_no_gpu_is_not_a_warning(with_cupy, monkeypatch):
    """No driver: an ordinary BackendError (auto falls back silently), never GpuUnusable."""
    with_cupy(ndev=CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                    "insufficient for CUDA runtime version"))
    monkeypatch.setattr(cuda_compile, "_driver_present", lambda: False)
    with pytest.raises(BackendError) as e:
        cuda_compile.check_cupy_usable()
    assert not isinstance(e.value, GpuUnusableError)
    assert "no usable GPU" in str(e.value) and "no NVIDIA driver" in str(e.value)
    bk = make_backend("auto")
    assert isinstance(bk, HostBackend) and bk.fallback_warning is False
    assert "no usable GPU" in bk.fallback_reason


def test_runtime_library_missing_with_a_driver(with_cupy):
    with_cupy(ndev=DynamicLibNotFoundError('Failure finding "libcudart.so.13"'))
    with pytest.raises(GpuUnusableError) as e:
        cuda_compile.check_cupy_usable()
    assert "CUDA runtime" in str(e.value)
    _one_line_fix(str(e.value))


# --------------------------------------------------------------------------- make_backend

def test_make_backend_cupy_raises_one_line(with_cupy):
    with_cupy(nvrtc=NVRTC_MISSING)
    with pytest.raises(BackendError) as e:
        make_backend("cupy")
    assert str(e.value).startswith("backend 'cupy': CuPy cannot load NVRTC")
    _one_line_fix(str(e.value))


def test_make_backend_auto_falls_back_with_reason(with_cupy):
    with_cupy(nvrtc=NVRTC_MISSING)
    bk = make_backend("auto")
    assert isinstance(bk, HostBackend) and bk.name == "host"
    assert bk.fallback_warning is True
    assert bk.fallback_reason.startswith("CuPy cannot load NVRTC")
    _one_line_fix(bk.fallback_reason)
    assert make_backend("host").fallback_reason == ""      # nothing fell back


def test_real_cupy_with_a_counted_gpu_is_not_a_traceback(monkeypatch):
    """The installed CuPy, told there is a GPU where there is none (or no NVRTC): the check
    ends in a one-line GpuUnusableError, whichever step fails first."""
    cupy = pytest.importorskip("cupy")
    if cuda_compile.cupy_status().split(", ")[-1].startswith("driver for CUDA"):
        pytest.skip("this machine has a GPU: nothing to simulate")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    with pytest.raises(GpuUnusableError) as e:
        cuda_compile.check_cupy_usable(0)
    assert "\n" not in str(e.value) and "fix:" in str(e.value)


# --------------------------------------------------------------------------- the CLI

def _info(capsys, *args):
    capsys.readouterr()
    code = main(["info", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_auto_shows_the_fallback_and_warns_once(with_cupy, capsys):
    with_cupy(nvrtc=NVRTC_MISSING)
    code, out, err = _info(capsys, "--backend", "auto")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("backend "))
    assert "host (--backend auto: CuPy cannot load NVRTC" in line, out
    assert "hpcinv[cuda1" in line
    cupy_line = next(ln for ln in out.splitlines() if ln.startswith("cupy "))
    assert "NVRTC not found" in cupy_line and "1 GPU(s)" in cupy_line, cupy_line
    warnings = [ln for ln in err.splitlines() if ln.startswith("hpcinv: warning: GPU not used")]
    assert len(warnings) == 1 and len(err.splitlines()) == 1, err
    assert "Traceback" not in out + err


def test_info_cupy_is_a_one_line_error(with_cupy, capsys):
    with_cupy(nvrtc=NVRTC_MISSING)
    code, out, err = _info(capsys, "--backend", "cupy")
    assert code == 2
    assert err.startswith("hpcinv: error: backend 'cupy': CuPy cannot load NVRTC")
    assert err.count("\n") == 1 and "Traceback" not in err
    _one_line_fix(err.strip())


def test_info_without_gpu_is_quiet(with_cupy, monkeypatch, capsys):
    with_cupy(ndev=0)
    code, out, err = _info(capsys)
    assert code == 0 and err == "", err
    assert "host (--backend auto: CuPy finds no GPU)" in out, out


def test_run_header_names_the_fallback(with_cupy, capsys, tmp_path):
    with_cupy(nvrtc=NVRTC_MISSING)
    capsys.readouterr()
    code = main(["forward", "--nx", "15", "--ny", "7", "-q", "-o", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "backend host (GPU unusable: CuPy cannot load NVRTC" in out.out, out.out
    assert out.err.count("hpcinv: warning: GPU not used") == 1, out.err


def test_selftest_warns_and_runs_on_the_host(with_cupy, capsys):
    import json
    with_cupy(nvrtc=NVRTC_MISSING)
    capsys.readouterr()
    code = main(["selftest", "--quick", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err                       # a WARN: the host backend works
    report = json.loads(out.out)
    assert report["backend"] == "host"
    assert report["backend_fallback"].startswith("CuPy cannot load NVRTC")
    env = next(c for c in report["checks"] if c["name"] == "environment")
    assert env["status"] == "WARN" and "GPU unusable" in env["detail"], env
    assert report["environment"][0]["gpu_unusable"] is True
    assert out.err.count("hpcinv: warning: GPU not used") == 1, out.err


# --------------------------------------------------------------------------- HDF5 mode

def test_info_shows_the_hdf5_mode_and_why(capsys, monkeypatch):
    from mpi4py import MPI

    from hpcinv.io.h5mode import describe_mode
    monkeypatch.delenv("HPCINV_H5_MODE", raising=False)
    assert describe_mode(MPI.COMM_SELF) == ("single", "one rank: a plain file")
    monkeypatch.setenv("HPCINV_H5_MODE", "VDS")
    assert describe_mode(MPI.COMM_SELF) == ("vds", "HPCINV_H5_MODE=VDS")
    monkeypatch.setenv("HPCINV_H5_MODE", "bogus")
    mode, why = describe_mode(MPI.COMM_SELF)
    assert mode == "?" and "must be one of" in why
    monkeypatch.setenv("HPCINV_H5_MODE", "vds")
    code, out, err = _info(capsys, "--backend", "host")
    assert code == 0, err
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert lines["h5_mode"].split()[1] == "vds", out
    assert "HPCINV_H5_MODE=vds" in lines["h5_mode_reason"]
    assert "h5py" in lines


# --------------------------------------------------------------------------- packaging

def _extras() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {k: [ln.strip() for ln in v.splitlines() if ln.strip()]
            for k, v in cfg["options.extras_require"].items()}


def test_gpu_extras_bring_nvrtc_and_the_runtime():
    extras = _extras()
    for major in ("12", "13"):
        reqs = extras[f"cuda{major}"]
        assert f"cupy-cuda{major}x>=14" in reqs, reqs
        assert f"cuda-toolkit[cudart,nvrtc]=={major}.*" in reqs, reqs


def test_dev_extra_works_with_a_system_mpi():
    """``dev`` must not pull the mpich wheel (the tests run against a cluster's MPI too); the
    README's test command and .ci/run add ``mpich`` explicitly, the same way."""
    extras = _extras()
    assert not any(r.split("=")[0].split(">")[0].strip() == "mpich" for r in extras["dev"])
    cmd = 'pip install -e ".[dev,mpich,cuda13]"'
    assert cmd + " && bash tests/run_all.sh" in (ROOT / "README.md").read_text()
    assert cmd in (ROOT / ".ci" / "run").read_text()


def test_nvcc_check_drops_toolkit_headers(tmp_path):
    """CuPy adds ``-I`` of the CUDA headers it found (e.g. the nvidia-cuda-runtime wheel's);
    nvcc brings its own, and newer ones make it stop: the nvcc test filters them out."""
    from hpcinv.backend.nvcc_check import _toolkit_include
    toolkit = tmp_path / "cu13" / "include"
    toolkit.mkdir(parents=True)
    (toolkit / "cuda_runtime_api.h").write_text("")
    assert _toolkit_include(f"-I{toolkit}")
    assert not _toolkit_include(f"-I{tmp_path}")
    assert not _toolkit_include("--std=c++17")
