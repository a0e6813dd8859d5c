"""The documentation's Python snippets run as written (issue 22: the docs/autodiff.md snippets
were fragments, ``problem`` and ``jnp`` undefined).

Every fenced ``python`` block of the files below is run as a script of its own, in a fresh
process whose working directory is a temporary directory with the repository's ``examples/``
reachable (snippets that read ``examples/...`` see the real files); a file that the README's
commands make before a snippet reads it (``runs/forward/fields.h5``) is made first.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from test_cli import ROOT, _clean_env

DOCS = ["README.md", "docs/autodiff.md"]
#: files a snippet reads that the README's commands before it make: (command, its output)
MADE_BY = {"runs/forward/fields.h5": ("forward", "runs/forward")}
#: blocks that need an optional package (checked by import, the test skips saying which)
NEEDS = {"torch": "torch", "jax": "jax"}


def snippets():
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text[:m.start()].count("\n") + 2
            yield pytest.param(doc, m.group(1), id=f"{doc}:{line}")


@pytest.mark.parametrize("doc,code", list(snippets()))
def test_snippet_runs(tmp_path, doc, code):
    for word, module in NEEDS.items():
        if re.search(rf"^\s*(import|from) {word}\b", code, re.M):
            pytest.importorskip(module)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for path, (command, out) in MADE_BY.items():
        if path in code:
            made = subprocess.run([sys.executable, "-m", "hpcinv", command, "-q", "-o", out],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                  env=_clean_env())
            assert made.returncode == 0, made.stderr
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=_clean_env())
    assert proc.returncode == 0, f"{doc}:\n{code}\n--- stderr:\n{proc.stderr[-3000:]}"


def test_every_test_file_is_in_the_architecture_table():
    """docs/architecture.md's table of what is verified names every test file (issue 21)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
               if f"`{p.name}`" not in text]
    assert not missing, f"add to docs/architecture.md's test table: {missing}"
