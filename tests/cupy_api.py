"""Whether the installed (real) CuPy has an attribute and accepts a call: names and keywords.

Used by ``tests/test_cupy_conformance.py`` (every CuPy use in ``hpcinv/``) and by the CPU
stand-in's tests (the stand-in offers no API the real CuPy lacks). Nothing here needs a GPU:
it only imports CuPy and reads its objects, signatures and docstrings.

    >>> check("cupy.cuda.Stream", keywords=("non_blocking", "priority")).ok
    True
    >>> check("cupy.cuda.runtime.deviceGetStreamPriorityRange", n_positional=0).ok
    False

A path is dotted from ``cupy`` or ``cupyx`` (``cupy.ndarray.set``: the method of an array;
``cupy.ElementwiseKernel.__call__``: calling a kernel). Methods are taken as called on an
instance (a leading ``self`` is dropped). Signatures come from :func:`inspect.signature`, else
from the first line of the docstring, which Cython writes as ``name(int a, b=None) -> T``;
where a signature ends in ``**kwargs``, the names of the docstring's ``Args:`` section are the
accepted keywords. Anything else is "not checkable" (:attr:`Verdict.checked` is False).
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass

ROOTS = ("cupy", "cupyx")

#: Keywords a ``**kwargs`` signature takes that its docstring does not list (by the callable's
#: ``__qualname__``), read from CuPy 14.2's source, ``cupy/_core/_kernel.pyx``:
#: ``ElementwiseKernel.__call__`` pops ``size``, ``stream`` and ``block_size``, ``ufunc.__call__``
#: ``out``, ``dtype`` and ``casting``; both refuse anything else ("Wrong arguments").
UNDOCUMENTED_KEYWORDS = {"ElementwiseKernel.__call__": {"stream"},
                         "ufunc.__call__": {"casting"}}


@dataclass(frozen=True)
class Verdict:
    """``ok``: False when the real CuPy refuses (no such attribute, a keyword its signature
    does not take, too many positional arguments); ``checked``: the call's arguments were
    checked against a signature (False: only the attribute's existence was)."""

    ok: bool
    checked: bool
    reason: str


class DocumentedAttribute:
    """An instance attribute a CuPy class sets in ``__init__`` (so not on the class), found in
    the class docstring's ``Attributes:`` section (``~Stream.ptr (intptr_t): ...``); its own
    attributes are unknown."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path


def _documented_attributes(cls) -> set[str]:
    names = set()
    for c in inspect.getmro(cls):
        doc = inspect.cleandoc(c.__doc__ or "")
        m = re.search(r"^Attributes:\s*$\n((?:^(?: .*|)$\n?)*)", doc, re.M)
        if m:
            names |= set(re.findall(r"^ {4}~?(?:\w+\.)?(\w+)\s*(?:\(|:)", m.group(1), re.M))
    return names


def resolve(path: str):
    """The object at dotted ``path`` in the installed CuPy (submodules imported on demand;
    a :class:`DocumentedAttribute` for an instance attribute the class documents).

    Raises:
        AttributeError: naming the first missing part.
    """
    parts = path.split(".")
    if parts[0] not in ROOTS:
        raise AttributeError(f"{path}: not a CuPy path (roots: {', '.join(ROOTS)})")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
            continue
        except AttributeError:
            pass
        if inspect.ismodule(obj):
            try:
                obj = importlib.import_module(".".join(parts[:i + 1]))
                continue
            except ImportError:
                pass
        if inspect.isclass(obj) and part in _documented_attributes(obj):
            obj = DocumentedAttribute(".".join(parts[:i + 1]))
            continue
        raise AttributeError(f"{'.'.join(parts[:i])} has no attribute {part!r}")
    return obj


_DOC_SIG = re.compile(r"^\s*([\w.]+)\((.*)\)\s*(?:->.*)?$")


def _split_params(text: str) -> list[str]:
    """Top-level comma-separated items of a parameter list (brackets and quotes kept whole)."""
    items, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        items.append(cur.strip())
    return items


def _doc_signature(obj, name: str):
    """The signature written on the docstring's first line (``name(int a, b=None) -> T``,
    Cython's style, types dropped), or None."""
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    m = _DOC_SIG.match(lines[0]) if lines else None
    if not m or m.group(1).rsplit(".", 1)[-1] != name:
        return None
    P = inspect.Parameter
    params, kind = [], P.POSITIONAL_OR_KEYWORD
    for item in _split_params(m.group(2)):
        head, eq, _ = item.partition("=")
        token = head.split()[-1] if head.split() else ""
        if token == "*":
            kind = P.KEYWORD_ONLY
        elif token.startswith("**"):
            params.append(P(token[2:], P.VAR_KEYWORD))
        elif token.startswith("*"):
            params.append(P(token[1:], P.VAR_POSITIONAL))
            kind = P.KEYWORD_ONLY
        elif token.isidentifier():
            params.append(P(token, kind, default=None if eq else P.empty))
        else:
            return None
    try:
        return inspect.Signature(params)
    except ValueError:
        return None


def _documented_keywords(obj) -> set[str]:
    """Names listed in the docstring's ``Args:`` section (``name (type): ...``)."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    m = re.search(r"^(?:Args|Arguments|Parameters|Keyword Args):\s*$\n((?:^(?: .*|)$\n?)*)", doc,
                  re.M)
    if not m:
        return set()
    return set(re.findall(r"^ {4}\**(\w+)\s*(?:\(|:)", m.group(1), re.M))


def signature(obj):
    """``(signature, basis)``: the call signature of ``obj`` (``self`` dropped) and where it
    came from (``"inspect"`` or ``"docstring"``); ``(None, why)`` where neither works."""
    sig, basis = None, "inspect"
    try:
        sig = inspect.signature(obj)
    except (ValueError, TypeError):
        name = getattr(obj, "__name__", "")
        sig, basis = _doc_signature(obj, name), "docstring"
        if sig is None and inspect.isclass(obj):
            sig = _doc_signature(obj.__init__, "__init__")
    if sig is None:
        return None, "no signature (inspect fails, no signature on the docstring's first line)"
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        sig = sig.replace(parameters=params[1:])
    return sig, basis


def check(path: str, keywords=(), n_positional: int | None = None, call: bool = True) -> Verdict:
    """Whether the real CuPy has ``path`` and, for a call (``call=True``), accepts keyword
    arguments named ``keywords`` with ``n_positional`` positional ones (None: unknown, e.g.
    ``*args``: only the keywords are checked)."""
    try:
        obj = resolve(path)
    except AttributeError as exc:
        return Verdict(False, True, f"missing: {exc}")
    except ImportError as exc:
        return Verdict(False, True, f"does not import: {exc}")
    if not call:
        return Verdict(True, True, "exists")
    if isinstance(obj, DocumentedAttribute):
        return Verdict(True, False, "an instance attribute (class docstring): type unknown")
    if not callable(obj):
        return Verdict(False, True, f"{path} is not callable ({type(obj).__name__})")
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        obj = type(obj).__call__      # a callable instance (a ufunc): its type's __call__
    sig, basis = signature(obj)
    if sig is None:
        return Verdict(True, False, basis)
    params = sig.parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        extra = UNDOCUMENTED_KEYWORDS.get(getattr(obj, "__qualname__", ""), set())
        varargs = {p.name for p in params if p.kind is p.VAR_POSITIONAL}
        documented = (_documented_keywords(obj) - varargs) | extra | named
        unknown = sorted(set(keywords) - documented)
        if len(documented) == len(named):
            return Verdict(True, False, f"takes **kwargs, none documented ({basis})")
        if unknown:
            return Verdict(False, True, f"keyword(s) {', '.join(unknown)} not among the "
                                        f"documented ones: {', '.join(sorted(documented))}")
        sig = sig.replace(parameters=[p for p in params if p.kind is not p.VAR_KEYWORD])
        keywords = [k for k in keywords if k in named]
        basis += " + documented **kwargs"
    args, kwargs = [None] * (n_positional or 0), dict.fromkeys(keywords)
    try:
        if n_positional is None:
            sig.bind_partial(**kwargs)
        else:
            sig.bind(*args, **kwargs)
    except TypeError as exc:
        return Verdict(False, True, f"refused by {path}{sig} ({basis}): {exc}")
    return Verdict(True, True, f"accepted by {path}{sig} ({basis})")


#: Attributes every Python class has: not part of the API a stand-in offers.
_CLASS_PLUMBING = {"__init__", "__new__", "__module__", "__dict__", "__weakref__", "__doc__",
                   "__slots__", "__qualname__", "__annotations__", "__firstlineno__",
                   "__static_attributes__", "__init_subclass__", "__repr__", "__str__"}


def _parameter_names(fn) -> tuple:
    """Names of ``fn``'s parameters that a caller can pass by keyword (``self`` dropped)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.name != "self"
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY))


def refusals(standin, path: str) -> list[str]:
    """What a stand-in object offers in place of CuPy's ``path`` that the real CuPy refuses:
    ``path`` itself missing, a parameter name the real signature does not take, and for a
    class each public method, property or dunder it defines (dunders other than ``__call__``:
    their existence only, as operators pass no keywords). ``[]``: nothing refused.

    For a CPU stand-in of CuPy: ``refusals(standin.cuda.Stream, "cupy.cuda.Stream")``.
    """
    if inspect.isclass(standin):
        found = _missing(path)
        if found:
            return found
        init = standin.__dict__.get("__init__")
        if init is not None:
            found += _refused_call(init, path)
        for name, member in standin.__dict__.items():
            if name in _CLASS_PLUMBING or (name.startswith("_") and not name.endswith("__")):
                continue
            fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            called = inspect.isfunction(fn) and (name == "__call__" or not name.startswith("__"))
            found += (_refused_call(fn, f"{path}.{name}") if called     # operators: no keywords
                      else _missing(f"{path}.{name}"))
        return found
    return _refused_call(standin, path) if callable(standin) else _missing(path)


def _missing(path: str) -> list[str]:
    v = check(path, call=False)
    return [] if v.ok else [f"{path}: {v.reason}"]


def _refused_call(fn, path: str) -> list[str]:
    v = check(path, keywords=_parameter_names(fn))
    return [] if v.ok else [f"{path}: {v.reason}"]
