"""Every use of CuPy in hpcinv's code, found by reading it (its AST): for the conformance test.

:func:`scan_package` returns one :class:`Use` per attribute read or call on a CuPy object,
with the path in CuPy (``cupy.cuda.Stream``, ``cupy.ndarray.set``), the keyword names and the
number of positional arguments. A new call is found without editing anything here, because
the scan follows values, not names:

* names bound by ``import cupy [as cp]``, ``import cupyx``, ``from cupy.cuda import runtime``;
* calls of hpcinv functions that return the cupy module (``cp = import_cupy()``; found by
  their ``return``), and local names assigned from any CuPy value (``cp = self.xp``);
* attributes assigned a CuPy value anywhere (``self.xp = cp``, ``self._ek =
  cupy.ElementwiseKernel(...)``): every ``<anything>.xp`` is then the cupy module;
* parameters named like the array module (:data:`ARRAY_MODULE_PARAMS`: ``lambda xp, x: ...``);
* instances: calling a CuPy class (CamelCase name) gives an instance whose methods are
  checked (``cp.cuda.Device(i).use()``, ``with cp.cuda.Device(i):``), as do the results of
  the functions in :data:`RETURNS` and the wrapper attributes of :data:`WRAPPERS`
  (``stream.cp`` is a ``cupy.cuda.Stream``);
* CuPy-only array methods (``a.set(...)``, ``a.get(stream=...)``: names in ``array_only``)
  called on values the scan cannot type, unless the name is also a method of Python's
  containers and the call passes no keyword (``dict.get(key)``).

Not seen: methods that NumPy and CuPy arrays share (``a.reshape``) on untyped values, and
CuPy objects passed through hpcinv functions other than those above.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOTS = ("cupy", "cupyx")

#: Parameter names that hold the array module (NumPy on the host, ``cupy`` on GPUs).
ARRAY_MODULE_PARAMS = {"xp": "cupy"}

#: hpcinv attributes that hold a CuPy object: attribute -> (file, class assigning it, CuPy type).
WRAPPERS = {"cp": ("hpcinv/backend/cupy_backend.py", "CudaStream", "cupy.cuda.Stream")}

#: The CuPy type a CuPy function or method returns (for calls on its result).
RETURNS = {"cupy.cuda.get_current_stream": "cupy.cuda.Stream",
           "cupy.cuda.Stream.record": "cupy.cuda.Event",
           "cupy.get_default_memory_pool": "cupy.cuda.MemoryPool",
           "cupy.get_default_pinned_memory_pool": "cupy.cuda.PinnedMemoryPool"}

_CONTAINER_METHODS = set(dir(dict)) | set(dir(list)) | set(dir(set)) | set(dir(str))


@dataclass(frozen=True)
class Use:
    """One use: ``path`` in CuPy; for a call (``call``) the ``keywords`` passed and
    ``n_positional`` (None: ``*args``/``**kwargs`` make it unknown); ``where``: file:line."""

    path: str
    call: bool
    keywords: tuple = ()
    n_positional: int | None = None
    where: str = field(default="", compare=False)


@dataclass
class _Context:
    array_only: frozenset
    attrs: dict = field(default_factory=dict)          # attribute name -> value
    cupy_functions: set = field(default_factory=set)   # hpcinv functions returning cupy
    cupy_files: set = field(default_factory=set)       # files holding a CuPy value
    uses: list = field(default_factory=list)

    def state(self):
        return dict(self.attrs), set(self.cupy_functions), set(self.cupy_files)


# A value is None (not CuPy) or (kind, path): ("obj", "cupy.cuda"), an object reached by
# attributes from a root; ("inst", "cupy.cuda.Stream"), an instance of that class;
# ("member", "cupy.cuda.Stream.record"), an attribute of an instance.


class _Scan:
    def __init__(self, ctx: _Context, name: str):
        self.ctx, self.name = ctx, name
        self.scopes = [({}, False)]     # (names, is a class body)
        self.functions = []             # enclosing function names (for returns)

    # --- names and uses ---------------------------------------------------------------------
    def lookup(self, name):
        for i, (names, is_class) in enumerate(reversed(self.scopes)):
            if is_class and i > 0:
                continue
            if name in names:
                return names[name]
        return None

    def use(self, node, path, call=False, keywords=(), n_positional=None):
        self.ctx.cupy_files.add(self.name)
        self.ctx.uses.append(Use(path, call, tuple(keywords), n_positional,
                                 f"{self.name}:{node.lineno}"))

    def bind(self, target, value):
        if isinstance(target, ast.Name):
            self.scopes[-1][0][target.id] = value
        elif isinstance(target, ast.Attribute):
            self.ev(target.value)
            if value is not None:
                self.ctx.attrs[target.attr] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, None)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, None)
        else:
            self.ev(target)

    # --- traversal --------------------------------------------------------------------------
    def visit(self, node):
        if isinstance(node, ast.stmt):
            self.stmt(node)
        elif isinstance(node, ast.expr):
            self.ev(node)
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child)

    def stmt(self, node):
        self._dispatch("st_", node)

    def ev(self, node):
        """The value of expression ``node`` (None: not CuPy), recording its uses."""
        return self._dispatch("ev_", node)

    def _dispatch(self, prefix, node):
        method = getattr(self, prefix + type(node).__name__, None)
        if method is not None:
            return method(node)
        for child in ast.iter_child_nodes(node):
            self.visit(child)
        return None

    # --- statements -------------------------------------------------------------------------
    def st_Import(self, node):
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in ROOTS:
                self.use(node, alias.name)
                bound = alias.name if alias.asname else root
                self.scopes[-1][0][alias.asname or root] = ("obj", bound)

    def st_ImportFrom(self, node):
        if node.level or (node.module or "").split(".")[0] not in ROOTS:
            return
        for alias in node.names:
            path = f"{node.module}.{alias.name}"
            self.use(node, path)
            self.scopes[-1][0][alias.asname or alias.name] = ("obj", path)

    def st_Assign(self, node):
        value = self.ev(node.value)
        for target in node.targets:
            self.bind(target, value)

    def st_AnnAssign(self, node):
        self.bind(node.target, self.ev(node.value) if node.value is not None else None)

    def st_For(self, node):
        self.ev(node.iter)
        self.bind(node.target, None)
        for child in node.body + node.orelse:
            self.visit(child)

    def st_With(self, node):
        for item in node.items:
            value = self.ev(item.context_expr)
            if value is not None and value[0] in ("obj", "inst"):
                self.use(item.context_expr, f"{value[1]}.__enter__", call=True, n_positional=0)
                self.use(item.context_expr, f"{value[1]}.__exit__", call=True, n_positional=3)
            if item.optional_vars is not None:
                self.bind(item.optional_vars, value if value and value[0] == "inst" else None)
        for child in node.body:
            self.visit(child)

    def st_Return(self, node):
        value = self.ev(node.value) if node.value is not None else None
        if self.functions and value is not None and value[0] == "obj" and value[1] in ROOTS:
            self.ctx.cupy_functions.add(self.functions[-1])

    def st_FunctionDef(self, node):
        for d in node.decorator_list:
            self.ev(d)
        self._function(node.args, node.name, lambda: [self.visit(s) for s in node.body])

    st_AsyncFunctionDef = st_FunctionDef

    def st_ClassDef(self, node):
        for child in node.bases + node.keywords + node.decorator_list:
            self.visit(child)
        self.scopes.append(({}, True))
        for s in node.body:
            self.visit(s)
        self.scopes.pop()

    def _function(self, args, name, body):
        for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.ev(d)
        names = {}
        for a in args.posonlyargs + args.args + args.kwonlyargs:
            mod = ARRAY_MODULE_PARAMS.get(a.arg)
            names[a.arg] = ("obj", mod) if mod else None
        self.scopes.append((names, False))
        self.functions.append(name)
        body()
        self.functions.pop()
        self.scopes.pop()

    # --- expressions ------------------------------------------------------------------------
    def ev_Name(self, node):
        return self.lookup(node.id)

    def ev_Lambda(self, node):
        self._function(node.args, "<lambda>", lambda: self.ev(node.body))

    def ev_NamedExpr(self, node):
        value = self.ev(node.value)
        self.bind(node.target, value)
        return value

    def ev_Attribute(self, node):
        value = self.ev(node.value)
        if value is None:
            return self.ctx.attrs.get(node.attr)
        kind, path = value
        if kind == "obj":
            self.use(node, f"{path}.{node.attr}")
            return ("obj", f"{path}.{node.attr}")
        if kind == "inst":
            self.use(node, f"{path}.{node.attr}")
            return ("member", f"{path}.{node.attr}")
        return None

    def ev_Call(self, node):
        func = self.ev(node.func)
        starred = any(isinstance(a, ast.Starred) for a in node.args)
        starred |= any(k.arg is None for k in node.keywords)
        for a in node.args:
            self.ev(a)
        for k in node.keywords:
            self.ev(k.value)
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        n_positional = None if starred else len(node.args)
        if func is None:
            return self._untyped_call(node, keywords, n_positional)
        kind, path = func
        if kind == "inst":
            self.use(node, f"{path}.__call__", True, keywords, n_positional)
            return None
        self.use(node, path, True, keywords, n_positional)
        if path in RETURNS:
            return ("inst", RETURNS[path])
        if kind == "obj" and path.rsplit(".", 1)[-1][:1].isupper():
            return ("inst", path)
        return None

    def _untyped_call(self, node, keywords, n_positional):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
            else None
        if name in self.ctx.cupy_functions:
            return ("obj", "cupy")
        if (isinstance(f, ast.Attribute) and name in self.ctx.array_only
                and self.name in self.ctx.cupy_files
                and (name not in _CONTAINER_METHODS or keywords)):
            self.use(node, f"cupy.ndarray.{name}", True, keywords, n_positional)
        return None


def scan_sources(sources: dict, array_only=frozenset()) -> list[Use]:
    """The CuPy uses in ``{file name: source text}`` (see the module doc), one per place
    (uses differing only in their place compare equal)."""
    trees = {name: ast.parse(text, name) for name, text in sorted(sources.items())}
    ctx = _Context(frozenset(array_only))
    ctx.attrs.update({attr: ("inst", typ) for attr, (_, _, typ) in WRAPPERS.items()})
    for _ in range(10):         # until the bindings found stop growing (usually 2-3 rounds)
        before = ctx.state()
        ctx.uses = []
        for name, tree in trees.items():
            _Scan(ctx, name).visit(tree)
        if ctx.state() == before:
            break
    return ctx.uses


def scan_package(root: Path, array_only=frozenset()) -> list[Use]:
    """The CuPy uses in every ``.py`` file under ``root`` (names relative to its parent)."""
    root = Path(root)
    return scan_sources({str(p.relative_to(root.parent)): p.read_text()
                         for p in sorted(root.rglob("*.py"))}, array_only)


def wrapper_classes(root: Path) -> dict:
    """``{attribute: True/False}``: whether the class :data:`WRAPPERS` names still assigns
    ``self.<attribute>`` in its file under ``root``'s parent."""
    found = {}
    for attr, (file, cls, _) in WRAPPERS.items():
        tree = ast.parse((Path(root).parent / file).read_text())
        found[attr] = any(
            isinstance(c, ast.ClassDef) and c.name == cls and any(
                isinstance(n, ast.Attribute) and n.attr == attr and isinstance(n.ctx, ast.Store)
                for n in ast.walk(c))
            for c in ast.walk(tree))
    return found
