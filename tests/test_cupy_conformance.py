"""Every CuPy attribute and call in ``hpcinv/`` exists in the real CuPy and takes its keywords.

No GPU: the scan reads hpcinv's code (:mod:`cupy_uses`, by its AST, so a new call is covered
without editing this file), and each use is checked against the installed CuPy's objects and
signatures (:mod:`cupy_api`; nothing is called). Issue 19, finding 1: ``CupyBackend`` called
``cupy.cuda.runtime.deviceGetStreamPriorityRange``, which CuPy 14 does not have, so every GPU
run died at backend construction while every test passed.

The real CuPy comes with the ``cuda13`` extra (CI installs it). Without CuPy the CuPy tests
skip, saying so; with the extra installed but CuPy not importing, they fail.
"""
from __future__ import annotations

import io
import re
import tokenize
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest

from cupy_api import check, refusals
from cupy_uses import RETURNS, WRAPPERS, Use, scan_package, scan_sources, wrapper_classes

PACKAGE = Path(__file__).resolve().parents[1] / "hpcinv"

#: Names a reader takes for CuPy (or the array module) when followed by ``.``: each such
#: place in hpcinv's code must be among the scan's uses (the scan misses none of them).
CUPY_NAMES = ("cp", "cupy", "cupyx", "xp", "_cp")


@pytest.fixture(scope="module")
def cupy():
    """The real CuPy; skip only where no CuPy wheel is installed (no ``cuda13`` extra)."""
    try:
        import cupy
    except ImportError as exc:
        for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
            try:
                version(dist)
            except PackageNotFoundError:
                continue
            pytest.fail(f"{dist} is installed but `import cupy` fails: {exc}")
        pytest.skip("CuPy not installed (the cuda13 extra: pip install -e '.[cuda13]'): "
                    "hpcinv's CuPy calls cannot be checked against the real API")
    return cupy


@pytest.fixture(scope="module")
def uses(cupy):
    """Every CuPy use in hpcinv, with CuPy-only array methods taken from the real CuPy."""
    array_only = {n for n in set(dir(cupy.ndarray)) - set(dir(np.ndarray))
                  if not n.startswith("_")}
    return scan_package(PACKAGE, array_only)


def _describe(u: Use) -> str:
    if not u.call:
        return u.path
    pos = "*" if u.n_positional is None else u.n_positional
    return f"{u.path}({pos} positional{''.join(', ' + k + '=' for k in u.keywords)})"


def test_every_cupy_use_exists_and_takes_its_keywords(uses):
    places = defaultdict(list)
    for u in uses:
        places[u].append(u.where)
    refused, unchecked = [], []
    for u, where in sorted(places.items(), key=lambda kv: kv[1][0]):
        v = check(u.path, u.keywords, u.n_positional, u.call)
        line = f"{_describe(u)} at {', '.join(where)}: {v.reason}"
        if not v.ok:
            refused.append(line)
        elif not v.checked:
            unchecked.append(line)
    summary = (f"{len(places)} distinct CuPy uses in hpcinv/, {len(refused)} refused by the "
               f"real CuPy, {len(unchecked)} not checkable (existence only):\n  "
               + "\n  ".join(unchecked or ["-"]))
    assert not refused, "the real CuPy refuses:\n  " + "\n  ".join(refused) + "\n" + summary
    assert len(unchecked) <= len(places) // 10, summary      # signatures are mostly readable


def test_the_scan_misses_no_cupy_name_in_the_code(uses):
    """Every ``cp.``, ``cupy.``, ``xp.`` ... in hpcinv's code (not comments or strings) is a
    place the scan found: a new way of naming CuPy fails here instead of going unchecked."""
    found = {u.where for u in uses}
    missed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        toks = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
        for t, nxt in zip(toks, toks[1:]):
            if t.type == tokenize.NAME and t.string in CUPY_NAMES and nxt.string == ".":
                if f"{name}:{t.start[0]}" not in found:
                    missed.append(f"{name}:{t.start[0]}: {t.line.strip()}")
    assert not missed, ("CuPy names the scan (tests/cupy_uses.py) did not follow:\n  "
                        + "\n  ".join(missed))


def test_the_types_the_scan_assumes_exist_in_cupy(cupy):
    for fn, typ in RETURNS.items():
        assert check(fn, call=False).ok, fn
        assert check(typ, call=False).ok, typ
    for attr, (_, _, typ) in WRAPPERS.items():
        assert check(typ, call=False).ok, f".{attr}: {typ}"


def test_the_wrapper_attributes_are_still_assigned_in_hpcinv():
    """``WRAPPERS`` (``stream.cp`` is a ``cupy.cuda.Stream``) names classes that still exist
    and still assign that attribute."""
    assert wrapper_classes(PACKAGE) == dict.fromkeys(WRAPPERS, True)


def test_check_refuses_what_cupy_14_refuses(cupy):
    """The checker can fail: finding 1's call, unknown keywords, too many arguments."""
    bad = [("cupy.cuda.runtime.deviceGetStreamPriorityRange", (), 0),
           ("cupy.cuda.Stream", ("nonblocking",), 0),             # inspect.signature
           ("cupy.ndarray.get", ("outt",), 0),                    # docstring first line
           ("cupy.cuda.runtime.getDeviceProperties", (), 2),      # docstring, positionals
           ("cupy.ElementwiseKernel", ("option",), 3),            # documented **kwargs
           ("cupy.ElementwiseKernel.__call__", ("grid",), None),
           ("cupy.rint", ("where",), 1)]                          # a ufunc instance
    for path, kw, npos in bad:
        v = check(path, kw, npos)
        assert not v.ok and v.checked, (path, kw, v)
    good = [("cupy.cuda.Stream", ("non_blocking", "priority"), 0),
            ("cupy.ndarray.get", ("out", "stream", "blocking"), 0),
            ("cupy.ElementwiseKernel.__call__", ("size", "stream"), None)]
    for path, kw, npos in good:
        v = check(path, kw, npos)
        assert v.ok and v.checked, (path, kw, v)
    assert check("cupy.cuda.Device.pci_bus_id", call=False).ok       # finding 3 reads it
    assert check("cupy.cuda.Stream.ptr", call=False).ok              # documented, in __init__
    assert not check("cupy.cuda.Stream.handle", call=False).ok
    assert not check("cupy.cuda.Device.pci_bus_id").ok               # a property: no call


def test_refusals_finds_what_a_standin_offers_beyond_cupy(cupy):
    """The check the CPU stand-in's tests use (tests/cupy_standin: no API the real CuPy
    lacks), on a small stand-in: a method, a keyword, a property and a class CuPy lacks."""
    class Stream:
        def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
            pass

        def record(self, event=None):
            pass

        def wait_event(self, event, timeout=None):       # CuPy's takes no timeout
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def query_all(self):                              # CuPy's Stream has no such method
            pass

        @property
        def ptr(self):
            return 0

        @property
        def lanes(self):                                  # nor such property
            return 1

    def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
        return a

    def rint(x, out=None):              # CuPy's ufuncs take the inputs by position only
        return x

    def rint_positional(x, /, out=None):
        return x

    found = refusals(Stream, "cupy.cuda.Stream")
    assert len(found) == 3, found
    assert any("wait_event" in f and "timeout" in f for f in found), found
    assert any("query_all" in f for f in found) and any("lanes" in f for f in found), found
    assert refusals(asnumpy, "cupy.asnumpy") == []
    assert refusals(rint_positional, "cupy.rint") == []
    assert "x" in refusals(rint, "cupy.rint")[0]
    assert refusals(Stream, "cupy.cuda.Streams")[0].startswith("cupy.cuda.Streams: missing")


SOURCE = '''
import cupy as cupy_alias
import cupyx
from cupy.cuda import runtime

def import_cupy():
    import cupy
    return cupy

class Wrapper:
    def __init__(self, s):
        self.cp = s

class B:
    def __init__(self):
        cp = import_cupy()
        self.xp = cp
        self._k = cp.ElementwiseKernel("a", "b", "c", name="k")
        cp.cuda.Device(0).use()
        with cp.cuda.Device(1):
            pass

    def f(self, stream, dst, src, d):
        cp = self.xp
        stream.cp.wait_event(stream.cp.record())
        cp.cuda.get_current_stream().synchronize()
        dst.set(src, stream=None)
        self._k(dst, size=3)
        d.get("key")
        runtime.memGetInfo()
        cupyx.empty_pinned((2,), dtype=float)
        return self.map(lambda xp, x: xp.clip(x, 0, 1))

def elsewhere(bk):
    return bk.xp.float64, cupy_alias.ndarray
'''


def test_the_scan_follows_every_way_hpcinv_names_cupy():
    uses = {(u.path, u.keywords, u.n_positional, int(u.where.split(":")[1]))
            for u in scan_sources({"m.py": SOURCE}, {"set", "get"})}
    line = {n: i for i, n in enumerate(SOURCE.splitlines(), 1)}

    def at(text):
        return next(i for t, i in line.items() if text in t)
    expected = {
        ("cupy.ElementwiseKernel", ("name",), 3, at("self._k =")),         # cp = import_cupy()
        ("cupy.cuda.Device.use", (), 0, at(".use()")),                    # instance of a class
        ("cupy.cuda.Device.__enter__", (), 0, at("with cp")),
        ("cupy.cuda.Stream.wait_event", (), 1, at("wait_event")),         # WRAPPERS: .cp
        ("cupy.cuda.Stream.record", (), 0, at("wait_event")),
        ("cupy.cuda.Stream.synchronize", (), 0, at("synchronize")),       # RETURNS
        ("cupy.ndarray.set", ("stream",), 1, at("dst.set")),              # array-only method
        ("cupy.ElementwiseKernel.__call__", ("size",), 1, at("self._k(dst")),  # self._k = ...
        ("cupy.cuda.runtime.memGetInfo", (), 0, at("memGetInfo")),        # from cupy import
        ("cupyx.empty_pinned", ("dtype",), 1, at("empty_pinned")),        # import cupyx
        ("cupy.clip", (), 3, at("xp.clip")),                              # parameter xp
        ("cupy.float64", (), None, at("bk.xp.float64")),                  # self.xp = cp
        ("cupy.ndarray", (), None, at("cupy_alias.ndarray")),            # import ... as
    }
    missing = expected - uses
    assert not missing, sorted(missing)
    assert not any(p == "cupy.ndarray.get" for p, *_ in uses)           # d.get("key"): a dict
