"""Issue 12: forward warm starts corrected by a coarse grid (``inversion.forward_prediction``).

* the multilinear prolongation: constants and linear fields exactly, any decomposition bitwise;
* :class:`CoarsePrediction`: no change of model, no correction (bitwise); coarse pressures are
  a function of the model (the restart argument); corrected starts make a short inversion's
  forward solves cheaper, coarse solves included, at the same quality;
* the automatic factor, the option's errors, and the cost in the history.

The correction and the forward subspace (``forward_memory``, the default) are alternatives;
``test_adaptive.py::test_adaptive_bitwise_on_1_and_2_ranks_and_across_a_restart`` runs the
correction (``forward_memory = 0``) through the same bitwise checks as the default.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.app.cli import main
from hpcinv.io import gather_cells
from hpcinv.parallel import Decomposition
from hpcinv.parallel.transfer import GridTransfer, coarse_shape

from test_inversion import history
from test_one_line_errors import assert_one_line, run_cli

SHAPES = [((23, 13), 2), ((64, 32), 4), ((255, 127), 4), ((13, 7, 9), 2), ((12, 9, 7), 3)]


def _coarse_field(coarse, fn):
    """``fn`` at the coarse cell centres (unit box), this rank's padded block."""
    out = np.zeros(coarse.padded_shape)
    axes = [(np.arange(o, o + n) + 0.5) / N for o, n, N in
            zip(coarse.offset, coarse.local_shape, coarse.global_shape)]
    out[coarse.owned()] = fn(*np.meshgrid(*axes, indexing="ij"))
    return out


@pytest.mark.parametrize("shape,f", SHAPES)
def test_linear_prolongation_keeps_constants_and_linear_fields(shape, f):
    comm = MPI.COMM_SELF
    fine, coarse = Decomposition(shape, comm), Decomposition(coarse_shape(shape, f), comm)
    T = GridTransfer(fine, coarse)
    p = T.prolong_linear(_coarse_field(coarse, lambda *x: 0 * x[0] + 2.5))
    np.testing.assert_allclose(p[fine.owned()], 2.5, rtol=1e-15)
    ghosts = np.ones(p.shape, bool)
    ghosts[fine.owned()] = False
    assert np.all(p[ghosts] == 0)
    # a linear field comes back exactly at the fine centres between the outermost coarse
    # centres (beyond them the prolongation is constant)
    lin = lambda *x: sum((a + 1) * xi for a, xi in enumerate(x))       # noqa: E731
    p = T.prolong_linear(_coarse_field(coarse, lin))[fine.owned()]
    centres = [(np.arange(n) + 0.5) / n for n in shape]
    inside = [(c >= 0.5 / nc) & (c <= 1 - 0.5 / nc) for c, nc in
              zip(centres, coarse.global_shape)]
    want = lin(*np.meshgrid(*centres, indexing="ij"))
    mask = np.ix_(*inside)
    np.testing.assert_allclose(p[mask], want[mask], rtol=1e-12, atol=1e-12)


MPI_CASES = [((23, 13), (9, 5)), ((64, 32), (16, 8)), ((13, 7, 9), (7, 4, 5)),
             ((255, 127), (64, 32))]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fshape,cshape", MPI_CASES)
def test_linear_prolongation_bitwise_on_any_decomposition(fshape, cshape):
    world = MPI.COMM_WORLD
    fine, coarse = Decomposition(fshape, world), Decomposition(cshape, world)
    rng = np.random.default_rng(7)
    g = rng.standard_normal(cshape)

    def block(d):
        out = np.zeros(d.padded_shape)
        sl = tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))
        out[d.owned()] = g[sl]
        return out

    p = gather_cells(fine, GridTransfer(fine, coarse).prolong_linear(block(coarse)))
    if world.rank == 0:
        f1, c1 = Decomposition(fshape, MPI.COMM_SELF), Decomposition(cshape, MPI.COMM_SELF)
        p1 = GridTransfer(f1, c1).prolong_linear(block(c1))[f1.owned()]
        assert p.tobytes() == p1.tobytes()


# ------------------------------------------------------------------------- the prediction

def _setup(nx=127, ny=63, factor=4):
    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    cfg = config_mod.from_dict({"grid": {"nx": nx, "ny": ny}, "output": {"figures": False},
                                "inversion": {"forward_prediction": factor,
                                              "forward_memory": 0}})
    return build(cfg, MPI.COMM_SELF)


def _smooth_step(setup, amplitude=0.3):
    """The initial model plus a smooth bump (a typical outer iteration's change)."""
    x0 = np.array(setup.logK0, dtype=float)
    d = setup.grid.decomp
    axes = [(np.arange(o, o + n) + 0.5) / N for o, n, N in
            zip(d.offset, d.local_shape, d.global_shape)]
    X, Y = np.meshgrid(*axes, indexing="ij")
    x1 = x0.copy()
    x1[d.owned()] += amplitude * np.exp(-((X - 0.4) ** 2 + (Y - 0.6) ** 2) / 0.1)
    return x0, x1


def _forward_cost(tmp_path, factor):
    """Fine forward PT iterations plus the coarse solves' cost of a 15-iteration adaptive GD
    inversion (63 x 31; the forward subspace off, to see the correction alone), and its final
    J/J0."""
    cfg = tmp_path / f"p{factor}.toml"
    cfg.write_text("[grid]\nnx = 63\nny = 31\n[output]\nfigures = false\n[inversion]\n"
                   f"iterations = 15\nforward_prediction = {factor}\nforward_memory = 0\n")
    run = tmp_path / f"r{factor}"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    h = history(run)
    return (sum(r["forward_iterations"] + r.get("prediction_work", 0) for r in h),
            h[-1]["misfit_ratio"])


def test_corrected_starts_make_the_forward_solves_cheaper(tmp_path):
    """Measured when written: 5 500 forward PT iterations without, 3 500 + 380 (coarse) with
    the correction, at the same quality (the decisions rest on error estimates either way)."""
    plain, r_plain = _forward_cost(tmp_path, 0)
    corrected, r_corrected = _forward_cost(tmp_path, 4)
    assert corrected < 0.8 * plain, (corrected, plain)
    assert r_corrected < 1.1 * r_plain, (r_corrected, r_plain)


def test_no_change_no_correction_and_coarse_pressures_are_functions_of_the_model():
    setup = _setup(63, 31)
    f, bk = setup.objective, setup.backend
    pred = f.predictor
    x0, x1 = _smooth_step(setup)
    a, b = pred.pressure(x1), pred.pressure(x1)
    assert a.tobytes() == b.tobytes()               # cold solves: what a restart recomputes
    f.forward_solve(x0)
    P0 = bk.to_host(f.solver.Pf).copy()
    start = pred.predict(x0, None, x0, bk.upload(P0))
    assert start[setup.grid.decomp.owned()].tobytes() == \
        P0[setup.grid.decomp.owned()].tobytes()
    pred.commit(5)                    # x0's coarse pressure now serves the warm start 5
    assert pred.cached(5) and not pred.cached(6)
    iters = pred.iterations
    pred.predict(x1, 5, x0, bk.upload(P0))          # one coarse solve (x1's)
    one = pred.iterations - iters
    pred.commit(6)
    pred.forget()
    iters = pred.iterations
    pred.predict(x1, 6, x0, bk.upload(P0))          # cache dropped: the reference again
    assert pred.iterations - iters > one


@pytest.mark.parametrize("shape,adaptive,warm,want", [
    ((255, 127), True, True, 4), ((31, 15), True, True, 2), ((15, 7), True, True, 0),
    ((20, 20, 20), True, True, 2), ((255, 127), False, True, 0), ((255, 127), True, False, 0)])
def test_the_automatic_factor(shape, adaptive, warm, want):
    from types import SimpleNamespace

    from hpcinv.app.resolve import prediction_factor
    cfg = SimpleNamespace(
        inversion=SimpleNamespace(adaptive_tolerance=adaptive, warm_start=warm,
                                  forward_prediction=None),
        solver=SimpleNamespace(method="apt"))
    assert prediction_factor(cfg, shape) == want
    assert prediction_factor(cfg, shape, forward_memory=3) == 0     # the subspace instead
    cfg.inversion.forward_prediction = 2                # asked for: used if warm starts are on
    assert prediction_factor(cfg, shape) == (2 if warm else 0)
    cfg.inversion.forward_prediction, cfg.solver.method = None, "petsc"
    assert prediction_factor(cfg, shape) == 0


@pytest.mark.parametrize("value", [1, -1, 17])
def test_bad_factors_are_one_line_errors(tmp_path, value):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[inversion]\nforward_prediction = {value}\n")
    assert_one_line(run_cli("invert", cfg, "-o", tmp_path / "r"), 2,
                    "inversion.forward_prediction")


def test_both_warm_starts_at_once_are_a_one_line_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[grid]\nnx = 63\nny = 31\n[inversion]\nforward_prediction = 4\n"
                   "forward_memory = 2\n")
    assert_one_line(run_cli("invert", cfg, "-o", tmp_path / "r"), 2,
                    "inversion.forward_prediction = 4", "forward_memory = 2", "alternatives")


def test_runs_without_the_subspace_use_it(tmp_path):
    """Adaptive runs with ``forward_memory = 0`` (the low-memory choice) get the correction
    automatically: the resolved config names the factor, the checkpoint keeps the warm start's
    model, every history line carries the coarse solves' cost (in fine PT iterations). The
    default (the subspace) has no correction."""
    import h5py
    cfg = tmp_path / "c.toml"
    cfg.write_text("[grid]\nnx = 63\nny = 31\n[output]\nfigures = false\n"
                   "[inversion]\niterations = 3\nforward_memory = 0\n")
    run = tmp_path / "r"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    from hpcinv import config as config_mod
    assert config_mod.load(run / "config.toml").inversion.forward_prediction == 4
    lines = history(run)
    assert all(r["prediction_work"] >= 0 for r in lines)
    assert sum(r["prediction_work"] for r in lines) > 0
    assert lines[-1]["final_prediction_work"] > 0
    with h5py.File(run / "checkpoint.h5") as f:
        names = []
        f.visit(names.append)
    assert any(n.endswith("forward_warm_logK") for n in names), names
    off = tmp_path / "off.toml"
    off.write_text(cfg.read_text() + "forward_prediction = 0\n")
    run0 = tmp_path / "r0"
    assert main(["invert", str(off), "-q", "-o", str(run0)]) == 0
    assert "prediction_work" not in history(run0)[1]
    assert json.dumps(history(run0)[0]["misfit"]) == json.dumps(lines[0]["misfit"])
    default = tmp_path / "default.toml"
    default.write_text(cfg.read_text().replace("forward_memory = 0\n", ""))
    rd = tmp_path / "rd"
    assert main(["invert", str(default), "-q", "-o", str(rd)]) == 0
    resolved = config_mod.load(rd / "config.toml").inversion
    assert (resolved.forward_memory, resolved.forward_prediction) == (3, 0)
    assert "prediction_work" not in history(rd)[1]
