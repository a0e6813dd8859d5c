"""XDMF 3 sidecars (ParaView/VisIt) for :mod:`hpcinv.io.h5write` output, their axis-reversed
views of the fields, and their checker.

Axis order: see :func:`write_xdmf`.
"""
from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .h5util import _h5py

_XDMF_TYPES = {"f": "Float", "i": "Int", "u": "UInt"}


def _number_type(dtype) -> tuple[str, int]:
    dt = np.dtype(dtype)
    if dt.kind not in _XDMF_TYPES:
        raise ValueError(f"XDMF cannot describe dtype {dt}")
    kind = _XDMF_TYPES[dt.kind]
    if dt.itemsize == 1:
        kind = "Char" if dt.kind == "i" else "UChar"
    return kind, dt.itemsize


#: group of the XDMF views: the fields with their axes reversed (:func:`view_block`)
VIEW_GROUP = "xdmf"


def view_name(name: str) -> str:
    """The dataset of field ``name``'s XDMF view: ``xdmf/<name>``."""
    return f"{VIEW_GROUP}/{name}"


def view_shape(shape) -> tuple:
    """The shape of a field's XDMF view: the axes reversed, so x varies fastest (XDMF readers
    map the fastest-varying index to X); a 2D field gets a leading axis of one (the mesh's
    single cell layer along z)."""
    s = tuple(shape)[::-1]
    return (1, *s) if len(s) == 2 else s


def view_block(block, offset, global_shape) -> tuple:
    """``(block, offset, global_shape)`` of a field block's XDMF view (:func:`view_shape`)."""
    b = np.ascontiguousarray(np.transpose(block))
    off = tuple(offset)[::-1]
    if b.ndim == 2:
        b, off = b[None], (0, *off)
    return b, off, view_shape(global_shape)


def write_xdmf(h5path, grid, names=None) -> Path:
    """Write the XDMF 3 sidecar ``<h5path stem>.xmf`` so ParaView/VisIt open the fields.

    Args:
        h5path: an output file of :func:`~hpcinv.io.h5write.write_h5` written with ``views``
            naming the fields to show (serial: call on one rank).
        grid: the :class:`~hpcinv.model.grid.Grid` (shape, extent, spacing).
        names: fields to expose (default: every field with a view in the file).

    Axis order. The fields are stored ``[ix, iy(, iz)]`` (C order, x slowest: what h5py users
    index), while XDMF lists ``Dimensions`` slowest first and every reader (VTK's, hence
    ParaView's, and VisIt's) maps the fastest-varying index to X; XDMF has no transpose. So the
    sidecar points at each field's *view* ``xdmf/<name>`` (written beside it by
    :func:`~hpcinv.io.h5write.write_h5`), the same values with the axes reversed:
    ``xdmf/Pf[iz, iy, ix] == Pf[ix, iy, iz]``, and in 2D ``xdmf/Pf[0, iy, ix] == Pf[ix, iy]``.
    Topology ``Dimensions``, ``Origin`` and ``Spacing`` are listed z, y, x. A 2D mesh is
    written as a ``3DCoRectMesh`` one cell thick with zero spacing along z (a ``2DCoRectMesh``
    is read as the y-z plane), so the viewer's x, y, z are hpcinv's x, y, z (tested with VTK's
    ``vtkXdmfReader``: bounds and values).

    Cell arrays (shape ``grid.shape``) become ``Center="Cell"`` attributes of the grid named
    ``cells``. A face array along axis ``a`` (shape ``grid.shape`` plus one along ``a``) becomes
    a ``Center="Node"`` attribute of its own grid ``faces_<x|y|z>`` whose points are the face
    centres (origin shifted by half a cell along the other axes), so values sit where they
    were computed.
    """
    h5 = _h5py()
    h5path = Path(h5path)
    shape = tuple(grid.shape)
    nd = len(shape)
    with h5.File(h5path, "r") as f:
        avail = {k: (tuple(v.shape), v.dtype) for k, v in f.items()
                 if isinstance(v, h5.Dataset)}
        views = ({k: tuple(v.shape) for k, v in f[VIEW_GROUP].items()}
                 if isinstance(f.get(VIEW_GROUP), h5.Group) else {})
    if names is None:
        names = [k for k in avail if k in views]
    cells, faces = [], {a: [] for a in range(nd)}
    for name in names:
        if name not in avail:
            raise KeyError(f"{h5path}: no dataset {name!r} for the XDMF file")
        s, dt = avail[name]
        axis = _field_axis(s, shape)
        if axis is None:
            raise ValueError(f"{h5path}: dataset {name!r} of shape {s} is neither a cell "
                             f"array {shape} nor a face array of this grid")
        if views.get(name) != view_shape(s):
            raise ValueError(f"{h5path}: field {name!r} has no XDMF view {view_name(name)} "
                             "(write the file with write_h5(..., views=[...]))")
        (cells if axis == -1 else faces[axis]).append((name, views[name], dt))

    root = ET.Element("Xdmf", Version="3.0")
    root.set("xmlns:xi", "http://www.w3.org/2001/XInclude")
    dom = ET.SubElement(root, "Domain")
    x0 = [e[0] for e in grid.extent]
    dx = list(grid.spacing)

    def mesh(name, npoints, origin, fields, center):
        # listed z, y, x (slowest first); 2D: one cell (two points) or one point along z
        npoints, origin, spacing = npoints[::-1], origin[::-1], dx[::-1]
        if nd == 2:
            npoints = [2 if center == "Cell" else 1, *npoints]
            origin, spacing = [0.0, *origin], [0.0, *spacing]
        g = ET.SubElement(dom, "Grid", Name=name, GridType="Uniform")
        ET.SubElement(g, "Topology", TopologyType="3DCoRectMesh",
                      Dimensions=" ".join(map(str, npoints)))
        ge = ET.SubElement(g, "Geometry", GeometryType="ORIGIN_DXDYDZ")
        for label, vals in (("Origin", origin), ("Spacing", spacing)):
            it = ET.SubElement(ge, "DataItem", Name=label, Dimensions="3",
                               NumberType="Float", Precision="8", Format="XML")
            it.text = " ".join(repr(float(v)) for v in vals)
        for fname, s, dt in fields:
            kind, prec = _number_type(dt)
            a = ET.SubElement(g, "Attribute", Name=fname, AttributeType="Scalar", Center=center)
            it = ET.SubElement(a, "DataItem", Dimensions=" ".join(map(str, s)), NumberType=kind,
                               Precision=str(prec), Format="HDF")
            it.text = f"{h5path.name}:/{view_name(fname)}"

    if cells:
        mesh("cells", [n + 1 for n in shape], x0, cells, "Cell")
    for a, fl in faces.items():
        if fl:
            npts = [n + (1 if b == a else 0) for b, n in enumerate(shape)]
            org = [x0[b] + (0 if b == a else 0.5 * dx[b]) for b in range(nd)]
            mesh(f"faces_{'xyz'[a]}", npts, org, fl, "Node")
    ET.indent(root)
    out = h5path.with_suffix(".xmf")
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.write_text('<?xml version="1.0" ?>\n<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>\n'
                   + ET.tostring(root, encoding="unicode") + "\n")
    os.replace(tmp, out)
    return out


def _field_axis(s, shape):
    """-1 for a cell array, the axis for a face array, None otherwise."""
    s, shape = tuple(s), tuple(shape)
    if s == shape:
        return -1
    if len(s) != len(shape):
        return None
    diff = [b for b in range(len(s)) if s[b] != shape[b]]
    if len(diff) == 1 and s[diff[0]] == shape[diff[0]] + 1:
        return diff[0]
    return None


def check_xdmf(xmf_path) -> list[tuple[str, str, tuple]]:
    """Parse an XDMF file and check every HDF reference: the file and dataset exist and the
    declared dimensions match. Returns ``[(attribute, "file:/dataset", dims)]``."""
    h5 = _h5py()
    xmf_path = Path(xmf_path)
    root = ET.parse(xmf_path).getroot()
    found = []
    for grid in root.iter("Grid"):
        topo = grid.find("Topology")
        npts = tuple(int(v) for v in topo.get("Dimensions").split())
        for att in grid.iter("Attribute"):
            item = att.find("DataItem")
            dims = tuple(int(v) for v in item.get("Dimensions").split())
            want = tuple(n - 1 for n in npts) if att.get("Center") == "Cell" else npts
            if dims != want:
                raise ValueError(f"{att.get('Name')}: dimensions {dims}, topology needs {want}")
            fname, dname = item.text.strip().split(":", 1)
            with h5.File(xmf_path.parent / fname, "r") as f:
                if dname not in f:
                    raise KeyError(f"{fname} has no dataset {dname}")
                if tuple(f[dname].shape) != dims:
                    raise ValueError(f"{dname}: shape {f[dname].shape} != declared {dims}")
            found.append((att.get("Name"), item.text.strip(), dims))
    return found
