"""``hpcinv info``: what this installation and launch would use, per rank: backend and device
(and why, after a GPU fallback), MPI library, the CUDA-aware decision, the HDF5 output mode,
the optional extras' versions and the rank layout of an example problem; with ``--grid``, the
memory a run of that grid needs per rank and the largest block that fits
(:mod:`hpcinv.app.sizing`)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def cmd_info(args) -> int:
    from mpi4py import MPI

    from ..model import geothermal, problems
    from ..backend import make_backend
    from ..parallel import Decomposition, cuda_aware_mpi, decide_cuda_aware
    from ..backend.cuda_compile import cupy_status
    from ..io.h5mode import describe_mode
    from .console import warn_fallback
    world = MPI.COMM_WORLD
    backend = make_backend(args.backend, comm=world)
    decide_cuda_aware(backend)
    warn_fallback(backend)
    aware, why = cuda_aware_mpi(gpu=backend.device_memory and backend.name != "host")
    h5_mode, h5_why = describe_mode(world)
    shape = geothermal.DEFAULT_SHAPES.get(args.problem)
    if shape is None:
        problems.build(args.problem)   # raises the one-line error with a hint
    decomp = Decomposition(shape, world)
    mine = {"rank": world.Get_rank(), "node_rank": backend.local_rank,
            "host": MPI.Get_processor_name(), **backend.describe(),
            "coords": list(decomp.coords), "local_shape": list(decomp.local_shape)}
    everyone = world.gather(mine, root=0)
    sizing = None
    if getattr(args, "grid", None):          # collective reads done: rank 0 sizes the job
        from .sizing import sizing_lines
        sizing = sizing_lines(args, backend, world.Get_size(), backend.local_size)
    if world.Get_rank() == 0:
        import mpi4py
        import numpy
        lib = MPI.Get_library_version().strip().splitlines()[0]
        chosen = backend.name if args.backend == backend.name else \
            f"{backend.name} (--backend {args.backend}" + \
            (f": {backend.fallback_reason})" if backend.fallback_reason else ")")
        summary = {"hpcinv": _version(), "python": sys.version.split()[0],
                   "numpy": numpy.__version__, "mpi4py": mpi4py.__version__,
                   "backend": chosen, "cupy": cupy_status(),
                   "h5py": _h5py_text(), "h5_mode": h5_mode, "h5_mode_reason": h5_why,
                   "mpi_library": lib, "mpi_library_file": mpi_library_file(),
                   "mpi_standard": "%d.%d" % MPI.Get_version(),
                   "cuda_aware_mpi": aware, "cuda_aware_reason": why,
                   "backend_cuda_aware": backend.cuda_aware,
                   "backend_cuda_aware_reason": backend.cuda_aware_reason,
                   "halo_buffers": _halo_decision(backend),
                   "petsc4py": _extra_version("petsc4py", "petsc", "solver.method = 'petsc'"),
                   "torch": _extra_version("torch", "torch", "hpcinv.autodiff's PyTorch layer"),
                   "jax": _extra_version("jax", "jax", "hpcinv.autodiff's JAX rule"),
                   "ranks": world.Get_size(), "dims": list(decomp.dims),
                   "example_problem": args.problem, "example_shape": list(shape)}
        for k, v in summary.items():
            print(f"{k:18s} {v}")
        print("per rank:")
        for r in everyone:
            print("  " + json.dumps(r))
        for line in sizing or ():
            print(line)
    return 0


_LIBMPI = re.compile(r"(/\S*/lib(?:mpi|mpich)[\w.-]*\.so[\w.]*)$")


def mpi_library_file(maps: str | None = None, prefix: str = sys.prefix) -> str:
    """The MPI library this process loaded (from ``/proc/self/maps``, or ``maps``' text), and
    whether it is the pip wheel's (under this Python environment's ``prefix``) or another
    (the system's, a module's): ``MPICH Version: 4.0.2`` reads the same for both."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "unknown (no /proc/self/maps)"
    for line in maps.splitlines():
        m = _LIBMPI.search(line.strip())
        if m:
            path = m.group(1)
            where = ("pip wheel, in this Python environment"
                     if Path(path).resolve().is_relative_to(Path(prefix).resolve())
                     else "outside this Python environment: the system's or a module's")
            return f"{path} ({where})"
    return "unknown (no libmpi/libmpich mapped)"


def _halo_decision(backend) -> str:
    """Which CUDA-aware value the halo exchanges follow, and why the other does not decide."""
    if not backend.device_memory:
        return ("host memory handed to MPI directly: backend_cuda_aware decides; "
                "cuda_aware_mpi (whether MPI takes GPU pointers) does not matter for "
                "arrays in host memory")
    how = "device buffers to MPI" if backend.cuda_aware else "staged via host buffers"
    return (f"{how}: backend_cuda_aware decides (this run's decision: parallel.cuda_aware, "
            f"else HPCINV_CUDA_AWARE, else the library); cuda_aware_mpi is the library's "
            f"answer without a config")


def _h5py_text() -> str:
    try:
        import h5py
        return f"{h5py.__version__} ({'with MPI' if h5py.get_config().mpi else 'serial'}, " \
               f"HDF5 {h5py.version.hdf5_version})"
    except Exception as exc:
        return f"unusable ({type(exc).__name__}: {exc})"


def _extra_version(dist: str, extra: str, needed_by: str) -> str:
    """Installed version of an optional dependency, or how to get it."""
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return f"not installed ({needed_by} needs pip install 'hpcinv[{extra}]')"


def _version():
    try:
        from importlib.metadata import version
        return version("hpcinv")
    except Exception:
        return "unknown"
