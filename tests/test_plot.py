"""Figures of a run directory (``hpcinv.plot``): fake run directories written with h5py (2D, 3D,
virtual datasets, partial runs, field data) and checks that valid PNGs come out and missing
pieces are skipped with a message instead of failing."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest

from hpcinv.errors import ConfigError
from hpcinv.app.plot import cmd_plot, plot_run, read_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL = {"model.png", "pressure.png", "misfit.png"}


def png_size(path) -> tuple[int, int]:
    """Width and height of a PNG, checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_pngs(paths, names=ALL):
    assert {p.name for p in paths} == names
    for p in paths:
        assert p.parent.name == "figures"
        w, h = png_size(p)
        assert 300 <= w <= 3000 and 200 <= h <= 3000, (p.name, w, h)
        assert p.stat().st_size > 10_000, p


def fields(shape, extent):
    """A barrier ``logK_true``, a blurred ``logK`` and a dipole ``Pf`` on cell centres."""
    axes = [np.linspace(lo, hi, 2 * n + 1)[1::2] for n, lo, hi in
            zip(shape, extent[0::2], extent[1::2])]
    c = np.meshgrid(*axes, indexing="ij")
    barrier = (np.abs(c[0]) < 0.1) & (c[1] > 0.3) & (c[1] <= 0.8)
    true = np.where(barrier, math.log(1e-2), 0.0)
    inv = true * 0.6 * np.exp(-c[0] ** 2 / 0.02)
    r1 = np.hypot(c[0] + 0.6, c[1] - 0.45) + 0.05
    r2 = np.hypot(c[0] - 0.6, c[1] - 0.45) + 0.05
    pf = -np.log(r1) + np.log(r2)
    return true, inv, pf - pf.mean()


def write_setup(run, shape, extent, true=True):
    ndim = len(shape)
    true_logK, _, _ = fields(shape, extent)
    z = [0.5] if ndim == 3 else []
    wells = np.array([[-0.6, 0.45, *z], [0.6, 0.45, *z]])
    ox, oy = np.meshgrid(np.linspace(-0.9, 0.9, 7), np.linspace(0.1, 0.9, 5), indexing="ij")
    obs = np.stack([ox.ravel(), oy.ravel()] + [np.full(ox.size, 0.5)] * (ndim == 3), axis=1)
    with h5py.File(run / "setup.h5", "w") as f:
        if true:
            f["logK_true"] = true_logK
        f.attrs["extent"] = np.asarray(extent, float)
        f.attrs["spacing"] = [(hi - lo) / n for n, lo, hi in zip(shape, extent[0::2],
                                                                   extent[1::2])]
        f.attrs["shape"] = shape
        f["obs_points"] = obs
        f["obs_values"] = np.zeros(len(obs))
        f["obs_sigma"] = np.ones(len(obs))
        f["well_positions"] = wells
        f["well_rates"] = [1.0, -1.0]


def write_model(run, shape, extent, name="model_final.h5", iteration=12):
    _, logK, pf = fields(shape, extent)
    with h5py.File(run / name, "w") as f:
        f["logK"], f["Pf"] = logK, pf
        f.attrs["iteration"] = iteration


def write_history(run, n=13, partial_line=False):
    lines = []
    for i in range(n):
        rec = {"iteration": i, "misfit": 3.0 * 0.7 ** i, "misfit_ratio": 0.7 ** i,
               "step": 0.2, "max_grad": 1.0, "forward_iterations": 500,
               "adjoint_iterations": 400, "wall_time": 0.1 * i}
        if i == 5:
            rec["misfit_ratio"] *= 1.3
            rec["note"] = "step halved: misfit increased"
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if partial_line:
        text += '{"iteration": 13, "misf'           # a line being written
    (run / "history.jsonl").write_text(text)


def make_run(tmp_path, ndim=2, true=True, model="model_final.h5", setup=True, history=True):
    shape, extent = ((32, 16), [-1, 1, 0, 1]) if ndim == 2 else ((16, 8, 6), [-1, 1, 0, 1, 0, 1])
    run = tmp_path / f"run{ndim}d"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        f'[problem]\nname = "geothermal{ndim}d"\n\n[grid]\nnx = {shape[0]}\nny = {shape[1]}\n'
        + (f"nz = {shape[2]}\n" if ndim == 3 else ""))
    if setup:
        write_setup(run, shape, extent, true)
    if model:
        write_model(run, shape, extent, model)
    if history:
        write_history(run)
    return run


@pytest.mark.parametrize("ndim", [2, 3])
def test_full_run(tmp_path, capsys, ndim):
    run = make_run(tmp_path, ndim)
    paths = plot_run(run)
    assert_pngs(paths)
    assert "skipped" not in capsys.readouterr().err
    # redrawing (e.g. on a running run) overwrites in place
    assert_pngs(plot_run(run))


def test_field_data_without_true_model_has_one_panel(tmp_path):
    with_true = {p.name: png_size(p) for p in plot_run(make_run(tmp_path / "a"))}
    without = {p.name: png_size(p) for p in plot_run(make_run(tmp_path / "b", true=False))}
    assert set(without) == ALL
    assert without["model.png"][0] < 0.75 * with_true["model.png"][0]


def test_running_run_uses_latest_model(tmp_path, capsys):
    run = make_run(tmp_path, model="model_latest.h5")
    write_history(run, n=6, partial_line=True)
    assert_pngs(plot_run(run))
    assert "skipped" not in capsys.readouterr().err
    assert [r["iteration"] for r in read_history(run / "history.jsonl")] == list(range(6))


def test_only_history(tmp_path, capsys):
    run = make_run(tmp_path, model=None, setup=False)
    assert_pngs(plot_run(run), {"misfit.png"})
    err = capsys.readouterr().err
    assert "skipped model.png and pressure.png" in err and "model_latest.h5" in err


def test_model_without_setup_or_history(tmp_path, capsys):
    run = make_run(tmp_path, setup=False, history=False)
    (run / "config.toml").unlink()            # extent unknown: axes in cell indices
    assert_pngs(plot_run(run), {"model.png", "pressure.png"})
    assert "skipped misfit.png: no history.jsonl" in capsys.readouterr().err


def test_history_without_usable_ratio_is_skipped(tmp_path, capsys):
    run = make_run(tmp_path, model=None)
    (run / "history.jsonl").write_text('{"iteration": 0, "misfit": 0.0}\n{"iteration": 1')
    assert plot_run(run) == []
    assert "skipped misfit.png" in capsys.readouterr().err


def test_history_ratio_from_misfit_when_absent(tmp_path):
    run = make_run(tmp_path, model=None, setup=False)
    (run / "history.jsonl").write_text("".join(
        json.dumps({"iteration": i, "misfit": 2.0 / (i + 1)}) + "\n" for i in range(4)))
    assert_pngs(plot_run(run), {"misfit.png"})


def test_unreadable_model_is_skipped(tmp_path, capsys):
    run = make_run(tmp_path)
    (run / "model_final.h5").write_bytes(b"not hdf5")
    assert_pngs(plot_run(run), {"misfit.png"})
    assert "cannot read" in capsys.readouterr().err


def test_virtual_dataset_model(tmp_path):
    """A master file whose datasets are HDF5 virtual datasets over per-rank part files."""
    shape, extent = (32, 16, 6), [-1, 1, 0, 1, 0, 1]
    run = make_run(tmp_path, ndim=3, model=None)
    _, logK, pf = fields(shape, extent)
    parts = run.parent / (run.name + ".parts")
    parts.mkdir()
    layouts = {n: h5py.VirtualLayout(shape=shape, dtype="f8") for n in ("logK", "Pf")}
    for r, sl in enumerate((slice(0, 16), slice(16, 32))):
        with h5py.File(parts / f"rank{r}.h5", "w") as f:
            f["logK"], f["Pf"] = logK[sl], pf[sl]
        for n, lay in layouts.items():
            lay[sl] = h5py.VirtualSource(str(parts / f"rank{r}.h5"), n, shape=f_shape(sl, shape))
    with h5py.File(run / "model_final.h5", "w") as f:
        for n, lay in layouts.items():
            f.create_virtual_dataset(n, lay, fillvalue=np.nan)
        f.attrs["iteration"] = 3
    with h5py.File(run / "setup.h5", "a") as f:      # true model on the same grid
        del f["logK_true"]
        f["logK_true"] = fields(shape, extent)[0]
    with h5py.File(run / "model_final.h5", "r") as f:
        np.testing.assert_array_equal(f["logK"][()], logK)
    assert_pngs(plot_run(run))


def f_shape(sl, shape):
    return (sl.stop - sl.start, *shape[1:])


def test_out_dir(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "elsewhere" / "figures"
    paths = plot_run(run, out)
    assert {p.parent for p in paths} == {out}
    assert not (run / "figures").exists()


@pytest.mark.parametrize("what", ["missing", "not_a_run", "a_file"])
def test_not_a_run_directory(tmp_path, what):
    target = tmp_path / "x"
    if what == "not_a_run":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    elif what == "a_file":
        target.write_text("hello")
    with pytest.raises(ConfigError) as exc:
        plot_run(target)
    msg = str(exc.value)
    assert "\n" not in msg and str(target) in msg
    assert not (target / "figures").exists() if target.is_dir() else True


def test_cmd_plot(tmp_path, capsys):
    run = make_run(tmp_path)
    assert cmd_plot(run) == 0
    out = capsys.readouterr().out.split()
    assert sorted(out) == sorted(str(run / "figures" / n) for n in ALL)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text('[problem]\nname = "geothermal2d"\n')
    assert cmd_plot(bare) == 1


def test_import_does_not_pull_matplotlib():
    code = ("import sys, hpcinv, hpcinv.app.plot; "
            "sys.exit(1 if any(m.startswith('matplotlib') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_misfit_curve_joins_accepted_models_only():
    """Issue 13: rejected trials are markers of their own, never points of the curve; older
    histories (the note says "rejected", the misfit is the trial's) are read the same way."""
    from hpcinv.app.plot import misfit_series
    recs = [{"iteration": 0, "misfit": 2.0, "misfit_ratio": 1.0, "note": ""},
            {"iteration": 1, "misfit": 1.0, "misfit_ratio": 0.5, "note": ""},
            {"iteration": 2, "misfit": 1.0, "misfit_ratio": 0.5, "rejected": True,
             "trial_misfit": 3.0, "trial_misfit_ratio": 1.5,
             "note": "rejected trial J/J0 1.5000e+00 (misfit increased), dgamma halved to 0.1"},
            {"iteration": 3, "misfit": 2.4, "misfit_ratio": 1.2,
             "note": "misfit increased (2.4000e+00 > 1.0000e+00): step rejected and halved"},
            {"iteration": 4, "misfit": 0.8, "misfit_ratio": 0.4, "note": "line search halved"}]
    s = misfit_series(recs)
    it, ratio, notes = s["accepted"]
    assert (it, ratio) == ([0, 1, 2, 4], [1.0, 0.5, 0.5, 0.4])
    assert notes == ["", "", None, "line search halved"]      # rejections: not in the legend
    assert s["trials"] == ([2, 3], [1.5, 1.2])


# ------------------------------------------------------------------ issue 22: a newcomer's figures

def test_forward_and_gradient_directories_draw_their_fields(tmp_path, capsys):
    """``hpcinv plot`` on a forward/gradient directory exited 1 with a message about model
    files those commands never write."""
    shape, extent = (32, 16), [-1, 1, 0, 1]
    true, _, pf = fields(shape, extent)
    for name, data, png in (("fields.h5", {"Pf": pf, "K": np.exp(true)}, "fields.png"),
                            ("gradient.h5", {"dJ_dlogK": pf, "dJ_dlogK_smoothed": 0.5 * pf},
                             "gradient.png")):
        run = tmp_path / name[:-3]
        run.mkdir()
        (run / "config.toml").write_text('[problem]\nname = "geothermal2d"\n')
        with h5py.File(run / name, "w") as f:
            for k, v in data.items():
                f[k] = v
            f.attrs["extent"] = extent
        assert cmd_plot(run) == 0
        out = capsys.readouterr()
        assert out.out.split() == [str(run / "figures" / png)]
        assert "model" not in out.err, out.err
        w, h = png_size(run / "figures" / png)
        assert w > 1.5 * h                                   # two panels side by side


def test_forward_directory_of_a_real_run(tmp_path, capsys):
    from hpcinv.app.cli import main
    run = tmp_path / "fwd"
    assert main(["forward", "--nx", "31", "--ny", "17", "-q", "-o", str(run)]) == 0
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.split()[-1] == str(run / "figures" / "fields.png")


def test_model_panels_have_their_own_ranges_and_a_difference():
    """The inverted model shared the true model's range down to -6 (a recovered barrier at
    -1.7 looked faint) and there was no difference panel."""
    from hpcinv.app.plot import model_panels
    true = np.array([[0.0, -6.0], [0.0, 0.0]])
    inv = np.array([[0.0, -1.7], [-0.2, 0.1]])
    panels = model_panels(true, inv, "inverted")
    assert [p[0] for p in panels] == ["true model", "inverted", "difference: inverted - true"]
    assert panels[0][3] == (-6.0, 0.0) and panels[1][3] == (-1.7, 0.1)
    np.testing.assert_array_equal(panels[2][1], inv - true)
    assert panels[2][2] == "RdBu_r" and panels[2][3] == (-4.3, 4.3)
    for title, _, _, _, label in panels[:2]:                 # ln in the files, log10 shown
        assert "log10 K" in label and "ln K" in label, label
    only = model_panels(None, inv, "inverted")               # field data: no true model
    assert len(only) == 1 and only[0][3] == (-1.7, 0.1)


def test_axes_say_dimensionless_and_wells_look_as_in_the_legend(tmp_path):
    """Units: the problem is nondimensional, and the axes say so. Wells: filled with a black
    edge, in the plot and in the legend alike (they looked hollow on a pressure of their
    own colour, filled in the legend)."""
    from matplotlib.colors import to_rgba
    from hpcinv.app.plot import _figure, _mark_wells, _show
    fig = _figure(1, 4, 3)
    ax = fig.subplots()
    _show(ax, np.zeros((4, 3)), np.array([0, 1, 0, 1.0]), "viridis")
    assert "dimensionless" in ax.get_xlabel() and "dimensionless" in ax.get_ylabel()
    _mark_wells(ax, {"well_positions": np.array([[0.2, 0.5], [0.8, 0.5]]),
                     "well_rates": np.array([1.0, -1.0])})
    handles = ax.get_legend_handles_labels()[0]
    legend = ax.legend()
    assert len(handles) == 2
    for drawn, shown in zip(handles, legend.legend_handles):
        assert np.allclose(drawn.get_edgecolor()[0], to_rgba("black"))
        assert np.allclose(shown.get_edgecolor()[0], drawn.get_edgecolor()[0])
        assert np.allclose(shown.get_facecolor()[0], drawn.get_facecolor()[0])
        assert not np.allclose(drawn.get_facecolor()[0], to_rgba("white"))


def test_misfit_legend_names_no_line_search_that_did_not_run(tmp_path, monkeypatch):
    """With ``line_search = false`` the adaptive optimiser's own halving was labelled "line
    search halved the step"."""
    import hpcinv.app.plot as plot
    assert plot.note_label("line search halved the step", True) == \
        "line search halved the step"
    label = plot.note_label("line search halved the step", False)
    assert "line search" not in label.replace("line_search = false", "") and "halved" in label
    assert plot.note_label("other note", False) == "other note"
    seen = []
    monkeypatch.setattr(plot, "note_label", lambda n, ls: seen.append(ls) or n)
    run = make_run(tmp_path, model=None, setup=False)
    with open(run / "config.toml", "a") as f:
        f.write("\n[inversion]\nline_search = false\n")
    plot_run(run)
    assert seen and set(seen) == {False}
