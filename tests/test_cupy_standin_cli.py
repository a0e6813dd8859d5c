"""The real command line with ``--backend cupy`` on the CPU stand-in (issue 19), bitwise the
host backend's: ``history.jsonl`` (timings dropped) and every dataset of ``model_final.h5``.

Each run is a subprocess: ``python tests/cupy_standin/run_hpcinv.py ARGS`` (the stand-in as
``cupy``, then ``hpcinv.app.cli.main``) against ``python -m hpcinv ARGS --backend host`` on
the same number of ranks (2 and 3 ranks through ``mpiexec``; no ``mpi`` marker: the inversions
and the selftest are in ``conftest.SLOW``, so ``tests/run_slow.sh`` runs them, the launcher
checks run in the serial stage of ``tests/run_all.sh``). The cases cover L-BFGS and GD, a restart, staged
and CUDA-aware halos (``HPCINV_CUDA_AWARE``), overlap on and off; a small, fast config
(31 x 17, tolerance 1e-6, 5 smoothing steps) keeps each stand-in run to seconds.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_cli import _clean_env, mpiexec

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "tests" / "cupy_standin" / "run_hpcinv.py"
CONFIG = """[grid]
nx = 31
ny = 17
[solver]
tol = 1e-6
ncheck = 50
[adjoint]
tol = 1e-6
ncheck = 50
[regularisation]
smoothing_steps = 5
[inversion]
iterations = 3
checkpoint_every = 1
adaptive_tolerance = false
forward_prediction = 0
[output]
figures = false
"""


def hpcinv(args, ranks=1, standin=False, env=None):
    """``hpcinv ARGS`` on ``ranks`` ranks, under the stand-in or plain; the finished process."""
    cmd = [sys.executable, *([str(LAUNCHER)] if standin else ["-m", "hpcinv"]),
           *map(str, args)]
    if ranks > 1:
        exe = mpiexec()
        if exe is None:
            pytest.skip("no mpiexec found (pip install mpich, or load the cluster's MPI)")
        cmd = [exe, "-n", str(ranks), *cmd]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=_clean_env(**(env or {})))
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-4000:])
    return p


def _invert(run, method, ranks, standin, restart, extra=(), env=None):
    """An inversion of :data:`CONFIG` into ``run``: 3 iterations, or with ``restart`` 2 and
    then ``--restart`` continued to 3 (from the checkpoint of iteration 2)."""
    cfg = run.parent / "config.toml"
    cfg.write_text(CONFIG)
    backend = ["--backend", "cupy" if standin else "host"]
    first = ["--iterations", "2"] if restart else []
    hpcinv(["invert", cfg, "-q", "-o", run, "--method", method, *backend, *first, *extra],
           ranks, standin, env)
    if restart:
        p = hpcinv(["invert", "--restart", run, "-q", "--iterations", "3", *backend, *extra],
                   ranks, standin, env)
        assert "restarting from iteration 2" in p.stdout


def _timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.endswith("time")}       # wall_time


def results(run: Path):
    """(history without timings, {dataset path: array} of model_final.h5)."""
    history = [_timeless(json.loads(s)) for s in (run / "history.jsonl").read_text().split("\n")
               if s]
    data = {}
    with h5py.File(run / "model_final.h5") as f:
        f.visititems(lambda name, obj: data.__setitem__(name, obj[...])
                     if isinstance(obj, h5py.Dataset) else None)
    return history, data


_host_runs: dict = {}


def host_results(tmp_path_factory, method, ranks, restart):
    """The host backend's results, computed once per (method, ranks, restart)."""
    key = (method, ranks, restart)
    if key not in _host_runs:
        run = tmp_path_factory.mktemp("host") / "run"
        _invert(run, method, ranks, False, restart)
        _host_runs[key] = results(run)
    return _host_runs[key]


# (method, ranks, restart, HPCINV_CUDA_AWARE, overlap): 6 stand-in runs, 1 to 3 ranks, each of
# GD/L-BFGS, restart, staged/CUDA-aware and overlap on/off at least once.
CASES = [("lbfgs", 1, False, "0", True), ("gd", 1, False, "1", False),
         ("lbfgs", 1, True, "0", False), ("gd", 2, False, "1", True),
         ("lbfgs", 2, True, "0", True), ("gd", 3, False, "0", False)]


@pytest.mark.parametrize("method,ranks,restart,cuda_aware,overlap", CASES,
                         ids=[f"{m}-{n}rank{'-restart' if r else ''}-"
                              f"{'cuda-aware' if a == '1' else 'staged'}-"
                              f"{'overlap' if o else 'blocking'}" for m, n, r, a, o in CASES])
def test_cli_inversion_bitwise_equal_to_host(tmp_path, tmp_path_factory, method, ranks,
                                             restart, cuda_aware, overlap):
    run = tmp_path / "run"
    _invert(run, method, ranks, True, restart, () if overlap else ("--no-overlap",),
            {"HPCINV_CUDA_AWARE": cuda_aware})
    got, want = results(run), host_results(tmp_path_factory, method, ranks, restart)
    assert len(got[0]) == 4 and got[0] == want[0]         # iterations 0-3, every key
    assert sorted(got[1]) == sorted(want[1]) and "logK" in got[1]
    for name, array in want[1].items():
        assert np.array_equal(got[1][name], array), name


def test_the_launcher_really_runs_the_standin(tmp_path):
    """``info --backend cupy`` through the launcher names the stand-in's device; without it
    (no GPU and the real CuPy, or no CuPy) the same command cannot say that."""
    p = hpcinv(["info", "--backend", "cupy"], standin=True)
    assert "CuPy stand-in (CPU)" in p.stdout


def test_selftest_full_under_the_standin():
    """``hpcinv selftest --quick --full --backend cupy`` passes under the stand-in on one rank,
    its checks sized as for the host (``HPCINV_STANDIN_SIZES=host``: at GPU sizes ``--full``
    exhausts the CPU's memory), CUDA-aware so that ``exchange-device`` runs too; 2 ranks
    sharing the stand-in device (``--allow-shared-device``) pass as well (55 s: by hand)."""
    p = hpcinv(["selftest", "--quick", "--full", "--backend", "cupy"], standin=True,
               env={"HPCINV_STANDIN_SIZES": "host", "HPCINV_CUDA_AWARE": "1"})
    assert "selftest PASS" in p.stdout and "CuPy stand-in (CPU)" in p.stdout
    for check in ("exchange-device", "halo-ordering", "overlap-bitwise", "pool-memory"):
        assert re.search(rf"^{check} +PASS", p.stdout, re.M), (check, p.stdout)


def test_launcher_is_importable_as_a_module():
    """``python -m cupy_standin.run_hpcinv`` from ``tests/`` works as the script does."""
    p = subprocess.run([sys.executable, "-m", "cupy_standin.run_hpcinv", "--help"],
                       cwd=ROOT / "tests", capture_output=True, text=True, timeout=60,
                       env=_clean_env())
    assert p.returncode == 0 and "selftest" in p.stdout, p.stderr
