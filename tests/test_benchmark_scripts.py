"""Benchmark scripts' command lines (beyond the scaling tools of ``test_scaling_tools.py``):
``benchmarks/other_truths.py`` makes the ``--workdir`` it is given (parents included) and says
in one line when it cannot, instead of a traceback from the first file it writes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import other_truths  # noqa: E402


def test_other_truths_makes_its_workdir(tmp_path, capsys):
    work = tmp_path / "a" / "b"
    other_truths.main(["--runs", "blobs3d:gd:1", "--settings", "new", "--cells3d", "12",
                       "--workdir", str(work)])
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["truth"] == "blobs3d" and rec["work_units"] > 0
    assert (work / "blobs3d.h5").exists() and (work / "blobs3d-gd-new").is_dir()


def test_other_truths_says_why_a_workdir_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match="error: --workdir .*file/x"):
        other_truths.main(["--runs", "blobs3d:gd:1", "--settings", "new",
                           "--workdir", str(blocker / "x")])
