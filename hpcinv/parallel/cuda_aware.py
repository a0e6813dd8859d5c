"""Whether the MPI library can take GPU device buffers (CUDA-aware MPI), and why.

One decision per run: :func:`decide_cuda_aware` calls :func:`cuda_aware_mpi` once (by the
caller of ``make_backend``, or by the first halo exchange of a GPU backend when nothing was
decided) and keeps the answer on the backend for every exchange.

The order of evidence, strongest first:

1. what the user said: the ``setting`` argument (the config's ``parallel.cuda_aware`` when it
   is ``true``/``false``), else ``HPCINV_CUDA_AWARE=0|1``;
2. the MPI library's own run-time switches, read only for the library they belong to:
   ``MPICH_GPU_SUPPORT_ENABLED`` (Cray MPICH), ``MPIR_CVAR_ENABLE_GPU=0`` (MPICH),
   ``MV2_USE_CUDA`` (MVAPICH), ``OMPI_MCA_opal_cuda_support`` / ``OMPI_MCA_mpi_cuda_support``
   (Open MPI 4), ``OMPI_MCA_accelerator`` (Open MPI 5) and ``I_MPI_OFFLOAD`` (Intel MPI, whose
   GPU buffer support takes CUDA buffers from 2021.13 on: its Developer Reference, "GPU
   Support"; earlier versions take Level Zero buffers only);
3. only for a GPU backend, and only on libraries where it is safe, ``MPIX_Query_cuda_support()``
   of the library mpi4py is linked to. MPICH before 4 (which includes Cray MPICH 8, "ANL base
   3.4") and libraries derived from it (MVAPICH2, Intel MPI) are never asked: some abort in it
   or do not have it.

Anything weaker (an unknown library, no answer, a query that says 0) means False: staging
through pinned host buffers is always correct, only slower.

**Call it after the rank's GPU was selected and CUDA initialised.** Open MPI 5 answers
``MPIX_Query_cuda_support() = 0`` until CUDA has been initialised in the process (its
accelerator component loads lazily), so a query made before device selection says "no" on a
CUDA-aware build and the run stages silently.
"""
from __future__ import annotations

import os
import re

from mpi4py import MPI

_ON = ("1", "true", "yes", "on", "enabled")
_OFF = ("0", "false", "no", "off", "disabled")


def decide_cuda_aware(bk, setting=None):
    """Set ``bk.cuda_aware`` and ``bk.cuda_aware_reason`` once for the run (after the device
    was selected and CUDA initialised, which Open MPI 5's query needs); ``setting`` as for
    :func:`cuda_aware_mpi`. Host memory: True (MPI reads the arrays directly)."""
    if not bk.device_memory:
        bk.cuda_aware, bk.cuda_aware_reason = True, "host memory: MPI reads the arrays directly"
        return
    if setting is None and bk.name == "host":    # the stream checker: staged unless told
        env = os.environ.get("HPCINV_CUDA_AWARE", "").strip()
        if not env:
            from ..backend.checker import CheckedHostBackend
            bk.cuda_aware, bk.cuda_aware_reason = False, CheckedHostBackend.cuda_aware_reason
            return
    bk.cuda_aware, bk.cuda_aware_reason = cuda_aware_mpi(setting, gpu=bk.name != "host")


def decided_cuda_aware(bk) -> bool:
    """``bk``'s CUDA-aware decision, made now (:func:`decide_cuda_aware`, detected) where the
    caller of ``make_backend`` made none; False for a backend without the attribute."""
    if getattr(bk, "cuda_aware", False) is None:
        decide_cuda_aware(bk)
    return bool(getattr(bk, "cuda_aware", False))


def cuda_aware_mpi(setting=None, gpu: bool = True) -> tuple[bool, str]:
    """Whether MPI can take device buffers, and how that was decided (a short reason).

    Args:
        setting: ``True``/``False`` forces the answer (the config value); ``None`` (or
            ``"auto"``) decides from ``HPCINV_CUDA_AWARE``, the library's settings and, for a
            GPU backend, the library's own query.
        gpu: whether the caller's backend holds its arrays on a GPU. Only then is the MPI
            library asked (``MPIX_Query_cuda_support``); for host backends the answer is
            irrelevant and nothing is called.

    Raises:
        ConfigError: ``setting`` is not None/True/False/"auto", or ``HPCINV_CUDA_AWARE`` is set
            to something other than 0 or 1.
    """
    from ..errors import ConfigError
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        setting = None
    if setting is not None:
        if not isinstance(setting, bool):
            raise ConfigError(f"parallel.cuda_aware must be \"auto\", true or false, "
                              f"got {setting!r}")
        return setting, f"parallel.cuda_aware = {str(setting).lower()} (config)"
    env = os.environ.get("HPCINV_CUDA_AWARE")
    if env is not None and env.strip() != "":
        if env.strip() not in ("0", "1"):
            raise ConfigError(f"HPCINV_CUDA_AWARE must be 0 or 1, got {env!r}")
        return env.strip() == "1", "HPCINV_CUDA_AWARE"

    lib = library_info(_library_version())
    decided = _library_setting(lib["family"], lib["version"])
    if decided is not None:
        return decided
    if not gpu:
        return False, "host backend: MPI gets host buffers (no query)"
    if not lib["query_safe"]:
        return False, (f"{lib['name']}: {lib['why_no_query']}; no setting says CUDA-aware "
                       "(staging through host; HPCINV_CUDA_AWARE=1 if it is)")
    answer = _mpix_query_cuda_support()
    if answer is None:
        return False, (f"{lib['name']}: no MPIX_Query_cuda_support; no setting says "
                       "CUDA-aware (staging through host)")
    if answer:
        return True, "MPIX_Query_cuda_support() = 1"
    hint = (" (Open MPI 5 answers 0 until CUDA is initialised: query after device selection)"
            if lib["family"] == "openmpi" else "")
    return False, f"MPIX_Query_cuda_support() = 0{hint} (staging through host)"


def _flag(name: str):
    """True/False for an on/off value of environment variable ``name``, else None."""
    v = os.environ.get(name)
    if v is None:
        return None
    v = v.strip().lower()
    return True if v in _ON else False if v in _OFF else None


def _library_setting(family: str, version: tuple = ()):
    """(answer, reason) from an explicit run-time switch of this MPI library, or None.

    A switch counts only for the library it belongs to (or when the library is not
    recognised): ``MPICH_GPU_SUPPORT_ENABLED=1`` left in the environment by a Cray module does
    nothing in an Open MPI run.
    """
    def applies(*families):
        return family in families or family == "unknown"

    if applies("cray-mpich"):
        v = _flag("MPICH_GPU_SUPPORT_ENABLED")
        if v is not None:
            return v, f"MPICH_GPU_SUPPORT_ENABLED={int(v)} (Cray MPICH)"
    if applies("mpich", "cray-mpich") and _flag("MPIR_CVAR_ENABLE_GPU") is False:
        return False, "MPIR_CVAR_ENABLE_GPU=0 (MPICH: GPU support switched off)"
    if applies("mvapich"):
        v = _flag("MV2_USE_CUDA")
        if v is not None:
            return v, f"MV2_USE_CUDA={int(v)} (MVAPICH)"
    if applies("openmpi"):
        for name in ("OMPI_MCA_opal_cuda_support", "OMPI_MCA_mpi_cuda_support"):
            v = _flag(name)
            if v is not None:
                return v, f"{name}={int(v)} (Open MPI)"
        acc = os.environ.get("OMPI_MCA_accelerator", "").strip().lower()
        if acc == "cuda":
            return True, "OMPI_MCA_accelerator=cuda (Open MPI 5)"
        if acc in ("null", "^cuda"):
            return False, f"OMPI_MCA_accelerator={acc} (Open MPI 5: CUDA switched off)"
    if family == "intel-mpi":
        return _intel_offload(version)
    return None


def _intel_offload(version: tuple):
    """(answer, reason) from Intel MPI's ``I_MPI_OFFLOAD`` (its GPU features: 0 off; 1 on, or
    on older versions 1 "auto" and 2 "enabled") and ``I_MPI_OFFLOAD_MODE`` (``auto``,
    ``cuda``, ``level_zero``); None where ``I_MPI_OFFLOAD`` is unset or unreadable."""
    v = os.environ.get("I_MPI_OFFLOAD", "").strip().lower()
    if v in _OFF:
        return False, f"I_MPI_OFFLOAD={v} (Intel MPI: GPU buffers off)"
    if v not in _ON + ("2",):
        return None
    mode = os.environ.get("I_MPI_OFFLOAD_MODE", "").strip().lower() or "auto"
    if mode not in ("auto", "cuda"):
        return False, f"I_MPI_OFFLOAD_MODE={mode} (Intel MPI: not CUDA; staging through host)"
    if not version or version < (2021, 13):
        ver = ".".join(map(str, version)) or "of unknown version"
        return False, (f"I_MPI_OFFLOAD={v}, but Intel MPI {ver} takes Level Zero (Intel GPU) "
                       "buffers only, CUDA ones from 2021.13 on (staging through host)")
    return True, f"I_MPI_OFFLOAD={v} (Intel MPI 2021.13+: CUDA buffers)"


def _version(text: str):
    m = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(g) for g in m.group(0).split(".")) if m else ()


def library_info(text: str) -> dict:
    """Family, version and whether ``MPIX_Query_cuda_support`` may be called, from the text of
    ``MPI.Get_library_version()``.

    Returns a dict with ``family`` (``cray-mpich``, ``mpich``, ``mvapich``, ``intel-mpi``,
    ``openmpi`` or ``unknown``), ``name`` (for messages), ``version`` (tuple), ``mpich_base``
    (the MPICH version it derives from, where known), ``query_safe`` and ``why_no_query``.
    """
    info = {"family": "unknown", "name": (text.strip().splitlines() or ["unknown MPI"])[0][:60],
            "version": (), "mpich_base": (), "query_safe": False,
            "why_no_query": "unrecognised MPI library, not asked"}
    if m := re.search(r"CRAY MPICH version\s+([\d.]+)", text, re.I):
        base = re.search(r"ANL base\s+([\d.]+)", text, re.I)
        info.update(family="cray-mpich", version=_version(m.group(1)),
                    mpich_base=_version(base.group(1)) if base else ())
        info["name"] = f"Cray MPICH {m.group(1)}"
        if info["mpich_base"] and info["mpich_base"] >= (4,):
            info.update(query_safe=True, why_no_query="")
        else:
            info["why_no_query"] = ("MPICH base < 4 (Cray MPICH 8 aborts in "
                                    "MPIX_Query_cuda_support), not asked")
    elif m := re.search(r"MVAPICH[\w-]*\s+Version\s*:?\s*([\d.]+)", text, re.I):
        info.update(family="mvapich", version=_version(m.group(1)),
                    name=f"MVAPICH {m.group(1)}",
                    why_no_query="MVAPICH (MPICH 3 based) is not asked; set MV2_USE_CUDA=1")
    elif m := re.search(r"Intel\(R\) MPI Library\s+([\d.]+)", text):
        info.update(family="intel-mpi", version=_version(m.group(1)),
                    name=f"Intel MPI {m.group(1)}",
                    why_no_query="Intel MPI (MPICH 3 based) is not asked; staged unless "
                                 "forced (I_MPI_OFFLOAD=1 on Intel MPI 2021.13+)")
    elif m := re.search(r"Open MPI v?([\d.]+)", text):
        info.update(family="openmpi", version=_version(m.group(1)),
                    name=f"Open MPI {m.group(1)}", query_safe=True, why_no_query="")
    elif m := re.search(r"MPICH Version:\s*([\d.]+)", text, re.I):
        v = _version(m.group(1))
        info.update(family="mpich", version=v, mpich_base=v, name=f"MPICH {m.group(1)}")
        if v >= (4,):
            info.update(query_safe=True, why_no_query="")
        else:
            info["why_no_query"] = "MPICH < 4 has no safe MPIX_Query_cuda_support, not asked"
    return info


def _library_version() -> str:
    """``MPI.Get_library_version()`` (a function so tests can replace it)."""
    return MPI.Get_library_version()


def _mpix_query_cuda_support():
    """``MPIX_Query_cuda_support()`` of the MPI library mpi4py is linked to, or ``None``.

    Open MPI and MPICH >= 4 export it; mpi4py does not wrap it, so it is looked up through the
    mpi4py extension module's dynamic dependencies.
    """
    import ctypes
    try:
        fn = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return bool(fn())
