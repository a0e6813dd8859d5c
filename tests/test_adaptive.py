"""Issue 12: adaptive solve tolerances and adjoint subspace warm starts.

* ``adaptive_tolerance = false`` with ``first_check = ncheck`` reproduces the code before the
  change bitwise (a stored reference of two small inversions computed at the branch start,
  ``data/``);
* with adaptive tolerances a 2D layered and a 3D two-blob inversion reach the quality of exact
  solves (J/J0 at tol 1e-8 within a modest factor) with fewer PT iterations, and no accepted
  step increases the tight misfit by more than the documented bound;
* adaptive runs are bitwise identical on 1 and 2 ranks and across a restart.
"""
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinv.app.cli import main
from test_inversion import final, history, run_cli, strip

DATA = Path(__file__).with_name("data") / "adaptive_off_reference.json"


@pytest.mark.parametrize("method", ["gd", "lbfgs"])
def test_adaptive_off_is_bitwise_the_code_before(tmp_path, method):
    ref = json.loads(DATA.read_text())[method]
    cfg = tmp_path / "c.toml"
    # the code before checked the residual every ncheck = 100 iterations: first_check = ncheck
    cfg.write_text(ref["config"].replace("[inversion]\n",
                                         "[inversion]\nadaptive_tolerance = false\n", 1)
                   + "[solver]\nfirst_check = 100\n[adjoint]\nfirst_check = 100\n")
    run = tmp_path / "r"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    assert strip(history(run)) == ref["history"]
    assert hashlib.sha256(final(run).tobytes()).hexdigest() == ref["logK_sha256"]
    with h5py.File(run / "model_final.h5") as f:
        assert float(f.attrs["misfit"]) == ref["final_misfit"]


LAYERED_2D = """
[problem]
name = "custom"
[grid]
extent = [[0.0, 2.0], [0.0, 1.0]]
nx = 64
ny = 32
[permeability]
type = "layered"
value = 1.0
layers = [{axis = "y", range = [0.0, 0.3], value = 0.1},
          {axis = "y", range = [0.6, 0.7], value = 1e-3}]
[[wells]]
position = [0.4, 0.45]
rate = 1.0
[[wells]]
position = [1.6, 0.45]
rate = -1.0
[observations]
points = "grid"
grid = {x = [0.2, 1.8, 9], y = [0.35, 0.95, 5]}
method = "linear"
[inversion]
iterations = 20
"""

BLOBS_3D = """
[problem]
name = "custom"
[grid]
extent = [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
nx = 20
ny = 20
nz = 20
[permeability]
type = "layered"
value = 1.0
layers = [{axis = "x", range = [0.2, 0.45], value = 10.0},
          {axis = "z", range = [0.6, 0.8], value = 0.05}]
[[wells]]
position = [0.3, 0.5, 0.5]
rate = 1.0
[[wells]]
position = [0.7, 0.5, 0.5]
rate = -1.0
[observations]
points = "grid"
grid = {x = [0.15, 0.85, 4], y = [0.2, 0.8, 3], z = [0.2, 0.8, 3]}
method = "linear"
[inversion]
iterations = 12
"""


def _run_library(text, adaptive, method="gd"):
    """Run an inversion in-process; returns (history, tight J/J0, tight J per accepted model)."""
    from mpi4py import MPI

    from hpcinv import config as config_mod
    from hpcinv.app.assembly import build
    from hpcinv.app.run import finish
    from hpcinv.inverse.gradient import AdjointGradient
    from hpcinv.solvers import PTParams
    data = config_mod.tomllib.loads(text)
    data["inversion"].update(adaptive_tolerance=adaptive, method=method)
    data["output"] = {"figures": False}
    cfg = config_mod.from_dict(data)
    setup = build(cfg, MPI.COMM_SELF)
    opt, bk = setup.optimiser, setup.backend
    tight = AdjointGradient(setup.true.copy(), setup.observations, bk, PTParams(tol=1e-8),
                            PTParams(tol=1e-8), warm_start=False)
    J0 = tight.misfit(setup.logK0)[0]
    hist, accepted = [opt.start(setup.logK0)], [J0]
    for _ in range(cfg.inversion.iterations):
        rec = opt.step()
        hist.append(rec)
        if rec["max_dlogK"] > 0:
            accepted.append(tight.misfit(bk.to_host(opt.arrays["x"]))[0])
        if "stopping" in rec["note"]:
            break

    class H:
        lines = hist

        def rewrite(self):
            pass
    finish(opt, H())
    Jt = tight.misfit(bk.to_host(opt.arrays["x"]))[0]
    return hist, Jt / J0, accepted + [Jt]


def _pt(hist):
    return sum(r["forward_iterations"] + r["adjoint_iterations"]
               + r.get("final_forward_iterations", 0) + r.get("final_adjoint_iterations", 0)
               for r in hist)


@pytest.mark.parametrize("case,method", [(LAYERED_2D, "gd"), (LAYERED_2D, "lbfgs"),
                                         (BLOBS_3D, "gd")])
def test_adaptive_reaches_exact_quality_with_fewer_iterations(case, method):
    h_exact, r_exact, _ = _run_library(case, False, method)
    h_ad, r_ad, accepted = _run_library(case, True, method)
    assert r_ad <= 2.0 * r_exact, (r_ad, r_exact)
    assert _pt(h_ad) < _pt(h_exact), (_pt(h_ad), _pt(h_exact))
    # the final line reports the tight misfit (the policy's final evaluation): two solves to
    # tol 1e-8 agree to a few 1e-6 of the misfit (3D blobs: the final line 2.2e-6 and the cold
    # solve 0.9e-6 from one at 1e-12), a loose one is 1e-3 off
    assert abs(h_ad[-1]["misfit"] / accepted[-1] - 1) < 1e-5
    accepted = accepted[:-1]
    # safe decisions: an accepted step never increases the tight misfit by more than the
    # documented bound (the estimate's errors: 1e-3 of the misfit)
    for a, b in zip(accepted, accepted[1:]):
        assert b <= a * (1 + 1e-3), (a, b)
    # tolerances are recorded, within [user tol, loose]
    for r in h_ad:
        assert 1e-8 * (1 - 1e-9) <= r["forward_tol"] <= 1e-3
        if r["adjoint_tol"] is not None:
            assert 1e-8 * (1 - 1e-9) <= r["adjoint_tol"] <= 1e-3


def _small(tmp_path, iterations, **inv):
    inv = {"iterations": iterations, "checkpoint_every": 2, **inv}
    text = "[grid]\nnx = 63\nny = 31\n[output]\nfigures = false\n[inversion]\n" + \
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in inv.items())
    path = tmp_path / f"small{iterations}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("method,ranks,warm", [
    ("gd", 2, {}), ("lbfgs", 1, {}),
    ("gd", 2, {"forward_memory": 0}),         # the coarse-grid correction instead of the subspace
])
def test_adaptive_bitwise_on_1_and_2_ranks_and_across_a_restart(tmp_path, method, ranks, warm):
    """GD on 1 and 2 ranks; L-BFGS's dot products are sums over ranks, so it is bitwise only
    for one decomposition (as without adaptive tolerances): its restart runs on 1 rank."""
    cfg = _small(tmp_path, 8, method=method, **warm)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    assert main(["invert", str(cfg), "-q", "-o", str(r1)]) == 0
    assert "forward_tol" in history(r1)[3] and "before_final" in history(r1)[-1]
    with h5py.File(r1 / "model_final.h5") as f:
        assert float(f.attrs["misfit"]) == history(r1)[-1]["misfit"]
    if ranks > 1:
        p = run_cli("invert", cfg, "-q", "-o", r2, ranks=ranks)
        assert p.returncode == 0, p.stderr
        assert strip(history(r1)) == strip(history(r2))
        assert np.array_equal(final(r1), final(r2))
    # a finished 4-iteration run continued to 8 is the 8-iteration run
    rs = tmp_path / "rs"
    assert main(["invert", str(_small(tmp_path, 4, method=method, **warm)), "-q", "-o",
                 str(rs)]) == 0
    p = run_cli("invert", "--restart", rs, "--iterations", 8, "-q", ranks=ranks)
    assert p.returncode == 0, p.stderr
    assert strip(history(rs)) == strip(history(r1))
    assert np.array_equal(final(rs), final(r1))


def test_adjoint_subspace_least_squares_is_exact_in_the_span():
    from hpcinv.inverse.adjoint_warm import least_squares
    rng = np.random.default_rng(0)
    cols = [rng.standard_normal(20) for _ in range(4)]
    c_true = [0.5, -2.0, 0.0, 3.0]
    w = sum(c * v for c, v in zip(c_true, cols))
    assert np.allclose(least_squares(cols, w), c_true, atol=1e-12)
    # a dependent column is dropped (coefficient 0), the fit stays exact
    c = least_squares(cols + [cols[0] * 2], w)
    assert c[-1] == 0.0 and np.allclose(sum(ci * v for ci, v in zip(c, cols + [cols[0] * 2])), w)
