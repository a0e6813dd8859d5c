"""CUDA-aware MPI detection (hpcinv.parallel.cuda_aware): the order of evidence, the libraries
that are never queried, and the reasons, with the environment, the library version string and
the MPIX query replaced (no GPU, no CUDA-aware MPI needed)."""
from __future__ import annotations

import pytest

from hpcinv.errors import ConfigError
from hpcinv.parallel import cuda_aware as ca
from hpcinv.parallel import cuda_aware_mpi

CRAY8 = ("MPI VERSION    : CRAY MPICH version 8.1.28.2 (ANL base 3.4a2)\n"
         "MPI BUILD INFO : Wed Nov 15 20:57 2023 (git hash 1cde46f)\n")
CRAY_ANL4 = "MPI VERSION    : CRAY MPICH version 9.0.0.1 (ANL base 4.1.2)\n"
MPICH3 = "MPICH Version:\t3.4.3\nMPICH Release date:\tThu Dec 16 11:20:57 CST 2021\n"
MPICH5 = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25\nMPICH Device: ch4:ucx\n"
OMPI4 = "Open MPI v4.1.6, package: Open MPI user@host Distribution, ident: 4.1.6, repo rev: v4.1.6"
OMPI5 = "Open MPI v5.0.3, package: Open MPI user@host Distribution, ident: 5.0.3, repo rev: v5.0.3"
MV2 = "MVAPICH2 Version      :\t2.3.7\nMVAPICH2 Release date :\tWed March 02 22:00:00 EST 2022\n"
IMPI = "Intel(R) MPI Library 2021.10 for Linux* OS\n"
IMPI13 = "Intel(R) MPI Library 2021.13 for Linux* OS\n"

ENV = ("HPCINV_CUDA_AWARE", "MPICH_GPU_SUPPORT_ENABLED", "MPIR_CVAR_ENABLE_GPU", "MV2_USE_CUDA",
       "OMPI_MCA_opal_cuda_support", "OMPI_MCA_mpi_cuda_support", "OMPI_MCA_accelerator",
       "I_MPI_OFFLOAD", "I_MPI_OFFLOAD_MODE")


class Query:
    """A stand-in for MPIX_Query_cuda_support that records whether it was called."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def __call__(self):
        self.calls += 1
        return self.answer


@pytest.fixture
def mpi(monkeypatch):
    """Set the library string, the query's answer and environment variables."""
    for k in ENV:
        monkeypatch.delenv(k, raising=False)

    def setup(library, answer=None, **env):
        q = Query(answer)
        monkeypatch.setattr(ca, "_library_version", lambda: library)
        monkeypatch.setattr(ca, "_mpix_query_cuda_support", q)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return q
    return setup


def test_no_arguments_still_works_and_answers_for_this_machine():
    aware, why = cuda_aware_mpi()
    assert isinstance(aware, bool) and isinstance(why, str) and why


def test_the_setting_wins_over_everything(mpi):
    q = mpi(OMPI5, answer=True, HPCINV_CUDA_AWARE="1", OMPI_MCA_opal_cuda_support="1")
    assert cuda_aware_mpi(False) == (False, "parallel.cuda_aware = false (config)")
    assert cuda_aware_mpi(True, gpu=False)[0] is True
    assert q.calls == 0
    assert cuda_aware_mpi("auto") == (True, "HPCINV_CUDA_AWARE")      # "auto" = not set
    with pytest.raises(ConfigError, match="parallel.cuda_aware"):
        cuda_aware_mpi("yes")


def test_environment_override_before_library_settings_and_query(mpi):
    q = mpi(CRAY8, answer=True, HPCINV_CUDA_AWARE="0", MPICH_GPU_SUPPORT_ENABLED="1")
    assert cuda_aware_mpi() == (False, "HPCINV_CUDA_AWARE")
    mpi(CRAY8, HPCINV_CUDA_AWARE=" 1 ")
    assert cuda_aware_mpi() == (True, "HPCINV_CUDA_AWARE")
    mpi(CRAY8, HPCINV_CUDA_AWARE="yes")
    with pytest.raises(ConfigError, match="HPCINV_CUDA_AWARE must be 0 or 1"):
        cuda_aware_mpi()
    assert q.calls == 0


@pytest.mark.parametrize("library, env, expected, reason", [
    (CRAY8, {"MPICH_GPU_SUPPORT_ENABLED": "1"}, True, "MPICH_GPU_SUPPORT_ENABLED=1"),
    (CRAY8, {"MPICH_GPU_SUPPORT_ENABLED": "0"}, False, "MPICH_GPU_SUPPORT_ENABLED=0"),
    (MPICH5, {"MPIR_CVAR_ENABLE_GPU": "0"}, False, "MPIR_CVAR_ENABLE_GPU=0"),
    (MV2, {"MV2_USE_CUDA": "1"}, True, "MV2_USE_CUDA=1"),
    (MV2, {"MV2_USE_CUDA": "0"}, False, "MV2_USE_CUDA=0"),
    (OMPI4, {"OMPI_MCA_opal_cuda_support": "true"}, True, "OMPI_MCA_opal_cuda_support=1"),
    (OMPI4, {"OMPI_MCA_opal_cuda_support": "0"}, False, "OMPI_MCA_opal_cuda_support=0"),
    (OMPI4, {"OMPI_MCA_mpi_cuda_support": "0"}, False, "OMPI_MCA_mpi_cuda_support=0"),
    (OMPI5, {"OMPI_MCA_accelerator": "null"}, False, "OMPI_MCA_accelerator=null"),
    (OMPI5, {"OMPI_MCA_accelerator": "cuda"}, True, "OMPI_MCA_accelerator=cuda"),
])
def test_library_settings_decide_before_the_query(mpi, library, env, expected, reason):
    q = mpi(library, answer=not expected, **env)     # the query would say the opposite
    aware, why = cuda_aware_mpi()
    assert aware is expected and reason in why
    assert q.calls == 0


def test_a_setting_of_another_library_is_ignored(mpi):
    """A Cray module's MPICH_GPU_SUPPORT_ENABLED=1 left in an Open MPI run says nothing."""
    q = mpi(OMPI5, answer=False, MPICH_GPU_SUPPORT_ENABLED="1", MV2_USE_CUDA="1")
    aware, why = cuda_aware_mpi()
    assert aware is False and "MPIX_Query_cuda_support() = 0" in why and q.calls == 1
    # For a library hpcinv does not recognise, the settings are all it has.
    mpi("SomeVendor MPI 1.0", MPICH_GPU_SUPPORT_ENABLED="1")
    assert cuda_aware_mpi() == (True, "MPICH_GPU_SUPPORT_ENABLED=1 (Cray MPICH)")


@pytest.mark.parametrize("library", [OMPI4, OMPI5, MPICH5, CRAY_ANL4])
def test_query_on_safe_libraries_for_gpu_backends_only(mpi, library):
    q = mpi(library, answer=True)
    assert cuda_aware_mpi() == (True, "MPIX_Query_cuda_support() = 1") and q.calls == 1
    aware, why = cuda_aware_mpi(gpu=False)
    assert aware is False and "host backend" in why and q.calls == 1     # not asked again


@pytest.mark.parametrize("library, why", [
    (CRAY8, "MPICH base < 4"), (MPICH3, "MPICH < 4"), (MV2, "MVAPICH"), (IMPI, "Intel MPI"),
    ("SomeVendor MPI 1.0", "unrecognised")])
def test_never_query_libraries_known_to_abort_or_unknown(mpi, library, why):
    q = mpi(library, answer=True)
    aware, reason = cuda_aware_mpi()
    assert aware is False and why in reason and "staging through host" in reason
    assert q.calls == 0


def test_intel_mpi_gpu_buffers_from_its_offload_switch(mpi):
    """Intel MPI is never queried; ``I_MPI_OFFLOAD=1`` says CUDA buffers from 2021.13 on."""
    q = mpi(IMPI13, answer=True)
    aware, why = cuda_aware_mpi()
    assert aware is False and "staged unless forced" in why and "I_MPI_OFFLOAD=1" in why
    mpi(IMPI13, I_MPI_OFFLOAD="1")
    assert cuda_aware_mpi() == (True, "I_MPI_OFFLOAD=1 (Intel MPI 2021.13+: CUDA buffers)")
    mpi(IMPI13, I_MPI_OFFLOAD="0")
    assert cuda_aware_mpi() == (False, "I_MPI_OFFLOAD=0 (Intel MPI: GPU buffers off)")
    mpi(IMPI, I_MPI_OFFLOAD="2")                       # 2021.10: Level Zero buffers only
    aware, why = cuda_aware_mpi()
    assert aware is False and "Intel MPI 2021.10 takes Level Zero" in why
    mpi(OMPI5, answer=False, I_MPI_OFFLOAD="1")        # another library's switch: not evidence
    assert cuda_aware_mpi()[1].startswith("MPIX_Query_cuda_support() = 0")
    mpi(IMPI13, I_MPI_OFFLOAD="1", I_MPI_OFFLOAD_MODE="level_zero")
    aware, why = cuda_aware_mpi()
    assert aware is False and "I_MPI_OFFLOAD_MODE=level_zero" in why
    assert q.calls == 0


def test_weak_or_absent_answers_mean_staging(mpi):
    mpi(MPICH5, answer=None)                        # the symbol is missing
    aware, why = cuda_aware_mpi()
    assert aware is False and "no MPIX_Query_cuda_support" in why
    mpi(OMPI5, answer=False)
    aware, why = cuda_aware_mpi()
    assert aware is False and "until CUDA is initialised" in why
    mpi(MPICH5, answer=False, MPIR_CVAR_ENABLE_GPU="1")   # "1" is the default: not evidence
    aware, why = cuda_aware_mpi()
    assert aware is False and why.startswith("MPIX_Query_cuda_support() = 0")
    assert "until CUDA" not in why


@pytest.mark.parametrize("text, family, version, base, safe", [
    (CRAY8, "cray-mpich", (8, 1, 28, 2), (3, 4), False),
    (CRAY_ANL4, "cray-mpich", (9, 0, 0, 1), (4, 1, 2), True),
    ("MPI VERSION : CRAY MPICH version 8.1.30", "cray-mpich", (8, 1, 30), (), False),
    (MPICH3, "mpich", (3, 4, 3), (3, 4, 3), False),
    (MPICH5, "mpich", (5, 0, 2), (5, 0, 2), True),
    (OMPI4, "openmpi", (4, 1, 6), (), True),
    (MV2, "mvapich", (2, 3, 7), (), False),
    (IMPI, "intel-mpi", (2021, 10), (), False),
    ("", "unknown", (), (), False),
])
def test_library_info(text, family, version, base, safe):
    info = ca.library_info(text)
    assert (info["family"], info["version"], info["mpich_base"], info["query_safe"]) == \
        (family, version, base, safe)
    assert info["name"]


def test_this_machines_library_is_recognised():
    """The pip MPICH wheel (or whatever MPI the tests run on) is not 'unknown'."""
    info = ca.library_info(ca._library_version())
    assert info["family"] != "unknown", info


def test_the_parallel_layer_decides_for_device_memory(monkeypatch):
    """``make_backend`` leaves the decision for arrays in device memory open (the backend layer
    does not import MPI's knowledge, issue 21 item 4); the first halo exchange makes it, and
    ``decide_cuda_aware`` makes it where the caller says. Host memory is decided at once."""
    import numpy as np
    from mpi4py import MPI

    from hpcinv.backend import make_backend
    from hpcinv.parallel import Decomposition, HaloExchange, decide_cuda_aware
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert make_backend("host", threads=1).cuda_aware is True        # host memory
    monkeypatch.setenv("HPCINV_STREAM_CHECK", "1")                   # device memory, emulated
    bk = make_backend("host", threads=1)
    assert bk.device_memory and bk.cuda_aware is None
    halo = HaloExchange(Decomposition((8, 6), MPI.COMM_SELF), bk, np.float64)
    assert halo.staged and bk.cuda_aware is False and "stream checker" in bk.cuda_aware_reason
    decide_cuda_aware(bk, True)
    assert bk.cuda_aware is True and "config" in bk.cuda_aware_reason
