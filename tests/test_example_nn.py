"""examples/nn_inversion.py (an MLP parameterisation of log K trained with Adam through the
PyTorch layer): the run directory it writes, the demo's J0, decomposition invariance and its
one-line errors."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch  # noqa: F401  (a test dependency: the example needs it)

from hpcinv.app.cli import main as hpcinv_main
from hpcinv.app.plot import cmd_plot
from test_inversion import ENV, MPIEXEC, history, strip

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nn_inversion.py"
SMALL = ["--nx", "63", "--ny", "31", "--iterations", "8", "--threads", "1", "-q"]
# what every history line of `hpcinv invert` has (the example adds lr, grad_norm, ...)
KEYS = {"iteration", "misfit", "misfit_ratio", "max_dlogK", "forward_iterations",
        "adjoint_iterations", "wall_time"}


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("nn_inversion", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_run(example, tmp_path_factory):
    run = tmp_path_factory.mktemp("nn") / "run"
    assert example.main([*SMALL, "-o", str(run)]) == 0
    return run


def test_writes_the_run_directory_of_an_inversion(small_run):
    run = small_run
    for name in ("config.toml", "setup.h5", "history.jsonl", "model_final.h5",
                 "model_final.xmf", "nn_model.pt"):
        assert (run / name).is_file(), name
    h = history(run)
    assert [r["iteration"] for r in h] == list(range(9))
    assert all(KEYS <= set(r) for r in h)
    assert h[0]["misfit_ratio"] == 1.0 and h[-1]["misfit"] < h[0]["misfit"]
    with h5py.File(run / "model_final.h5") as f:
        assert f["logK"].shape == f["Pf"].shape == (63, 31)
        assert f.attrs["iteration"] == 8 and list(f.attrs["shape"]) == [63, 31]
        assert f.attrs["misfit"] == pytest.approx(h[-1]["misfit"], rel=1e-12)
        assert np.all(np.isfinite(f["logK"][...])) and np.ptp(f["logK"][...]) > 0
    with h5py.File(run / "setup.h5") as f:
        assert f["logK_true"].shape == (63, 31) and f["obs_values"].shape == (64,)
    for name in ("model.png", "pressure.png", "misfit.png"):
        assert (run / "figures" / name).stat().st_size > 1000
    assert cmd_plot(run) == 0                    # `hpcinv plot DIR` works on it


def test_starts_from_the_demo_scenario(small_run, tmp_path):
    """Same true model, observations and logK0 as `hpcinv invert` on the default config: the
    zero-initialised last layer makes J0 the inversion's J0."""
    ref = tmp_path / "inv"
    exact = tmp_path / "exact.toml"           # J0 from solves at tol (adaptive: to 0.1 %)
    exact.write_text("[inversion]\nadaptive_tolerance = false\n")
    assert hpcinv_main(["invert", str(exact), "-q", "--nx", "63", "--ny", "31",
                        "--iterations", "1", "-o", str(ref)]) == 0
    assert history(small_run)[0]["misfit"] == pytest.approx(history(ref)[0]["misfit"],
                                                            rel=1e-12)
    with h5py.File(small_run / "setup.h5") as a, h5py.File(ref / "setup.h5") as b:
        for name in ("logK_true", "obs_points", "obs_values", "obs_sigma", "well_positions"):
            assert np.array_equal(a[name][...], b[name][...]), name


def test_same_history_on_1_and_2_ranks(small_run, tmp_path):
    """The weights stay identical on every rank (same seed, summed gradients): 2 ranks follow
    the 1-rank run up to the summation order of the weight gradients."""
    run = tmp_path / "r2"
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(EXAMPLE), *SMALL, "-o",
                        str(run)], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    h1, h2 = strip(history(small_run)), strip(history(run))
    for a, b in zip(h1, h2, strict=True):
        assert a["forward_iterations"] == b["forward_iterations"]
        assert a["adjoint_iterations"] == b["adjoint_iterations"]
        assert b["misfit"] == pytest.approx(a["misfit"], rel=1e-10, abs=0)
    with h5py.File(small_run / "model_final.h5") as f, h5py.File(run / "model_final.h5") as g:
        assert np.allclose(f["logK"][...], g["logK"][...], rtol=0, atol=1e-10)


def test_refuses_a_used_directory(example, small_run, capsys):
    assert example.main([*SMALL, "-o", str(small_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nn_inversion: error: ") and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_torch_is_one_line(example, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)       # `import torch` now fails
    assert example.main([*SMALL, "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nn_inversion: error: PyTorch is not installed")
    assert "pip install" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
