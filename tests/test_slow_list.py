"""``conftest.SLOW`` names real tests: a renamed or removed test must leave the list, or the
list would silently move nothing into ``tests/run_slow.sh`` (and a typo would keep a slow test
in the everyday stages)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import SLOW

ROOT = Path(__file__).resolve().parents[1]


def test_every_slow_entry_is_a_test_function():
    missing = []
    for key in sorted(SLOW):
        path, _, name = key.split("[")[0].partition("::")
        file = ROOT / path
        defined = set()
        if file.exists():
            defined = {n.name for n in ast.walk(ast.parse(file.read_text()))
                       if isinstance(n, ast.FunctionDef)}
        if name not in defined:
            missing.append(key)
    assert not missing, f"conftest.SLOW names tests that do not exist: {missing}"
