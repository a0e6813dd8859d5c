"""The package's layers, read from the source's imports (no module is run):

* library packages (backend, parallel, physics, solvers, inverse, autodiff, io, model) never
  import the config layer (``hpcinv.config``) or the application layer (``hpcinv.app``);
* the config layer never imports the application layer;
* physics never imports MPI (it is pure kernel text).

The checker itself is tested on made-up modules, so a rule that could never fail would show.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hpcinv"
LIBRARY = ("backend", "parallel", "physics", "solvers", "inverse", "autodiff", "io", "model")
RULES = {pkg: ("hpcinv.config", "hpcinv.app") for pkg in LIBRARY}
RULES["config"] = ("hpcinv.app",)
RULES["physics"] = ("hpcinv.config", "hpcinv.app", "mpi4py")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``[(line, imported module)]`` of a module's source, relative imports made absolute
    (imports anywhere: top level, functions, ``TYPE_CHECKING`` blocks)."""
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
            out.append((node.lineno, target))
            if not node.module:          # "from .. import config": the names are modules
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


def test_layers_are_respected():
    found = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 40
    for path in files:
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "layer violations:\n" + "\n".join(found)


@pytest.mark.parametrize("module,source", [
    ("hpcinv.solvers.apt", "from ..config import load\n"),
    ("hpcinv.inverse.optimise", "from ..config.validate import hint\n"),
    ("hpcinv.backend.host_compile", "import hpcinv.app.cli\n"),
    ("hpcinv.io.h5write", "def f():\n    from .. import config\n"),
    ("hpcinv.autodiff", "from hpcinv.app.assembly import build\n"),
    ("hpcinv.physics.darcy", "from mpi4py import MPI\n"),
    ("hpcinv.config.schema", "from ..app import scenario\n"),
    ("hpcinv.model.problems", "from ..config import Config\n"),
])
def test_checker_catches_a_forbidden_import(module, source):
    assert violations(source, module, is_package=module == "hpcinv.autodiff")


@pytest.mark.parametrize("module,source", [
    ("hpcinv.app.cli", "from ..config import load\nfrom .assembly import build\n"),
    ("hpcinv.config.schema", "from ..model import geothermal\n"),
    ("hpcinv.solvers.forward", "from ..physics.darcy import apt_step_kernel\n"),
    ("hpcinv.inverse.gradient", "from ..solvers import make_darcy_solver\n"),
])
def test_checker_allows_what_the_layers_allow(module, source):
    assert not violations(source, module)
