"""Scalable HDF5 output (hpcinv.io): global datasets whatever the rank count, atomic
replace, virtual-dataset stitching, read-back on other decompositions, XDMF sidecar.

Serial: ``python -m pytest -q tests/test_h5io.py``. MPI (the ``mpi`` marked tests):
``mpiexec -n 2|3|4 python -m pytest -q --with-mpi -m mpi tests/test_h5io.py``.
The ``mpio`` path needs h5py built with MPI; it runs where that is installed and is skipped
otherwise (the pip wheel has no MPI), see ``test_mpio_matches``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.model.grid import Grid
from hpcinv.errors import ConfigError
from hpcinv.io import h5mode, h5read, h5write
from hpcinv.io.gather import owned_face_block
from hpcinv.io import read_attrs, read_cells, read_faces, read_global, read_replicated, write_h5
from hpcinv.io.xdmf import check_xdmf, write_xdmf
from hpcinv.parallel import Decomposition

SHAPES = {2: (13, 7), 3: (7, 5, 6)}
GARBAGE = -999.0
ATTRS = {"iterations": 123, "residual": 1.5e-9, "converged": True, "problem": "test",
         "shape": (13, 7), "spacing": (0.1, 0.2)}


# --- synthetic fields whose values encode their global index ------------------------------

def cell_value(gidx, salt=0.0):
    v = salt
    for a, g in enumerate(gidx):
        v = v + (a + 1.3) ** 2 * g + 0.01 * g * g
    return v


def global_cells(shape, dtype, salt=0.0):
    idx = np.indices(shape)
    return cell_value(idx, salt).astype(dtype)


def global_faces(shape, axis, dtype, salt=0.0):
    s = list(shape)
    s[axis] += 1
    return global_cells(tuple(s), dtype, salt + 100.0 * (axis + 1))


def local_fields(decomp, dtype, salt=0.0):
    """Padded local cell and face arrays: owned entries from the global formulas, everything
    a rank does not own (ghosts, the redundant upper face of inner ranks) is GARBAGE."""
    shape = decomp.global_shape
    K = np.full(decomp.padded_shape, GARBAGE, dtype)
    P = np.full(decomp.padded_shape, GARBAGE, dtype)
    sl = tuple(slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape))
    K[decomp.owned()] = global_cells(shape, dtype, salt)[sl]
    P[decomp.owned()] = global_cells(shape, dtype, salt + 7.0)[sl]
    faces = {}
    for a in range(decomp.ndim):
        q = np.full(decomp.padded_shape, GARBAGE, dtype)
        fsl, off, gshape = owned_face_block(decomp, a)
        n = [s.stop - s.start for s in fsl]
        gsl = tuple(slice(o, o + k) for o, k in zip(off, n))
        q[fsl] = global_faces(shape, a, dtype, salt)[gsl]
        faces["q" + "xyz"[a]] = (q, a)
    return {"K": K, "Pf": P}, faces


def expected(shape, dtype, salt=0.0):
    out = {"K": global_cells(shape, dtype, salt), "Pf": global_cells(shape, dtype, salt + 7.0)}
    for a in range(len(shape)):
        out["q" + "xyz"[a]] = global_faces(shape, a, dtype, salt)
    return out


def write(path, decomp, dtype, salt=0.0, mode=None, replicated=None, attrs=ATTRS, views=()):
    cells, faces = local_fields(decomp, dtype, salt)
    return write_h5(path, decomp, cells, faces, attrs=attrs, replicated=replicated, mode=mode,
                    views=views)


def file_content(path):
    """``({name: array}, {attr: value})`` of a file, read through the public reader."""
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return {n: read_global(path, n) for n in names}, read_attrs(path)


def assert_same_content(a, b):
    (da, aa), (db, ab) = file_content(a), file_content(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k].dtype == db[k].dtype, k
        assert da[k].shape == db[k].shape, k
        assert np.array_equal(da[k], db[k]), k
    assert sorted(aa) == sorted(ab)
    for k in aa:
        assert np.array_equal(np.asarray(aa[k]), np.asarray(ab[k])), k


def assert_matches_expected(path, shape, dtype, salt=0.0):
    data, attrs = file_content(path)
    exp = expected(shape, dtype, salt)
    for k, v in exp.items():
        assert data[k].dtype == np.dtype(dtype), k
        assert data[k].shape == v.shape, k
        assert np.array_equal(data[k], v), k
    assert attrs["iterations"] == 123 and attrs["problem"] == "test"


def assert_reads_back(path, decomp, dtype, salt=0.0):
    """read_cells/read_faces on ``decomp`` give the owned cells and both faces of each owned
    cell, zeros elsewhere."""
    exp = expected(decomp.global_shape, dtype, salt)
    sl = tuple(slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape))
    for name in ("K", "Pf"):
        a = read_cells(path, name, decomp)
        assert a.dtype == np.dtype(dtype) and a.shape == decomp.padded_shape
        assert np.array_equal(a[decomp.owned()], exp[name][sl])
        ghosts = np.ones(a.shape, bool)
        ghosts[decomp.owned()] = False
        assert not a[ghosts].any()
    for ax in range(decomp.ndim):
        name = "q" + "xyz"[ax]
        q = read_faces(path, name, ax, decomp)
        dst = list(decomp.owned())
        dst[ax] = slice(1, decomp.local_shape[ax] + 2)
        gsl = list(sl)
        gsl[ax] = slice(sl[ax].start, sl[ax].stop + 1)
        assert np.array_equal(q[tuple(dst)], exp[name][tuple(gsl)])
        rest = np.ones(q.shape, bool)
        rest[tuple(dst)] = False
        assert not q[rest].any()


def leftovers(directory: Path, name: str):
    return sorted(p.name for p in directory.iterdir()
                  if p.name.startswith(f".{name}.tmp-") or p.name.startswith(f"{name}.parts-"))


# --- serial --------------------------------------------------------------------------------

@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", [None, "vds", "sequential"])
def test_serial_write_read(tmp_path, ndim, dtype, mode):
    d = Decomposition(SHAPES[ndim], comm=MPI.COMM_SELF)
    p = write(tmp_path / "f.h5", d, dtype, mode=mode)
    assert p == tmp_path / "f.h5"
    assert_matches_expected(p, SHAPES[ndim], dtype)
    assert_reads_back(p, d, dtype)
    with h5py.File(p, "r") as f:
        assert f["K"].is_virtual == (mode == "vds")
    assert len(leftovers(tmp_path, "f.h5")) == (1 if mode == "vds" else 0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_backend_arrays_through_to_host(tmp_path, backend, ndim):
    """Backend arrays are read with ``to_host(array, region)`` (``backend.to_host``): the same
    file as from host arrays; gather_cells/gather_faces take the same callable."""
    from hpcinv.io import gather_cells, gather_faces
    d = Decomposition(SHAPES[ndim], comm=MPI.COMM_SELF)
    cells, faces = local_fields(d, np.float64)
    dev_cells = {k: backend.upload(v) for k, v in cells.items()}
    dev_faces = {k: (backend.upload(v), a) for k, (v, a) in faces.items()}
    write_h5(tmp_path / "dev.h5", d, dev_cells, dev_faces, attrs=ATTRS, to_host=backend.to_host)
    write_h5(tmp_path / "host.h5", d, cells, faces, attrs=ATTRS)
    assert_same_content(tmp_path / "dev.h5", tmp_path / "host.h5")
    assert_matches_expected(tmp_path / "dev.h5", SHAPES[ndim], np.float64)
    exp = expected(SHAPES[ndim], np.float64)
    assert np.array_equal(gather_cells(d, dev_cells["K"], backend.to_host), exp["K"])
    assert np.array_equal(gather_cells(d, cells["K"]), exp["K"])
    qx, ax = dev_faces["qx"]
    assert np.array_equal(gather_faces(d, qx, ax, backend.to_host), exp["qx"])


def test_vds_and_plain_identical(tmp_path):
    d = Decomposition(SHAPES[3], comm=MPI.COMM_SELF)
    write(tmp_path / "a.h5", d, np.float32, mode="single")
    write(tmp_path / "b.h5", d, np.float32, mode="vds")
    assert_same_content(tmp_path / "a.h5", tmp_path / "b.h5")
    assert leftovers(tmp_path, "a.h5") == []
    assert len(leftovers(tmp_path, "b.h5")) == 1          # b.h5.parts-<uid>


def test_replicated_and_attrs(tmp_path):
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    xy = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    for mode in ("single", "vds"):
        p = write(tmp_path / f"{mode}.h5", d, np.float64, mode=mode,
                  replicated={"obs_xy": xy, "obs_id": np.arange(3, dtype=np.int32)})
        got = read_replicated(p, "obs_xy")
        assert got.dtype == xy.dtype and np.array_equal(got, xy)
        assert read_replicated(p, "obs_id").dtype == np.int32
        a = read_attrs(p)
        assert a["converged"] and a["residual"] == 1.5e-9 and tuple(a["shape"]) == (13, 7)
    with pytest.raises(ValueError, match="clash"):
        write(tmp_path / "x.h5", d, np.float64, replicated={"K": xy})


def test_vds_other_cwd_and_moved_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = write(run / "f.h5", d, np.float64, mode="vds")
    with h5py.File(p, "r") as f:
        srcs = {vs.file_name for vs in f["K"].virtual_sources()}
    assert all(not os.path.isabs(s) and s.startswith("f.h5.parts-") for s in srcs), srcs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert_matches_expected(p, SHAPES[2], np.float64)
    assert_reads_back(p, d, np.float64)
    moved = tmp_path / "deeper" / "moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert_matches_expected(moved / "f.h5", SHAPES[2], np.float64)
    monkeypatch.chdir(moved)                                # relative path from inside
    assert_matches_expected(Path("f.h5"), SHAPES[2], np.float64)
    # a missing part file is an error, not silent fill values
    shutil.rmtree(next(moved.glob("f.h5.parts-*")))
    with pytest.raises(FileNotFoundError, match="part file"):
        read_cells(moved / "f.h5", "K", d)


def test_reader_racing_a_rewrite_rereads_new_master(tmp_path, monkeypatch):
    """The writer replaces the file (and deletes the old parts) after the reader opened the
    old master: the reader notices the missing part, re-opens and returns the new data."""
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = write(tmp_path / "f.h5", d, np.float64, mode="vds")
    real = h5read._check_sources
    calls = []

    def racing(path, ds, sel):
        if not calls:
            write(p, d, np.float64, salt=4.0, mode="vds")      # concurrent rewrite
        calls.append(1)
        return real(path, ds, sel)
    monkeypatch.setattr(h5read, "_check_sources", racing)
    got = read_cells(p, "K", d)
    assert len(calls) == 3                                     # failed once, then before+after
    assert np.array_equal(got[d.owned()], expected(SHAPES[2], np.float64, 4.0)["K"])


def test_consolidate(tmp_path):
    d = Decomposition(SHAPES[3], comm=MPI.COMM_SELF)
    p = write(tmp_path / "f.h5", d, np.float32, mode="vds", views=["K"])
    c = h5read.consolidate(p, tmp_path / "plain.h5")
    with h5py.File(c, "r") as f, h5py.File(p, "r") as g:
        assert not f["K"].is_virtual
        assert not f["xdmf/K"].is_virtual                 # datasets in groups are copied too
        assert np.array_equal(f["xdmf/K"][()], g["K"][()].transpose(2, 1, 0))
    assert_same_content(p, c)


def test_rewrite_removes_previous_parts(tmp_path):
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = tmp_path / "f.h5"
    write(p, d, np.float64, mode="vds")
    first = leftovers(tmp_path, "f.h5")
    write(p, d, np.float64, salt=1.0, mode="vds")
    second = leftovers(tmp_path, "f.h5")
    assert len(first) == len(second) == 1 and first != second
    assert_matches_expected(p, SHAPES[2], np.float64, salt=1.0)
    write(p, d, np.float64, salt=2.0, mode="single")          # plain file: no parts left
    assert leftovers(tmp_path, "f.h5") == []
    assert_matches_expected(p, SHAPES[2], np.float64, salt=2.0)


@pytest.mark.parametrize("mode", ["single", "vds", "sequential"])
@pytest.mark.parametrize("where", ["_write_attrs", "_publish", "_fsync_path"])
def test_crash_keeps_previous_file(tmp_path, monkeypatch, mode, where):
    """A failure mid-write (before the rename) leaves the previous file intact and readable,
    and no partial master under the final name; a later write succeeds and cleans up."""
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = tmp_path / "f.h5"
    write(p, d, np.float64, mode="vds")                       # previous file: a VDS master
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("simulated crash")
    monkeypatch.setattr(h5write, where, boom)      # the writer's own bindings
    with pytest.raises(OSError, match="simulated crash"):
        write(p, d, np.float64, salt=5.0, mode=mode)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert_matches_expected(p, SHAPES[2], np.float64)
    assert len(leftovers(tmp_path, "f.h5")) == 1              # only the old parts dir
    write(p, d, np.float64, salt=5.0, mode=mode)
    assert_matches_expected(p, SHAPES[2], np.float64, salt=5.0)


def test_hard_crash_leftovers_are_invisible_and_cleaned(tmp_path, monkeypatch):
    """A killed writer cannot clean up: its temporary master and parts directory stay, the
    previous file is untouched, and the next successful write removes them."""
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = tmp_path / "f.h5"
    write(p, d, np.float64, mode="vds")
    before = p.read_bytes()

    def killed(tmp, path, keep):
        raise KeyboardInterrupt   # dies right before the rename
    monkeypatch.setattr(h5write, "_publish", killed)
    monkeypatch.setattr(h5write, "_discard", lambda *a: None)
    with pytest.raises(KeyboardInterrupt):
        write(p, d, np.float64, salt=3.0, mode="vds")
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert len(leftovers(tmp_path, "f.h5")) == 3              # old parts, new parts, tmp master
    assert [x.name for x in tmp_path.glob("*.h5")] == ["f.h5"]  # nothing else looks like output
    write(p, d, np.float64, salt=3.0, mode="vds")
    assert len(leftovers(tmp_path, "f.h5")) == 1
    assert_matches_expected(p, SHAPES[2], np.float64, salt=3.0)


def test_read_errors(tmp_path):
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = write(tmp_path / "f.h5", d, np.float64)
    other = Decomposition((13, 8), comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="shape"):
        read_cells(p, "K", other)
    with pytest.raises(KeyError, match="nope"):
        read_cells(p, "nope", d)
    a = read_cells(p, "K", d, dtype=np.float32)
    assert a.dtype == np.float32


def test_mode_selection(monkeypatch):
    assert h5mode.choose_mode(MPI.COMM_SELF) == "single"
    monkeypatch.setenv("HPCINV_H5_MODE", "vds")
    assert h5mode.choose_mode(MPI.COMM_SELF) == "vds"
    with pytest.raises(ConfigError, match="HPCINV_H5_MODE.*'bogus'"):   # one line, no trace
        h5mode.choose_mode(MPI.COMM_SELF, "bogus")
    if not h5mode.h5py_has_mpi():
        with pytest.raises(ConfigError, match="MPI"):
            h5mode.choose_mode(MPI.COMM_SELF, "mpio")


def test_cli_names_still_work():
    from hpcinv.io import fields
    assert fields.write_h5 is write_h5
    assert callable(fields.grid_attrs)


@pytest.mark.parametrize("ndim", [2, 3])
def test_xdmf(tmp_path, ndim):
    grid = Grid(SHAPES[ndim], extent=[(-1.0, 2.0), (0.5, 1.5), (0.0, 3.0)][:ndim],
                comm=MPI.COMM_SELF)
    fields = ["K", "Pf", *("q" + "xyz"[a] for a in range(ndim))]
    p = write(tmp_path / "fields.h5", grid.decomp, np.float32, mode="vds", views=fields)
    x = write_xdmf(p, grid)
    assert x == tmp_path / "fields.xmf"
    refs = check_xdmf(x)
    names = {r[0] for r in refs}
    assert names == set(fields)
    assert all(r[1] == f"fields.h5:/xdmf/{r[0]}" for r in refs)    # the axis-reversed views
    root = ET.parse(x).getroot()
    assert root.get("Version") == "3.0"
    cells = [g for g in root.iter("Grid") if g.get("Name") == "cells"][0]
    topo = cells.find("Topology")
    # listed z, y, x; 2D: one cell layer of zero thickness along z (VTK's tests: test_xdmf_vtk)
    assert topo.get("TopologyType") == "3DCoRectMesh"
    pad = ["2"] if ndim == 2 else []
    assert topo.get("Dimensions").split() == pad + [str(n + 1) for n in SHAPES[ndim][::-1]]
    origin, spacing = cells.find("Geometry").findall("DataItem")
    zpad = [0.0] if ndim == 2 else []
    assert [float(v) for v in origin.text.split()] == zpad + [e[0] for e in grid.extent][::-1]
    assert np.allclose([float(v) for v in spacing.text.split()], zpad + list(grid.spacing)[::-1])
    fx = [g for g in root.iter("Grid") if g.get("Name") == "faces_x"][0]
    o = [float(v) for v in fx.find("Geometry").findall("DataItem")[0].text.split()][::-1]
    assert o[0] == grid.extent[0][0] and np.isclose(o[1], grid.extent[1][0] + grid.spacing[1] / 2)
    with pytest.raises(ValueError, match="no XDMF view"):
        write_xdmf(write(tmp_path / "noview.h5", grid.decomp, np.float32), grid, ["Pf"])
    (tmp_path / "noview.h5").unlink()
    (tmp_path / "noview.xmf").unlink(missing_ok=True)
    # read from another cwd and after moving: the references are relative
    moved = tmp_path / "moved"
    moved.mkdir()
    for q in tmp_path.iterdir():
        if q != moved:
            shutil.move(q, moved / q.name)
    assert check_xdmf(moved / "fields.xmf") == refs
    with pytest.raises(ValueError, match="neither"):
        h5 = write(moved / "g.h5", grid.decomp, np.float32,
                   replicated={"obs": np.zeros((3, 2))})
        write_xdmf(h5, grid, ["obs"])


def test_h5dump_sees_global_array(tmp_path):
    exe = shutil.which("h5dump")
    if exe is None:
        pytest.skip("h5dump not installed")
    import subprocess
    d = Decomposition(SHAPES[2], comm=MPI.COMM_SELF)
    p = write(tmp_path / "f.h5", d, np.float64, mode="vds")
    out = subprocess.run([exe, "-H", "-d", "qx", str(p)], capture_output=True, text=True,
                         cwd="/")
    assert "( 14, 7 )" in out.stdout, out.stdout + out.stderr


# --- MPI -----------------------------------------------------------------------------------

@pytest.fixture
def shared_dir():
    """A directory every rank sees (rank 0 creates it and removes it at the end)."""
    comm = MPI.COMM_WORLD
    d = comm.bcast(tempfile.mkdtemp(prefix="hpcinv-h5io-") if comm.rank == 0 else None)
    yield Path(d)
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def _dims(ndim, size, axis):
    dims = [1] * ndim
    dims[axis] = size
    return dims


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", [None, "vds", "sequential"])
def test_mpi_identical_to_one_rank(shared_dir, ndim, dtype, mode):
    comm = MPI.COMM_WORLD
    shape = SHAPES[ndim]
    d = Decomposition(shape, comm=comm)
    p = write(shared_dir / "world.h5", d, dtype, mode=mode)
    assert p == shared_dir / "world.h5"
    err = None
    if comm.rank == 0:
        try:
            write(shared_dir / "self.h5", Decomposition(shape, comm=MPI.COMM_SELF), dtype)
            assert_same_content(shared_dir / "world.h5", shared_dir / "self.h5")
            assert_matches_expected(p, shape, dtype)
            with h5py.File(p, "r") as f:
                assert f["K"].is_virtual == ((mode or h5mode.choose_mode(comm)) == "vds")
        except Exception as e:   # noqa: BLE001
            err = e
    if comm.bcast(err is not None):
        raise err or RuntimeError("rank 0 failed")
    assert_reads_back(p, d, dtype)
    # another decomposition of the same ranks, and one rank alone
    for axis in range(ndim):
        assert_reads_back(p, Decomposition(shape, comm=comm, dims=_dims(ndim, comm.size, axis)),
                          dtype)
    assert_reads_back(p, Decomposition(shape, comm=MPI.COMM_SELF), dtype)


@pytest.mark.mpi(min_size=2)
def test_mpi_restart_on_other_rank_count(shared_dir):
    """Written by 2 ranks (a sub-communicator), read on all ranks, and vice versa."""
    comm = MPI.COMM_WORLD
    shape = SHAPES[3]
    sub = comm.Split(0 if comm.rank < 2 else MPI.UNDEFINED, comm.rank)
    if sub != MPI.COMM_NULL:
        write(shared_dir / "two.h5", Decomposition(shape, comm=sub, dims=[1, 2, 1]),
              np.float64)
        sub.Free()
    comm.Barrier()
    assert_reads_back(shared_dir / "two.h5", Decomposition(shape, comm=comm), np.float64)
    write(shared_dir / "all.h5", Decomposition(shape, comm=comm), np.float64)
    if comm.rank == 0:
        assert_reads_back(shared_dir / "all.h5", Decomposition(shape, comm=MPI.COMM_SELF),
                          np.float64)
        assert_same_content(shared_dir / "two.h5", shared_dir / "all.h5")


@pytest.mark.mpi(min_size=2)
def test_mpi_vds_moved_directory(shared_dir):
    comm = MPI.COMM_WORLD
    d = Decomposition(SHAPES[2], comm=comm)
    run = shared_dir / "run"
    write(run / "f.h5", d, np.float32, mode="vds")
    moved = shared_dir / "moved"
    comm.Barrier()
    if comm.rank == 0:
        shutil.move(run, moved)
        assert len(list(moved.glob("f.h5.parts-*/rank*.h5"))) == comm.size
    comm.Barrier()
    cwd = os.getcwd()
    try:
        os.chdir("/")
        assert_reads_back(moved / "f.h5", d, np.float32)
    finally:
        os.chdir(cwd)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", ["vds", "sequential", "mpio"])
def test_mpi_crash_on_one_rank_keeps_previous(shared_dir, monkeypatch, mode):
    """A rank-local error raises on every rank (no hang) and keeps the previous file. In
    ``mpio`` the failure is injected in the rank-local step before the collective region (a
    rank that fails *inside* a collective HDF5 call cannot be rescued by any code around it;
    the writer's structure makes every local failure happen before one)."""
    if mode == "mpio" and not h5py.get_config().mpi:
        pytest.skip("h5py has no MPI support (pip wheel); the mpio path needs parallel HDF5")
    comm = MPI.COMM_WORLD
    d = Decomposition(SHAPES[2], comm=comm)
    p = shared_dir / "f.h5"
    write(p, d, np.float64, mode="vds")
    comm.Barrier()
    before = p.read_bytes() if comm.rank == 0 else None
    if comm.rank == comm.size - 1:   # a non-root rank dies while writing its block
        def boom(*a, **k):
            raise OSError("simulated crash")
        if mode == "mpio":
            monkeypatch.setattr(h5write, "_check_block", boom)
        else:
            monkeypatch.setattr(h5py.File, "__init__", boom)
    with pytest.raises((OSError, RuntimeError), match="simulated crash"):
        write(p, d, np.float64, salt=9.0, mode=mode)
    monkeypatch.undo()
    comm.Barrier()
    if comm.rank == 0:
        assert p.read_bytes() == before
        assert len(leftovers(shared_dir, "f.h5")) == 1
    assert_reads_back(p, d, np.float64)
    write(p, d, np.float64, salt=9.0, mode=mode)
    assert_reads_back(p, d, np.float64, salt=9.0)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", ["vds", "sequential", "mpio"])
def test_mpi_rank_local_error_before_the_collective_region(shared_dir, monkeypatch, mode):
    """A block that fails its rank-local check on one rank stops every rank before any
    collective write (the ``mpio`` writer's guarantee, exercised by all modes)."""
    if mode == "mpio" and not h5py.get_config().mpi:
        pytest.skip("h5py has no MPI support (pip wheel); the mpio path needs parallel HDF5")
    comm = MPI.COMM_WORLD
    d = Decomposition(SHAPES[2], comm=comm)
    if comm.rank == 1:
        def bad(it):
            raise ValueError(f"bad block {it.name}")
        monkeypatch.setattr(h5write, "_check_block", bad)
    with pytest.raises((ValueError, RuntimeError), match="bad block"):
        write(shared_dir / "g.h5", d, np.float64, mode=mode)
    monkeypatch.undo()
    comm.Barrier()
    assert not (shared_dir / "g.h5").exists()


@pytest.mark.mpi(min_size=2)
def test_mpi_inconsistent_names_fail_everywhere(shared_dir):
    comm = MPI.COMM_WORLD
    d = Decomposition(SHAPES[2], comm=comm)
    cells, _ = local_fields(d, np.float64)
    if comm.rank == 1:
        cells = {"other": cells["K"]}
    else:
        cells = {"K": cells["K"]}
    with pytest.raises((ValueError, RuntimeError), match="passes datasets|failed on rank"):
        write_h5(shared_dir / "bad.h5", d, cells)
    assert not (shared_dir / "bad.h5").exists()


@pytest.mark.mpi(min_size=2)
def test_mpio_matches(shared_dir):
    if not h5mode.h5py_has_mpi():
        pytest.skip("h5py has no MPI support (pip wheel); the mpio path needs parallel HDF5")
    comm = MPI.COMM_WORLD
    for ndim in (2, 3):
        for dtype in (np.float64, np.float32):
            d = Decomposition(SHAPES[ndim], comm=comm)
            p = write(shared_dir / "mpio.h5", d, dtype, mode="mpio",
                      replicated={"xy": np.arange(6.0).reshape(3, 2)})
            assert_reads_back(p, d, dtype)
            if comm.rank == 0:
                write(shared_dir / "self.h5", Decomposition(SHAPES[ndim], comm=MPI.COMM_SELF),
                      dtype, replicated={"xy": np.arange(6.0).reshape(3, 2)})
                assert_same_content(p, shared_dir / "self.h5")
            comm.Barrier()
