"""Checks ``environment`` (per rank: backend and why ``auto`` fell back, device, versions, MPI
library, CUDA-aware decision, HDF5 output mode and why) and ``device-binding`` (one GPU per
rank). ``environment`` WARNs where a GPU is there but CuPy cannot compile or run kernels."""
from __future__ import annotations

import os
import socket

from .runner import Result, _reason, one_line


def environment_of(bk, comm, node) -> dict:
    """This rank's environment (JSON-able)."""
    from mpi4py import MPI
    info = {"rank": comm.Get_rank(), "host": MPI.Get_processor_name() or socket.gethostname(),
            "node_rank": node.Get_rank(), "node_size": node.Get_size(),
            "backend": bk.name, "stream_check": bool(bk.describe().get("stream_check", False)),
            "backend_fallback": getattr(bk, "fallback_reason", ""),
            "gpu_unusable": bool(getattr(bk, "fallback_warning", False)),
            "threads": getattr(bk, "threads", None),
            "cuda_aware": bool(bk.cuda_aware), "cuda_aware_reason": bk.cuda_aware_reason,
            "device_memory": bool(bk.device_memory)}
    try:
        info["device"] = bk.describe().get("device")
    except Exception as exc:
        info["device"] = f"? ({_reason(exc)})"
    if bk.name == "cupy":
        cp = bk.xp
        info["device_id"] = bk.device_id
        for key, get in (("pci_bus_id", lambda: cp.cuda.Device(bk.device_id).pci_bus_id),
                         ("cupy", lambda: cp.__version__),
                         ("nvrtc", lambda: ".".join(map(str, cp.cuda.nvrtc.getVersion()))),
                         ("cuda_runtime", lambda: _cuda_version(
                             cp.cuda.runtime.runtimeGetVersion())),
                         ("cuda_driver", lambda: _cuda_version(
                             cp.cuda.runtime.driverGetVersion())),
                         ("visible_devices", lambda: os.environ.get("CUDA_VISIBLE_DEVICES",
                                                                   "unset"))):
            try:
                info[key] = get()
            except Exception as exc:
                info[key] = f"? ({_reason(exc)})"
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def check_environment(ctx) -> Result:
    from mpi4py import MPI

    import numpy as np
    from ...parallel.cuda_aware import library_info
    from ...solvers.overlap import resolve_overlap
    comm, bk = ctx["comm"], ctx["backend"]
    mine = environment_of(bk, comm, ctx["node"])
    lib = MPI.Get_library_version().strip().splitlines()[0].strip()
    mine["mpi_library"] = one_line(lib, 80)
    mine["mpi_name"] = library_info(MPI.Get_library_version())["name"]
    on, why = resolve_overlap("auto", bk, ctx["node"].Get_size())
    mine["overlap_auto"], mine["overlap_reason"] = on, why
    problems = []
    try:
        from ...io.h5mode import choose_mode, describe_mode, h5py_has_mpi
        import h5py
        mine["h5py"] = h5py.__version__
        mine["h5py_mpi"] = h5py_has_mpi()
        mine["h5_mode_env"] = os.environ.get("HPCINV_H5_MODE", "")
        mine["h5_mode_reason"] = describe_mode(comm)[1]
        mine["h5_mode"] = choose_mode(comm)
    except Exception as exc:
        mine["h5_mode"] = "?"
        problems.append(f"HDF5 output: {_reason(exc)}")
    mine["numpy"] = np.__version__
    if bk.name == "cupy" and str(mine.get("pci_bus_id", "?")).startswith("?"):
        problems.append(f"no PCI bus id for device {mine.get('device_id')}: "
                        f"{mine.get('pci_bus_id')}")
    if problems:
        return Result("FAIL", "; ".join(problems), mine)
    nodes = ctx["nodes"]
    text = (f"{comm.Get_size()} rank(s) on {nodes} node(s), backend {bk.name}"
            f"{' (stream check)' if mine['stream_check'] else ''}, {mine['mpi_name']}, "
            f"halos {_halo_mode(bk)}, HDF5 mode {mine['h5_mode']}")
    if mine["gpu_unusable"]:      # a GPU is there, but CuPy cannot compile or run kernels
        return Result("WARN", f"GPU unusable, backend auto fell back to host: "
                      f"{mine['backend_fallback']}", mine)
    return Result("PASS", text, mine)


def _halo_mode(bk) -> str:
    if not bk.device_memory:
        return "host memory"
    return "device buffers to MPI" if bk.cuda_aware else "staged via host"


def check_device_binding(ctx, envs) -> Result:
    """Rank 0 judges from everyone's environment (``envs``: gathered, rank 0 only)."""
    bk = ctx["backend"]
    if bk.name != "cupy":
        return Result("SKIP", f"backend {bk.name}: no GPU to bind")
    if ctx["comm"].Get_rank() != 0:
        return Result()
    by_dev = {}
    for e in envs:
        key = (e.get("host"), str(e.get("pci_bus_id")))
        by_dev.setdefault(key, []).append(e.get("rank"))
    shared = {k: v for k, v in by_dev.items() if len(v) > 1}
    ndev = len(by_dev)
    if shared:
        (host, bus), ranks = next(iter(shared.items()))
        text = (f"ranks {','.join(map(str, ranks))} share GPU {bus} on {host} "
                f"({len(envs)} ranks on {ndev} device(s))")
        if not ctx["args"].allow_shared_device:
            return Result("FAIL", text + "; bind one GPU per rank (jobs/gpu_bind.sh) or "
                          "pass --allow-shared-device")
        return Result("WARN", text + " (allowed)")
    return Result("PASS", f"{len(envs)} rank(s) on {ndev} distinct device(s)")
