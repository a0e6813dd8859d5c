"""The package's layers and its import graph, read from the source's imports (no module is run;
every import counts: top level, inside functions, ``TYPE_CHECKING`` blocks).

Inside the library a module imports only its own package and the packages to its left in

    backend < parallel < io < model < physics < solvers < inverse < autodiff

placed by what each imports today:

* ``backend``: arrays, streams, kernels and their compilers; no other hpcinv package (the
  CUDA-aware-MPI decision, which needs MPI's knowledge, is made in ``parallel``);
* ``parallel``: decomposition, halo exchange, reductions, transfers, the CUDA-aware decision;
  it uses ``backend``'s kernels (pack/unpack);
* ``io``: HDF5 fields, checkpoints, history, run directories; it imports no library package
  today and sits above ``parallel`` so that it may use communicators' helpers;
* ``model``: grids and the built-in problems (a grid holds a ``parallel`` decomposition);
* ``physics``: kernel texts (``backend.Kernel``), never MPI;
* ``solvers``: the PT and PETSc solvers (backend, parallel, physics);
* ``inverse``: the adjoint gradient, warm starts, optimisers (physics, solvers, parallel);
* ``autodiff``: JAX/PyTorch layers over ``inverse``'s gradient.

``hpcinv.errors`` sits below them all (any module may import it). Above the library: the config
layer (``hpcinv.config``, which may import the library), the application layer
(``hpcinv.app``, which may import anything) and ``hpcinv.api``/``hpcinv`` (the package's front
door): the library never imports config, app or api, config never imports app, and physics
never imports MPI (it is pure kernel text).

No import cycles: in the graph of hpcinv's modules (an edge for every import, to the module
imported and to the packages whose ``__init__`` that import runs first, except the importer's
own packages) no two modules reach each other. The checkers are themselves tested on made-up
modules, so a rule that could never fail would show.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hpcinv"
#: the library's layers, lowest first: a package imports only itself and those before it
ORDER = ("backend", "parallel", "io", "model", "physics", "solvers", "inverse", "autodiff")
LIBRARY = ORDER
RULES = {pkg: ("hpcinv.config", "hpcinv.app", "hpcinv.api")
         + tuple(f"hpcinv.{above}" for above in ORDER[i + 1:]) for i, pkg in enumerate(ORDER)}
RULES["config"] = ("hpcinv.app",)
RULES["physics"] += ("mpi4py",)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``[(line, imported name)]`` of a module's source, relative imports made absolute
    (imports anywhere: top level, functions, ``TYPE_CHECKING`` blocks); ``from m import x``
    gives ``m.x``."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from .. import config", "from .kernel import Kernel": each name under its module
            # (the graph resolves a name to the module that holds it, or that it is)
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that its layer forbids."""
    parts = module.split(".")
    layer = parts[1] if len(parts) > 1 else ""
    banned = RULES.get(layer, ())
    return [f"{module}:{line} imports {target}" for line, target in
            imports(source, module, is_package)
            if any(target == b or target.startswith(b + ".") for b in banned)]


def package_sources() -> dict[str, tuple[str, bool]]:
    """``{module: (source, is_package)}`` of every module of hpcinv."""
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 40
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in files}


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` among ``sources`` (as :func:`package_sources`): an
    imported name resolves to the longest module name it starts with (``from . import f``
    where ``f`` is a function of the package: the package itself); importing ``a.b.c`` also
    runs ``a.b``'s ``__init__`` (an edge to ``a.b``) unless ``a.b`` holds the importer (then
    it is already running)."""
    graph = {}
    for module, (source, is_package) in sources.items():
        own = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
        edges = set()
        for _, target in imports(source, module, is_package):
            while target and target not in sources:
                target = target.rpartition(".")[0]
            parts = target.split(".")
            edges |= {target} | ({".".join(parts[:k]) for k in range(1, len(parts))} - own)
        graph[module] = edges - {module, ""}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_layers_are_respected():
    found = []
    for module, (source, is_package) in package_sources().items():
        found += violations(source, module, is_package)
    assert not found, "layer violations:\n" + "\n".join(found)


def test_no_import_cycles():
    found = cycles(import_graph(package_sources()))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("importer,imported", [
    ("hpcinv.app.info", "hpcinv.app.cli"),            # warn_fallback: app/console.py
    ("hpcinv.config.schema", "hpcinv.config.validate"),   # config.validate_config(cfg)
    ("hpcinv.app.plot_fields", "hpcinv.app.plot"),    # drawing: app/plot_draw.py
    ("hpcinv.backend", "hpcinv.parallel"),            # CUDA-aware: parallel.decide_cuda_aware
])
def test_the_cut_circles_stay_cut(importer, imported):
    graph = import_graph(package_sources())
    assert importer in graph and imported in graph
    assert imported not in graph[importer]


MADE_UP = {
    "hpcinv.errors": ("", False),
    "hpcinv.backend": ("from .kernel import Kernel\n", True),
    "hpcinv.backend.kernel": ("from ..errors import BackendError\n", False),
    "hpcinv.parallel": ("from .halo import HaloExchange\n", True),
    "hpcinv.parallel.halo": ("from .pack import PACK\n", False),
    "hpcinv.parallel.pack": ("from ..backend.kernel import Kernel\n", False),
    "hpcinv.app": ("", True),
    "hpcinv.app.cli": ("from .info import cmd_info\n", False),
    "hpcinv.app.info": ("def cmd_info(args):\n    return 0\n", False),
}


def test_made_up_package_without_cycles():
    """A package importing its submodules, submodules importing siblings and lower layers:
    no cycle (the importer's own packages are not edges)."""
    assert cycles(import_graph(MADE_UP)) == []


@pytest.mark.parametrize("module,source,cycle", [
    # backend's __init__ reaching into parallel inside a function, parallel importing a
    # backend kernel: a cycle through the package's __init__
    ("hpcinv.backend", "from .kernel import Kernel\ndef f():\n"
                       "    from ..parallel.cuda_aware import decide\n",
     ["hpcinv.backend", "hpcinv.parallel", "hpcinv.parallel.halo", "hpcinv.parallel.pack"]),
    ("hpcinv.app.info", "def cmd_info(args):\n    from .cli import warn_fallback\n",
     ["hpcinv.app.cli", "hpcinv.app.info"]),
    ("hpcinv.backend.kernel", "from hpcinv.backend import Kernel\n",
     ["hpcinv.backend", "hpcinv.backend.kernel"]),
])
def test_a_reintroduced_cycle_is_caught(module, source, cycle):
    sources = dict(MADE_UP, **{module: (source, MADE_UP[module][1])})
    assert cycle in cycles(import_graph(sources))


@pytest.mark.parametrize("module,source", [
    ("hpcinv.solvers.apt", "from ..config import load\n"),
    ("hpcinv.inverse.optimise", "from ..config.validate import hint\n"),
    ("hpcinv.backend.host_compile", "import hpcinv.app.cli\n"),
    ("hpcinv.io.h5write", "def f():\n    from .. import config\n"),
    ("hpcinv.autodiff", "from hpcinv.app.assembly import build\n"),
    ("hpcinv.physics.darcy", "from mpi4py import MPI\n"),
    ("hpcinv.config.schema", "from ..app import scenario\n"),
    ("hpcinv.model.problems", "from ..config import Config\n"),
    ("hpcinv.backend", "def f():\n    from ..parallel.cuda_aware import cuda_aware_mpi\n"),
    ("hpcinv.backend.host_backend", "from hpcinv.parallel import node\n"),
    ("hpcinv.parallel.halo", "from ..physics.darcy import apt_step_kernel\n"),
    ("hpcinv.physics.darcy", "from ..solvers.apt import solve\n"),
    ("hpcinv.solvers.apt", "def f():\n    from ..inverse import gradient\n"),
    ("hpcinv.inverse.gradient", "from ..autodiff import core\n"),
    ("hpcinv.io.h5write", "from ..model.grid import Grid\n"),
    ("hpcinv.model.grid", "from ..physics import darcy\n"),
    ("hpcinv.backend.cache", "import hpcinv.api\n"),
])
def test_checker_catches_a_forbidden_import(module, source):
    assert violations(source, module, is_package=module.count(".") == 1)


@pytest.mark.parametrize("module,source", [
    ("hpcinv.app.cli", "from ..config import load\nfrom .assembly import build\n"),
    ("hpcinv.config.schema", "from ..model import geothermal\n"),
    ("hpcinv.solvers.forward", "from ..physics.darcy import apt_step_kernel\n"),
    ("hpcinv.inverse.gradient", "from ..solvers import make_darcy_solver\n"),
    ("hpcinv.parallel.pack", "from ..backend.kernel import Kernel\n"),
    ("hpcinv.model.grid", "from ..parallel import Decomposition\n"),
    ("hpcinv.inverse.forward_warm", "from ..parallel.reduce import dot\n"),
    ("hpcinv.autodiff.core", "from ..inverse.gradient import AdjointGradient\n"),
    ("hpcinv.backend.base", "from ..errors import BackendError\n"),
    ("hpcinv.io.gather", "from ..parallel import Decomposition\n"),
])
def test_checker_allows_what_the_layers_allow(module, source):
    assert not violations(source, module)
