"""Issue 20 item 1: the backend counts the memory it allocates (frees included, views never),
and the estimate of ``hpcinv/app/memory.py`` matches the counter's high-water mark within 10 %
for 2D/3D forward, gradient, GD and L-BFGS runs, with and without the warm-start subspaces.

The grids are small but the per-cell fields dominate: the halo buffers (O(surface)) are bounded
in the estimate explicitly and the observations (O(nobs)) are host arrays, not backend memory.
The subspaces are made small (2 solutions each, 2 L-BFGS pairs) so that a few iterations fill
them: the estimate is for a full run, whose subspaces are full.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv import config as config_mod
from hpcinv.app import assembly
from hpcinv.app.cli import main
from hpcinv.app.memory import estimate, largest_block
from hpcinv.app.resolve import resolved
from hpcinv.backend import make_backend
from hpcinv.solvers import make_darcy_solver

SHAPES = {2: (48, 40), 3: (32, 24, 16)}     # 3D: the smallest on which the wells fit the data
SUBSPACES = {"forward_memory": 2, "adjoint_memory": 2, "lbfgs_memory": 2}
NONE = {"forward_memory": 0, "adjoint_memory": 0, "forward_prediction": 0, "lbfgs_memory": 2}


# --- the counter ---------------------------------------------------------------------------------
def test_counter_counts_allocations_frees_and_not_views():
    bk = make_backend("host", threads=1)
    m = bk.memory
    base = m.snapshot()["current_bytes"]
    a = bk.zeros((10, 10), np.float64)
    views = [a[1:], a.reshape(-1), a.T]          # views: no new memory
    b = bk.clone(a)
    assert m.snapshot()["current_bytes"] - base == 1600
    p = bk.pinned((4,), np.float32)
    snap = m.snapshot()
    assert snap["by_kind"]["pinned"]["current_bytes"] == 16
    del a                                       # its views keep the memory alive
    assert m.snapshot()["current_bytes"] - base == 1616
    del views, b, p
    assert m.snapshot()["current_bytes"] == base
    assert m.snapshot()["peak_bytes"] >= base + 1616
    assert m.reset_peak() >= base + 1616 and m.snapshot()["peak_bytes"] == base


def test_temporaries_raise_the_peak_not_what_is_held():
    bk = make_backend("host", threads=1)
    a = bk.upload(np.arange(100.0))
    bk.memory.reset_peak()
    held = bk.memory.snapshot()["current_bytes"]
    assert bk.max_abs(a) == 99.0
    snap = bk.memory.snapshot()
    assert snap["current_bytes"] == held and snap["peak_bytes"] == held + 800   # abs(a)
    assert snap["by_kind"]["temporary"]["peak_bytes"] == 800


# --- the estimate against the counter -----------------------------------------------------------
def _config(ndim, kind, inversion, dtype="float64"):
    data = {"problem": {"name": f"geothermal{ndim}d"},
            "grid": dict(zip(("nx", "ny", "nz"), SHAPES[ndim])),
            "solver": {"dtype": dtype},
            "inversion": {"iterations": 6, "method": "lbfgs" if kind == "lbfgs" else "gd",
                          **inversion},
            "regularisation": {"tikhonov": 1e-3},
            "output": {"dir": "unused", "figures": False}}
    return resolved(config_mod.from_dict(data))


def _measured(cfg, kind):
    """``(peak bytes, estimate)`` of a run of ``kind`` (6 optimiser steps for gd/lbfgs)."""
    if kind == "forward":
        setup = assembly.build_forward(cfg, MPI.COMM_SELF)
        make_darcy_solver(setup.true, setup.backend, setup.forward_params,
                          **setup.solver_options).solve()
    else:
        setup = assembly.build(cfg, MPI.COMM_SELF,
                               kind="gradient" if kind == "gradient" else "inversion")
        if kind == "gradient":
            setup.objective(np.zeros(setup.grid.decomp.padded_shape))
        else:
            opt = setup.optimiser
            opt.start(setup.logK0)
            for _ in range(cfg.inversion.iterations):
                opt.step()
    return setup.backend.memory.snapshot()["peak_bytes"], setup.memory


CASES = [(nd, "forward", "") for nd in (2, 3)] + \
        [(nd, kind, sub) for nd in (2, 3) for kind in ("gradient", "gd", "lbfgs")
         for sub in ("subspaces", "none")]


@pytest.mark.parametrize("ndim,kind,sub", CASES, ids=[f"{n}d-{k}-{s}" if s else f"{n}d-{k}"
                                                      for n, k, s in CASES])
def test_estimate_matches_the_measured_peak(ndim, kind, sub):
    cfg = _config(ndim, kind, SUBSPACES if sub != "none" else NONE)
    peak, est = _measured(cfg, kind)
    assert abs(peak / est.device_bytes - 1) < 0.10, (peak / est.cells / 8, est.items)


def test_float32_counts_float64_sums_as_two_fields():
    cfg = _config(2, "gd", SUBSPACES, dtype="float32")
    peak, est = _measured(cfg, "gd")
    # the Tikhonov term's two float32 fields, the Galerkin sums' three float64 ones (two pools)
    assert est.items["scratch (shared)"] == 2 + 3 * 2.0
    assert abs(peak / est.device_bytes - 1) < 0.10, (peak / est.cells / 4, est.items)


def test_the_run_records_its_peak_beside_the_estimate(tmp_path, capsys):
    """``hpcinv invert``: the header says the estimate, DIR/memory.json the measured peak."""
    path = tmp_path / "c.toml"
    path.write_text("[grid]\nnx = 48\nny = 40\n[inversion]\niterations = 6\nforward_memory = 2\n"
                    "adjoint_memory = 2\n[output]\nfigures = false\n")
    assert main(["invert", str(path), "-o", str(tmp_path / "run")]) == 0
    assert "memory estimate per rank: " in capsys.readouterr().out
    rec = json.loads((tmp_path / "run" / "memory.json").read_text())
    assert rec["memory_peak_bytes"] > 0
    assert abs(rec["memory_peak_bytes"] / rec["memory_estimate_bytes"] - 1) < 0.10
    assert rec["memory_peak_fields"] == pytest.approx(rec["memory_estimate_fields"], rel=0.1)


# --- the largest block --------------------------------------------------------------------------
def test_largest_block_is_the_largest_that_fits():
    cfg = _config(3, "gd", {})
    am, fm = cfg.inversion.adjoint_memory, cfg.inversion.forward_memory
    avail = 40 * 10**9
    n = largest_block(cfg, 3, avail, "inversion", am, fm, device_memory=True)
    need = [estimate(cfg, (k,) * 3, 1, "inversion", am, fm, True).device_bytes
            for k in (n, n + 1)]
    assert need[0] <= avail < need[1]


# --- the CuPy stand-in counts the same --------------------------------------------------------
@pytest.fixture
def standin(monkeypatch):
    import cupy_standin
    for name, mod in cupy_standin.modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    cupy_standin.reset()
    yield


def _forward_peak(bk):
    from hpcinv.model.problems import geothermal2d
    from hpcinv.parallel import decide_cuda_aware
    from hpcinv.solvers import DarcySolver, PTParams
    decide_cuda_aware(bk, False)
    DarcySolver(geothermal2d((31, 17), comm=MPI.COMM_SELF), bk, PTParams(tol=1e-6)).solve()
    return bk.memory.snapshot()


def test_cupy_standin_counts_a_forward_solve_as_the_host_does(standin):
    host = _forward_peak(make_backend("host", threads=1))
    gpu = _forward_peak(make_backend("cupy"))
    assert gpu["by_kind"]["arrays"]["peak_bytes"] == host["by_kind"]["arrays"]["peak_bytes"]
    assert gpu["by_kind"]["temporary"] == host["by_kind"]["temporary"]
    assert gpu["by_kind"]["pinned"]["peak_bytes"] > 0          # staged halos: pinned buffers


def test_info_grid_sizes_a_job_for_a_gpu_that_is_not_here(capsys):
    from hpcinv.app.sizing import parse_size
    assert parse_size("40GB") == 40 * 10**9 and parse_size("80 GiB") == 80 * 2**30
    assert main(["info", "--grid", "512,512,512", "--memory", "40GB", "--backend", "host"]) == 0
    out = capsys.readouterr().out
    cfg = _config(3, "gd", {})
    cfg.grid.nx, cfg.grid.ny, cfg.grid.nz, cfg.regularisation.tikhonov = 512, 512, 512, 0.0
    n = largest_block(cfg, 3, 40 * 10**9, "inversion", cfg.inversion.adjoint_memory,
                      cfg.inversion.forward_memory, device_memory=True)
    assert f"largest block      {n}x{n}x{n} cells per rank (cubic; the grid above does NOT fit" \
        in out
    assert main(["info", "--grid", "5"]) == 2


# --- the shared scratch pool ------------------------------------------------------------------
def test_scratch_pool_lends_distinct_fields_while_nested_and_reuses_them():
    bk = make_backend("host", threads=1)
    shape = (6, 5)
    with bk.scratch(shape, np.float64, 2) as (a, b):
        assert a is not b and a.shape == shape and a.dtype == np.float64
        with bk.scratch(shape, np.float64, 1) as (c,):
            assert c is not a and c is not b                 # nested: another field
        with bk.scratch(shape, np.float32, 1) as (d,):
            assert d.dtype == np.float32                     # one pool per dtype
    held = bk.memory.snapshot()["current_bytes"]
    with bk.scratch(shape, np.float64, 3) as again:          # the same three, nothing new
        assert {id(x) for x in again} == {id(a), id(b), id(c)}
    assert bk.memory.snapshot()["current_bytes"] == held
    pool = bk.scratch_pools[(shape, np.dtype(np.float64).str)]
    assert pool.most == 3 and pool.lent == 0
    with bk.scratch(shape, np.float32, 1):
        bk.release_scratch()                                 # keeps the pool that lends now
        assert list(bk.scratch_pools) == [(shape, np.dtype(np.float32).str)]
    del a, b, c, d, again, pool                              # nothing else holds them
    bk.release_scratch()
    assert bk.scratch_pools == {} and bk.memory.snapshot()["current_bytes"] < held


def test_scratch_returned_out_of_order_is_an_error():
    bk = make_backend("host", threads=1)
    outer = bk.scratch((4, 4), np.float64, 1)
    inner = bk.scratch((4, 4), np.float64, 1)
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="out of order"):
        outer.__exit__(None, None, None)


def test_the_regularisation_and_the_sums_share_one_pool():
    """A 3D GD run with smoothing, Tikhonov, subspaces and adaptive tolerances: the smoother's,
    the Tikhonov term's, the Galerkin sums' and the misfit error's fields are three in all."""
    cfg = _config(3, "gd", SUBSPACES)
    setup = assembly.build(cfg, MPI.COMM_SELF)
    opt = setup.optimiser
    opt.start(setup.logK0)
    for _ in range(3):
        opt.step()
    pools = setup.backend.scratch_pools
    assert [p.most for p in pools.values()] == [3] and all(p.lent == 0 for p in pools.values())
    assert setup.memory.items["scratch (shared)"] == 3
