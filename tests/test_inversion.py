"""The inversion product: the workshop recipe's outcome, decomposition invariance, restart after
SIGKILL on other rank counts, optimiser behaviour, warm starts and run-directory errors."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinv.app.cli import main
from hpcinv.inverse.optimise import halved_note
from inversion_cases import small_config

MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))
if not Path(MPIEXEC).exists():
    MPIEXEC = "mpiexec"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}


def history(run):
    return [json.loads(s) for s in (Path(run) / "history.jsonl").read_text().splitlines()]


def strip(h):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in h]


def final(run, name="logK"):
    with h5py.File(Path(run) / "model_final.h5") as f:
        return f[name][...]


def run_cli(*args, ranks=1, **popen):
    cmd = [sys.executable, "-m", "hpcinv", *map(str, args)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, **popen)


def test_workshop_demo_recovers_the_barrier(tmp_path):
    """hpcinv demo: GD, 50 iterations, dgamma 0.2, 49 smoothing steps of 0.2, demeaned misfit."""
    run = tmp_path / "demo"
    assert main(["demo", "-q", "-o", str(run)]) == 0
    h = history(run)
    assert len(h) == 51 and h[-1]["misfit_ratio"] <= 0.05
    logK = final(run)
    with h5py.File(run / "setup.h5") as f:
        true = f["logK_true"][...]
    log10 = logK / np.log(10)
    barrier = true < np.log(1e-3)
    assert log10[barrier].mean() < -1.0
    x = -1 + (np.arange(255) + 0.5) * 2 / 255
    y = (np.arange(127) + 0.5) / 127
    X, Y = np.meshgrid(x, y, indexing="ij")
    dist = np.hypot(np.maximum(np.abs(X) - 0.04, 0), np.maximum(np.maximum(0.3 - Y, Y - 0.8), 0))
    assert abs(log10[dist > 0.2].mean()) < 0.5
    for name in ("model.png", "pressure.png", "misfit.png"):
        assert (run / "figures" / name).stat().st_size > 1000
    # monotone, or the step was rejected and the progress line says so
    for prev, cur in zip(h, h[1:]):
        assert cur["misfit"] <= prev["misfit"] or "rejected" in cur["note"]


def test_histories_and_models_identical_on_1_and_4_ranks(tmp_path):
    cfg = small_config(tmp_path, iterations=5)
    assert main(["invert", str(cfg), "-q", "-o", str(tmp_path / "r1")]) == 0
    p = run_cli("invert", cfg, "-q", "-o", tmp_path / "r4", ranks=4)
    assert p.returncode == 0, p.stderr
    assert strip(history(tmp_path / "r1")) == strip(history(tmp_path / "r4"))
    for name in ("logK", "Pf"):
        assert np.array_equal(final(tmp_path / "r1", name), final(tmp_path / "r4", name))


def _kill_after(cmd_args, run, lines, ranks):
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "hpcinv", *map(str, cmd_args)]
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    hist = Path(run) / "history.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if hist.exists() and len(hist.read_text().splitlines()) >= lines:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("restart_ranks", [1, 3])
def test_sigkill_and_restart_on_other_rank_counts(tmp_path, restart_ranks):
    cfg = small_config(tmp_path, iterations=30, checkpoint_every=2)   # long enough to kill mid-run
    ref = tmp_path / "ref"
    assert main(["invert", str(cfg), "-q", "-o", str(ref)]) == 0
    run = tmp_path / "run"
    _kill_after(["invert", cfg, "-q", "-o", run], run, lines=6, ranks=2)
    assert (run / "checkpoint.h5").exists()
    assert not (run / "model_final.h5").exists()       # really killed mid-run
    p = run_cli("invert", "--restart", run, "-q", ranks=restart_ranks)
    assert p.returncode == 0, p.stderr
    assert strip(history(run)) == strip(history(ref))
    assert np.array_equal(final(run), final(ref))


def sigterm_after(cfg, run, lines):
    """Run ``hpcinv invert cfg -q -o run``, send SIGTERM once ``history.jsonl`` has ``lines``
    lines; ``(exit status, stdout)``."""
    proc = subprocess.Popen([sys.executable, "-m", "hpcinv", "invert", str(cfg), "-q", "-o",
                             str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    hist = Path(run) / "history.jsonl"
    while not (hist.exists() and len(hist.read_text().splitlines()) >= lines):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def test_sigterm_writes_a_checkpoint_and_stops_cleanly(tmp_path):
    cfg = small_config(tmp_path, iterations=200, checkpoint_every=0)
    run = tmp_path / "run"
    rc, out = sigterm_after(cfg, run, lines=3)
    assert rc == 3 and "SIGTERM" in out
    assert (run / "checkpoint.h5").exists()
    with h5py.File(run / "checkpoint.h5") as f:
        assert f.attrs["iteration"] == len(history(run)) - 1


def test_adaptive_gradient_descent_halves_the_step_within_the_iteration(tmp_path):
    """With adaptive tolerances a trial costs a forward solve (the gradient comes at accepted
    points only): an increase halves the step and tries again in the same iteration."""
    cfg = small_config(tmp_path, iterations=6, dgamma=3.0)
    run = tmp_path / "big"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    h = history(run)
    halved = [r for r in h[1:] if r["note"] == halved_note(False)]   # line_search = false
    assert halved and not any(r.get("rejected") for r in h)
    assert all(r["step"] < 3.0 and r["max_dlogK"] > 0 for r in halved)
    J = [{**r, **r.get("before_final", {})}["misfit"] for r in h]
    assert all(b < a for a, b in zip(J, J[1:]))          # every iteration accepted a step


def test_gradient_descent_halves_the_step_on_an_increase(tmp_path, capsys):
    """Issue 13: a rejected step's line shows the accepted model (the model did not change) in
    its columns, the trial as J/J0 in its note and as trial_misfit(_ratio)."""
    cfg = small_config(tmp_path, iterations=6, dgamma=3.0, adaptive_tolerance=False)
    run = tmp_path / "big"
    assert main(["invert", str(cfg), "-o", str(run)]) == 0
    h = history(run)
    rejected = [(prev, r) for prev, r in zip(h, h[1:]) if "rejected" in r["note"]]
    assert rejected, "a step of 3 in logK should overshoot"
    steps = [r["step"] for r in h[1:]]
    assert min(steps) < 3.0
    lines = {int(m.group(1)): m.group(0) for m in
             re.finditer(r"^iter +(\d+)/6 .*$", capsys.readouterr().out, re.M)}
    for prev, r in rejected:
        shown = {**r, **r.get("before_final", {})}     # the last line: before finish() amends it
        assert r["rejected"] and shown["misfit"] == prev["misfit"] and r["max_dlogK"] == 0.0
        assert shown["misfit_ratio"] == prev["misfit_ratio"]
        assert r["trial_misfit"] > r["misfit"]
        assert r["trial_misfit_ratio"] == pytest.approx(r["trial_misfit"] / h[0]["misfit"])
        assert f"rejected trial J/J0 {r['trial_misfit_ratio']:.4e}" in r["note"]
        assert f"dgamma halved to {r['step'] / 2:.4g}" in r["note"]
        line = lines[r["iteration"]]
        assert f"J/J0 {prev['misfit_ratio']:.4e}" in line and r["note"] in line
    J = [{**r, **r.get("before_final", {})}["misfit"] for r in h]
    assert all(b <= a for a, b in zip(J, J[1:]))          # the accepted models': monotone


@pytest.mark.parametrize("method", ["gd", "lbfgs"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_one_final_misfit_everywhere(tmp_path, method, adaptive):
    """Issue 13: model_final.h5's misfit is the last history line's (and the last line is the
    accepted model's), with either optimiser and with fixed or adaptive tolerances."""
    cfg = small_config(tmp_path, iterations=4, method=method, adaptive_tolerance=adaptive,
                       dgamma=3.0 if method == "gd" else 0.2)
    run = tmp_path / "r"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    with h5py.File(run / "model_final.h5") as f:
        assert float(f.attrs["misfit"]) == history(run)[-1]["misfit"]


def test_lbfgs_decreases_the_misfit_monotonically(tmp_path):
    cfg = small_config(tmp_path, {"smoothing_steps": 8}, method="lbfgs", iterations=10)
    run = tmp_path / "lbfgs"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    J = [r["misfit"] for r in history(run)]
    assert all(b <= a for a, b in zip(J, J[1:]))
    assert J[-1] < 0.1 * J[0]


def test_lbfgs_precondition_none_is_honoured(tmp_path):
    """precondition = "none": L-BFGS on logK with the raw gradient, a different path than the
    smoothing-preconditioned one."""
    runs = {}
    for pre in ("smoothing", "none"):
        cfg = small_config(tmp_path, {"smoothing_steps": 8}, method="lbfgs", iterations=3,
                           precondition=pre)
        run = tmp_path / f"pre_{pre}"
        assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
        runs[pre] = history(run)
        assert runs[pre][-1]["misfit"] < runs[pre][0]["misfit"]
    assert runs["none"][1]["misfit"] != runs["smoothing"][1]["misfit"]


def test_warm_starts_cut_pt_iterations(tmp_path):
    """Warm starts save the decades of residual reduction the previous solution already has;
    with a fixed tolerance that is a fraction, not a multiple (see docs/performance.md)."""
    totals = {}
    for warm in (True, False):
        cfg = small_config(tmp_path, iterations=8, warm_start=warm, adaptive_tolerance=False)
        run = tmp_path / f"warm{warm}"
        assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
        h = history(run)
        totals[warm] = sum(r["forward_iterations"] for r in h[1:])
        assert h[-1]["misfit_ratio"] < 1
    assert totals[True] < 0.9 * totals[False], totals     # 5100 vs 6100 measured here


def test_run_directory_errors_leave_existing_output_intact(tmp_path):
    cfg = small_config(tmp_path, iterations=2)
    run = tmp_path / "run"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    p = run_cli("invert", cfg, "-q", "-o", run)
    assert p.returncode == 2 and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    other = tmp_path / "other.toml"
    other.write_text(cfg.read_text().replace("nx = 63", "nx = 65"))
    (run / "config.toml").write_text(other.read_text())
    p = run_cli("invert", "--restart", run, "-q")
    assert p.returncode == 2 and "differs" in p.stderr and "Traceback" not in p.stderr
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for name in ("checkpoint.h5", "model_final.h5", "history.jsonl", "setup.h5"):
        assert after[name] == before[name], name
    p = run_cli("invert", "--restart", tmp_path / "missing", "-q")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def _toml(run):
    import tomllib
    return tomllib.loads((Path(run) / "config.toml").read_text())


def test_run_directory_config_reruns_the_demo_bitwise(tmp_path):
    """Issue 13: a run directory's config.toml is the complete resolved problem (grid, domain,
    permeability model, wells, observation points, solver keys), and rerunning it gives the
    same history and final model bitwise."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["demo", "-q", "--nx", "63", "--ny", "31", "--iterations", "3", "-o", str(a)]) == 0
    cfg = _toml(a)
    assert cfg["grid"] == {"nx": 63, "ny": 31, "extent": [[-1.0, 1.0], [0.0, 1.0]]}
    assert cfg["permeability"]["type"] == "barrier" and cfg["permeability"]["value"] == 1.0
    assert cfg["permeability"]["barrier"] == {"x": [-0.04, 0.04], "y": [0.3, 0.8], "value": 1e-6}
    assert [w["rate"] for w in cfg["wells"]] == [1.0, -1.0]
    assert cfg["observations"]["points"] == "grid" and "x" in cfg["observations"]["grid"]
    for sec in ("solver", "adjoint"):
        assert {"cfl", "maxiter", "tol", "re", "ncheck"} <= set(cfg[sec])
    assert cfg["regularisation"]["smoothing_coefficient"] == 0.2
    assert {"initial_logK", "adjoint_memory", "forward_memory"} <= set(cfg["inversion"])
    assert cfg["inversion"]["forward_memory"] == 3
    assert main(["invert", str(a / "config.toml"), "-q", "-o", str(b)]) == 0
    assert strip(history(a)) == strip(history(b))
    for name in ("logK", "Pf"):
        assert np.array_equal(final(a, name), final(b, name))
    rerun = _toml(b)
    assert rerun.pop("output") != cfg.pop("output") and rerun == cfg      # idempotent


@pytest.mark.parametrize("command, out", [("forward", "fields.h5"), ("gradient", "gradient.h5")])
def test_forward_and_gradient_configs_rerun_bitwise(tmp_path, command, out):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([command, "-q", "--problem", "geothermal3d", "--nx", "16", "--ny", "8",
                 "--nz", "8", "-o", str(a)]) == 0
    cfg = _toml(a)
    assert cfg["grid"]["nz"] == 8 and len(cfg["grid"]["extent"]) == 3
    assert all(w["z_range"] == [0.2, 0.8] for w in cfg["wells"])
    assert main([command, str(a / "config.toml"), "-q", "-o", str(b)]) == 0
    with h5py.File(a / out) as f, h5py.File(b / out) as g:
        for name in f:
            if isinstance(f[name], h5py.Dataset):
                assert np.array_equal(f[name][()], g[name][()]), name
