"""Drawing primitives of ``hpcinv plot``, shared by the run figures (:mod:`hpcinv.app.plot`)
and the field figures of forward/gradient directories (:mod:`hpcinv.app.plot_fields`):
reading HDF5 datasets (3D: one x-y plane), the plane shown, fields on physical axes, wells and
observation points, one row of panels with colour bars, saving through the Agg canvas.
matplotlib is imported inside the functions.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

NONDIMENSIONAL = "nondimensional problem: x, y, K and Pf are dimensionless"


class _Skip(Exception):
    """A figure cannot be drawn from what the run directory holds (message says why)."""


def _read_h5(path: Path, names, attrs=(), plane=None):
    """The datasets ``names`` (absent ones omitted) and attributes ``attrs`` of an HDF5 file.
    A 3D dataset is read only on the x-y plane ``plane(shape) -> (index, caption)`` if given
    (no full 3D array in memory); its caption is returned under ``"where"``."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:     # opened in place: virtual datasets resolve their parts
        for n in names:
            if n in f:
                ds = f[n]
                if plane is not None and ds.ndim == 3:
                    idx, out["where"] = plane(ds.shape)
                    out[n], out[n + "_shape"] = np.asarray(ds[idx]), ds.shape
                else:
                    out[n], out[n + "_shape"] = np.asarray(ds[()]), ds.shape
        for a in attrs:
            if a in f.attrs:
                out[a] = np.asarray(f.attrs[a])
    return out


def _plane(shape, ext: np.ndarray, setup: dict):
    """Index and caption of the x-y plane shown of a 3D field: the cell layer nearest the wells'
    mean z (the middle z without wells)."""
    nz = shape[2]
    z0, z1 = ext[4], ext[5]
    wells = setup.get("well_positions")
    if wells is not None and len(wells) and np.shape(wells)[1] == 3:
        z = float(np.mean(wells[:, 2]))
    else:
        z = 0.5 * (z0 + z1)
    dz = (z1 - z0) / nz
    iz = int(np.clip(np.floor((z - z0) / dz), 0, nz - 1))
    return (slice(None), slice(None), iz), f"x-y slice at z = {z0 + (iz + 0.5) * dz:.3g}"


def _show(ax, field2d, ext, cmap, vmin=None, vmax=None):
    """``field2d[ix, iy]`` on physical axes (x right, y up), equal aspect."""
    im = ax.imshow(field2d.T, origin="lower", extent=tuple(ext[:4]), cmap=cmap,
                   vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_xlabel("x (dimensionless)")
    ax.set_ylabel("y (dimensionless)")
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    return im


def _legend(fig, ax):
    """The wells' and observations' legend, below the axes (it would hide data inside)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles),
                   fontsize="small", frameon=False)


def _mark_wells(ax, setup: dict, legend=True):
    pos, rates = setup.get("well_positions"), setup.get("well_rates")
    if pos is None or rates is None or not len(pos):
        return
    pos, rates = np.atleast_2d(pos), np.ravel(rates)
    for sel, marker, colour, name in ((rates > 0, "^", "tab:red", "injection"),
                                      (rates <= 0, "v", "tab:blue", "extraction")):
        if sel.any():       # a black edge: filled on any background, as in the legend
            ax.scatter(pos[sel, 0], pos[sel, 1], marker=marker, s=90, c=colour,
                       edgecolors="black", linewidths=1.0, zorder=4,
                       label=f"{name} well" if legend else None)


def _mark_obs(ax, setup: dict, projected: bool):
    pts = setup.get("obs_points")
    if pts is None or not len(pts):
        return
    pts = np.atleast_2d(pts)
    ax.scatter(pts[:, 0], pts[:, 1], marker="o", s=9, facecolors="none", edgecolors="black",
               linewidths=0.7, zorder=3,
               label="observations" + (" (projected)" if projected else ""))


def _figure(ncols, width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width * ncols, height), layout="constrained", dpi=110)


def finite_range(a) -> tuple:
    """(min, max) of the finite values of ``a`` ((None, None) if none)."""
    f = np.asarray(a)[np.isfinite(a)]
    return (float(f.min()), float(f.max())) if f.size else (None, None)


def symmetric_range(a) -> tuple:
    """(-m, m) with m the largest finite |a| ((None, None) if none or all zero)."""
    f = np.abs(np.asarray(a)[np.isfinite(a)])
    m = float(f.max()) if f.size else 0.0
    return (-m, m) if m > 0 else (None, None)


def panels_figure(path: Path, suptitle: str, ext, panels, setup: dict, where: str = "",
                  obs: bool = True) -> Path:
    """One row of ``panels`` (as :func:`model_panels` returns) on physical axes, each with
    its own colour bar, the wells (and observations if ``obs``) marked, the legend below."""
    aspect = (ext[3] - ext[2]) / (ext[1] - ext[0])
    fig = _figure(len(panels), 5.2, 5.2 * aspect + 1.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, field, cmap, (vmin, vmax), label) in zip(axes, panels):
        im = _show(ax, field, ext, cmap, vmin, vmax)
        if obs:
            _mark_obs(ax, setup, projected=bool(where))
        _mark_wells(ax, setup)
        ax.set_title(name + (f"\n{where}" if where else ""), fontsize="medium")
        fig.colorbar(im, ax=ax, label=label, shrink=0.8, location="bottom")
    _legend(fig, axes[-1])
    fig.suptitle(f"{suptitle}\n({NONDIMENSIONAL})", fontsize="medium")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return path


def _say(msg: str):
    print(f"hpcinv plot: {msg}", file=sys.stderr, flush=True)
