"""The scaling tools in ``benchmarks/``: weak/strong scaling records, the plot, the model.

Fast (a few seconds): tiny grids, few iterations; the multi-rank case launches ``mpiexec -n 2``
as a subprocess and is skipped where no ``mpiexec`` exists.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import scaling_model as sm  # noqa: E402

FIELDS = ("ranks", "dims", "ndim", "local_size", "global_size", "backend", "device",
          "mpi_library", "cuda_aware", "overlap", "t_iter_forward", "t_iter_adjoint",
          "T_eff_GBs", "T_eff_per_rank_GBs", "T_eff_adjoint_GBs", "machine", "threads",
          "neighbours_max", "halo_bytes_per_rank_max")
TINY = ["--iters", "2", "--repeats", "1", "--warmup", "1", "--threads", "1"]


def _env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPI_LOCAL"))}
    env["HPCINV_NUM_THREADS"] = "1"
    return env


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _run(script, args, n=1, timeout=120):
    cmd = [sys.executable, str(BENCH / script), *args]
    if n > 1:
        exe = _mpiexec()
        if exe is None:
            pytest.skip("no mpiexec found")
        cmd = [exe, "-n", str(n), *cmd]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=_env())
    assert p.returncode == 0, (p.stdout, p.stderr)
    return p


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def weak_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "weak.jsonl"
    _run("weak_scaling.py", ["--local", "24x16,8x8x6", "--overlap", "both", "--out", str(out),
                             *TINY])
    _run("weak_scaling.py", ["--local", "24x16,8x8x6", "--overlap", "both", "--out", str(out),
                             *TINY], n=2)
    return out


def test_weak_records(weak_file):
    recs = _records(weak_file)
    assert len(recs) == 8          # 2 sizes x 2 overlap modes x (1, 2 ranks)
    for r in recs:
        for f in FIELDS:
            assert f in r, f
        assert r["kind"] == "weak" and r["local_size"] in ([24, 16], [8, 8, 6])
        assert r["t_iter_forward"] > 0 and r["t_iter_adjoint"] > 0
        n_local = 1
        for k in r["local_size"]:
            n_local *= k
        assert r["T_eff_per_rank_GBs"] == pytest.approx(
            (2 * (r["ndim"] + 1) + 2) * n_local * 8 / r["t_iter_forward"] / 1e9)
        assert r["T_eff_GBs"] == pytest.approx(r["T_eff_per_rank_GBs"] * r["ranks"])
        assert [a * b for a, b in zip(r["local_size"], r["dims"])] == r["global_size"]
    two = [r for r in recs if r["ranks"] == 2]
    assert {r["overlap"] for r in two} == {True, False}
    assert all(r["neighbours_max"] == 1 and r["halo_bytes_per_rank_max"] > 0 for r in two)
    assert all(r["neighbours_max"] == 0 for r in recs if r["ranks"] == 1)


def test_strong_records(tmp_path):
    out = tmp_path / "strong.jsonl"
    _run("strong_scaling.py", ["--size", "32x16", "--overlap", "off", "--no-adjoint",
                               "--out", str(out), *TINY], n=2)
    (r,) = _records(out)
    assert r["kind"] == "strong" and r["ranks"] == 2 and r["global_size"] == [32, 16]
    assert r["overlap"] is False and "t_iter_adjoint" not in r
    assert r["local_cells_max"] == 16 * 16


def test_plot(weak_file, tmp_path):
    png = tmp_path / "weak.png"
    _run("plot_scaling.py", [str(weak_file), "--model", "--latency", "2", "--net-bw", "5",
                             "-o", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hw(**kw):
    base = dict(teff=20e9, copy_bw=25e9, alpha=2e-6, beta=10e9)
    base.update(kw)
    return sm.Hardware(**base)


def test_model_one_rank_is_ideal():
    for local in ((1024, 1024), (96, 96, 96)):
        for ov in (True, False):
            e = sm.efficiency(local, 1, 8, _hw(launch=1e-5), ov)
            assert e["efficiency"] == pytest.approx(1.0) and e["neighbours"] == 0


def test_model_neighbours_from_dims():
    assert sm.neighbour_counts([1, 1, 1]) == [0, 0, 0]
    assert sm.neighbour_counts([2, 1, 1]) == [1, 0, 0]
    assert sum(sm.neighbour_counts(sm.compute_dims(4096, 3))) == 6
    assert sm.compute_dims(8, 3) == [2, 2, 2]
    assert sm.face_bytes([4, 5, 6], 8) == [240, 192, 160]


def test_model_efficiency_decreases_with_neighbours():
    hw = _hw()
    local = (64, 64, 64)
    prev = 1.0 + 1e-12
    for dims in ([1, 1, 1], [2, 1, 1], [2, 2, 1], [2, 2, 2], [3, 2, 2], [3, 3, 2], [3, 3, 3]):
        t1 = sm.predict(local, [1, 1, 1], 8, hw, False)["t"]
        e = t1 / sm.predict(local, dims, 8, hw, False)["t"]
        assert e < prev or dims == [1, 1, 1]
        prev = e
    # and over rank counts (blocking): non-increasing as the neighbours fill up
    effs = [sm.efficiency(local, p, 8, hw, False)["efficiency"] for p in (1, 2, 4, 8, 27, 64)]
    assert all(a >= b - 1e-12 for a, b in zip(effs, effs[1:]))


@pytest.mark.parametrize("combine", ["mixed", "sum", "max"])
def test_model_overlap_never_slower(combine):
    hw = _hw(combine=combine, line=8)      # no strided-slab penalty, no overheads
    for n in (4, 8, 16, 32, 64, 128, 256):
        for ndim in (2, 3):
            for dims in ([2] * ndim, [3] * ndim):
                on = sm.predict([n] * ndim, dims, 8, hw, True)
                off = sm.predict([n] * ndim, dims, 8, hw, False)
                assert on["t"] <= off["t"] * (1 + 1e-12)
                assert on["exposed_comm"] <= off["exposed_comm"]


def test_model_crossover_and_cli():
    hw = _hw(line=8)
    n = sm.crossover(3, 8, hw)
    assert n is not None and n > 3
    hid = sm.predict([n] * 3, [3] * 3, 8, hw, True)
    below = sm.predict([n - 1] * 3, [3] * 3, 8, hw, True)
    assert hid["exposed_comm"] == 0 and below["exposed_comm"] > 0
    p = _run("scaling_model.py", ["a100", "--ranks", "8,64,4096"])
    assert "crossover: overlap hides the exchange" in p.stdout
    assert "4096" in p.stdout and "16x16x16" in p.stdout


def test_latency_bandwidth_fit():
    alpha, beta = 3e-6, 5e9
    samples = [(b, alpha + b / beta) for b in (8, 512, 8192, 131072, 2097152)]
    a, b, err = sm.fit_latency_bandwidth(samples)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6)
    assert err < 1e-9
