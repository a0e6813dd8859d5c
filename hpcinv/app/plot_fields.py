"""Figures of a ``forward`` or ``gradient`` directory (``hpcinv plot DIR``), into ``figures/``:

- ``fields.png`` (``fields.h5``): the pressure ``Pf`` (symmetric colour range about 0) and the
  permeability as log10 K (the file holds ``K`` itself);
- ``gradient.png`` (``gradient.h5``): ``dJ_dlogK`` and ``dJ_dlogK_smoothed``, the gradient
  with respect to ``logK = ln K`` (symmetric colour ranges).

These directories hold no wells or observations (no ``setup.h5``): the panels show the fields
alone. 3D fields: the middle x-y slice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .plot_draw import (_plane, _read_h5, _say, _Skip, finite_range, panels_figure,
                        symmetric_range)

GRADIENT_LABEL = "dJ/dlogK  (logK = ln K; dimensionless)"


def _fields_panels(data: dict) -> list[tuple]:
    panels = []
    if "Pf" in data:
        panels.append(("pressure Pf", data["Pf"], "RdBu_r", symmetric_range(data["Pf"]),
                       "Pf (dimensionless)"))
    if "K" in data:
        with np.errstate(divide="ignore", invalid="ignore"):
            log10K = np.log10(data["K"])
        panels.append(("permeability", log10K, "viridis", finite_range(log10K),
                       "log10 K  (fields.h5 holds K)"))
    return panels


def _gradient_panels(data: dict) -> list[tuple]:
    return [(title, data[name], "RdBu_r", symmetric_range(data[name]), GRADIENT_LABEL)
            for name, title in (("dJ_dlogK", "gradient dJ/dlogK"),
                                ("dJ_dlogK_smoothed", "smoothed gradient"))
            if name in data]


FIELD_FIGURES = {   # file -> (figure, datasets, panels, what the figure shows)
    "fields.h5": ("fields.png", ("Pf", "K"), _fields_panels, "forward solution"),
    "gradient.h5": ("gradient.png", ("dJ_dlogK", "dJ_dlogK_smoothed"), _gradient_panels,
                    "misfit gradient at logK = 0"),
}


def plot_field_files(run: Path, out: Path, title: str, extent, cfg: dict) -> list[Path]:
    """The figures of the ``fields.h5`` / ``gradient.h5`` in ``run`` (into ``out``); a file
    that cannot be read is skipped with a message. ``extent(setup, cfg, shape)``: the
    physical extent (:func:`hpcinv.app.plot._extent`)."""
    written = []
    for name, (png, datasets, make_panels, what) in FIELD_FIGURES.items():
        path = run / name
        if not path.exists():
            continue
        try:
            with_attrs = _read_h5(path, (), ("extent",))
            attrs = {"extent": with_attrs["extent"]} if "extent" in with_attrs else {}

            def plane(shape):
                return _plane(shape, extent(attrs, cfg, shape), {})
            data = _read_h5(path, datasets, plane=plane)
            shape = next((data[k + "_shape"] for k in datasets if k in data), None)
            if shape is None:
                raise _Skip(f"{path} holds none of {', '.join(datasets)}")
            ext = extent(attrs, cfg, shape)
            written.append(panels_figure(out / png, f"{title}: {what}", ext,
                                         make_panels(data), {}, data.get("where", "")))
        except (OSError, KeyError) as exc:
            _say(f"skipped {png}: cannot read {path}: {exc}")
        except _Skip as why:
            _say(f"skipped {png}: {why}")
    return written
