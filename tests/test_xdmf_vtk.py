"""The XDMF sidecars as ParaView sees them: read with VTK's own XDMF reader (``vtkXdmfReader``,
the reader behind ParaView's "XDMF Reader"), not with our parser. Issue 13, class 7: the viewer's
x, y, z must be hpcinv's x, y, z (bounds), and the value of the cell (or face) at a known
position must be the h5py value at ``[ix, iy(, iz)]``, in 2D and 3D, for forward fields, the
gradient, models (final, latest) and the true model of ``setup.h5``, on one rank and on two
(the ``vds`` layout)."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import vtk          # the dev extra installs it (setup.cfg): this test must run, not skip

from hpcinv.app.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))
if not Path(MPIEXEC).exists():
    MPIEXEC = "mpiexec"


def vtk_grids(xmf) -> dict:
    """``{grid name: vtkImageData}`` of an XDMF file read by ``vtkXdmfReader``."""
    r = vtk.vtkXdmfReader()
    r.SetFileName(str(xmf))
    r.Update()
    out = r.GetOutputDataObject(0)
    if isinstance(out, vtk.vtkMultiBlockDataSet):
        return {out.GetMetaData(i).Get(vtk.vtkCompositeDataSet.NAME()): out.GetBlock(i)
                for i in range(out.GetNumberOfBlocks())}
    return {"cells": out}


def geometry(h5):
    with h5py.File(h5) as f:
        ext = np.asarray(f.attrs["extent"]).reshape(-1, 2)
        return tuple(int(n) for n in f.attrs["shape"]), ext, np.asarray(f.attrs["spacing"])


def cell_value(img, name, point):
    """The cell-data value of the cell containing ``point`` (padded to 3D)."""
    ijk, pc = [0, 0, 0], [0.0, 0.0, 0.0]
    p = list(point) + [0.0] * (3 - len(point))
    assert img.ComputeStructuredCoordinates(p, ijk, pc), f"{p} outside {img.GetBounds()}"
    return img.GetCellData().GetArray(name).GetValue(img.ComputeCellId(ijk))


def point_value(img, name, point):
    p = list(point) + [0.0] * (3 - len(point))
    pid = img.FindPoint(p)
    assert np.allclose(img.GetPoint(pid), p), (img.GetPoint(pid), p)
    return img.GetPointData().GetArray(name).GetValue(pid)


def sample_cells(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    corners = [tuple(0 for _ in shape), tuple(s - 1 for s in shape),
               tuple(s - 1 if a == 0 else 0 for a, s in enumerate(shape))]
    return corners + [tuple(int(rng.integers(s)) for s in shape) for _ in range(n)]


def check_cells(h5, names):
    """Bounds of the ``cells`` grid equal the extent (z [0, 0] in 2D), and VTK's value at each
    sampled cell centre is the h5py value at ``[ix, iy(, iz)]``."""
    shape, ext, dx = geometry(h5)
    img = vtk_grids(Path(h5).with_suffix(".xmf"))["cells"]
    want = [v for e in ext for v in e] + ([0.0, 0.0] if len(shape) == 2 else [])
    np.testing.assert_allclose(img.GetBounds(), want, atol=1e-12)
    with h5py.File(h5) as f:
        for name in names:
            a = f[name][()]
            for idx in sample_cells(shape):
                centre = [e[0] + (i + 0.5) * d for e, i, d in zip(ext, idx, dx)]
                assert cell_value(img, name, centre) == a[idx], (name, idx)


def check_faces(h5):
    """Face ``q_a[ix, iy(, iz)]`` sits at the face centre (x_a at the face, cell centres
    along the other axes) in the grid ``faces_<a>``."""
    shape, ext, dx = geometry(h5)
    grids = vtk_grids(Path(h5).with_suffix(".xmf"))
    with h5py.File(h5) as f:
        for a in range(len(shape)):
            q = f["q" + "xyz"[a]][()]
            img = grids[f"faces_{'xyz'[a]}"]
            for idx in sample_cells(q.shape, seed=a):
                pos = [e[0] + (i + (0.0 if b == a else 0.5)) * d
                       for b, (e, i, d) in enumerate(zip(ext, idx, dx))]
                assert point_value(img, "q" + "xyz"[a], pos) == q[idx], (a, idx)


@pytest.mark.parametrize("problem, sizes", [("geothermal2d", ["--nx", "40", "--ny", "20"]),
                                            ("geothermal3d", ["--nx", "24", "--ny", "12",
                                                              "--nz", "10"])])
def test_forward_fields_in_paraview_orientation(tmp_path, problem, sizes):
    out = tmp_path / "f"
    assert main(["forward", "-q", "--problem", problem, *sizes, "-o", str(out)]) == 0
    check_cells(out / "fields.h5", ["Pf", "K"])
    check_faces(out / "fields.h5")


def test_forward_fields_on_two_ranks(tmp_path):
    """Two ranks with a serial h5py: per-rank part files stitched by virtual datasets."""
    out = tmp_path / "f"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcinv", "forward", "-q", "--problem",
           "geothermal3d", "--nx", "24", "--ny", "12", "--nz", "10", "-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    check_cells(out / "fields.h5", ["Pf", "K"])
    check_faces(out / "fields.h5")


def test_models_and_gradient_in_paraview_orientation(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[grid]\nnx = 31\nny = 15\n[inversion]\niterations = 2\ncheckpoint_every = 1\n"
                   "[output]\nfigures = false\n")
    run = tmp_path / "run"
    assert main(["invert", str(cfg), "-q", "-o", str(run)]) == 0
    for name in ("model_final", "model_latest"):
        check_cells(run / f"{name}.h5", ["logK", "Pf"])
    check_cells(run / "setup.h5", ["logK_true"])
    grad = tmp_path / "grad"
    assert main(["gradient", str(cfg), "-q", "-o", str(grad)]) == 0
    check_cells(grad / "gradient.h5", ["dJ_dlogK", "dJ_dlogK_smoothed"])


def test_h5py_indexing_is_unchanged(tmp_path):
    """h5py users keep ``Pf[ix, iy, iz]``; the view ``xdmf/Pf`` is ``[iz, iy, ix]``."""
    out = tmp_path / "f"
    assert main(["forward", "-q", "--problem", "geothermal3d", "--nx", "12", "--ny", "8",
                 "--nz", "6", "-o", str(out)]) == 0
    with h5py.File(out / "fields.h5") as f:
        assert f["Pf"].shape == (12, 8, 6) and f["xdmf/Pf"].shape == (6, 8, 12)
        assert np.array_equal(f["xdmf/Pf"][()], f["Pf"][()].transpose(2, 1, 0))
