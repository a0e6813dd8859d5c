"""The GPU acceptance script (issue 19, "What to build" item 4), checked without a GPU.

``benchmarks/gpu_acceptance.sh`` must be ready the day a GPU is lent: its shell wrapper parses,
its HDF5 comparison finds every kind of difference (and only differences), a failed required
step gives exit status 1, and a dry run with the host backend standing in for the GPU
(``HPCINV_ACCEPTANCE_BACKEND=host``) runs steps end to end and writes the JSON report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_acceptance as acc  # noqa: E402


def test_shell_wrapper_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_acceptance.sh")], check=True)


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


def test_compare_h5_finds_each_kind_of_difference(tmp_path):
    x = np.linspace(0, 1, 12).reshape(3, 4)
    nan = np.array([np.nan, 1.0])
    a = _h5(tmp_path / "a.h5", Pf=x, q=nan, zero=np.array([0.0]), history_jsonl=np.array([1]))
    same = _h5(tmp_path / "same.h5", Pf=x.copy(), q=nan.copy(), zero=np.array([0.0]),
               history_jsonl=np.array([2]))            # wall times: not compared
    assert acc.compare_h5(a, same) == (3, [])
    flipped = x.copy()
    flipped.view(np.uint64)[1, 2] ^= 1                  # one bit of one value
    b = _h5(tmp_path / "b.h5", Pf=flipped, q=nan, zero=np.array([-0.0]),
            extra=np.array([1.0]))
    n, diffs = acc.compare_h5(a, b)
    text = "\n".join(diffs)
    assert "a.h5:Pf differs, max |diff| 1.110e-16" in text
    assert "a.h5:zero differs" in text                  # -0 and +0: other bits
    assert "extra only in the second" in text and "history_jsonl" not in text
    assert "q" not in [d.split(":")[1].split()[0] for d in diffs]    # equal NaN bits
    c = _h5(tmp_path / "c.h5", Pf=x.astype(np.float32), q=nan, zero=np.array([0.0]))
    assert any("float64(3, 4) vs float32(3, 4)" in d for d in acc.compare_h5(a, c)[1])


def test_compare_dirs_reports_missing_files(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        _h5(tmp_path / d / "fields.h5", Pf=np.ones(3))
    _h5(tmp_path / "x" / "gradient.h5", g=np.ones(3))
    n, diffs = acc.compare_dirs(tmp_path / "x", tmp_path / "y")
    assert n == 1 and len(diffs) == 1 and diffs[0].startswith("gradient.h5 missing from")


@pytest.mark.parametrize("rows,code", [
    ([("PASS", True), ("SKIP", True), ("FAIL", False)], 0),
    ([("PASS", True), ("FAIL", True)], 1),
])
def test_exit_status_counts_required_failures_only(rows, code):
    results = [acc.Result(f"s{i}", req, status) for i, (status, req) in enumerate(rows)]
    assert acc.exit_status(results) == code
    assert all(r.step in acc.table(results) for r in results)


def _dry_run(tmp_path, backend, only):
    env = dict(os.environ, HPCINV_ACCEPTANCE_BACKEND=backend, OMP_NUM_THREADS="1")
    env.pop("HPCINV_STREAM_CHECK", None)
    out = tmp_path / "acc"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"),
                        "--out", str(out), "--quick", "--only", only, "--budget", "120"],
                       capture_output=True, text=True, env=env, timeout=180)
    return p, json.loads((out / "acceptance.json").read_text())


def test_dry_run_with_the_host_backend(tmp_path):
    p, report = _dry_run(tmp_path, "host", "info,bitwise-forward-2d,memcheck,launch")
    assert p.returncode == 0, p.stdout + p.stderr
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status == {"info": "PASS", "bitwise-forward-2d": "PASS", "memcheck": "SKIP",
                      "launch": "PASS"}, report
    assert report["backend"] == "host" and report["exit_status"] == 0
    assert "bitwise equal" in p.stdout and "step" in p.stdout.splitlines()[0]


def test_failed_required_step_gives_exit_status_1(tmp_path):
    p, report = _dry_run(tmp_path, "nosuch", "info")
    assert p.returncode == 1
    (step,) = report["steps"]
    assert step["status"] == "FAIL" and "rc 2" in step["detail"], step
