"""Scalable HDF5 output of distributed fields: global datasets written without a gather.

Every rank writes only the cells (and faces) it owns. Readers see one global array per field,
``Pf[ix, iy(, iz)]`` of shape ``(nx, ny[, nz])``, face arrays ``q_a`` with ``n_a + 1`` entries
along their axis ``a``, whatever the number of ranks that wrote the file. Three strategies,
chosen by :func:`choose_mode` (override with ``mode=`` or ``HPCINV_H5_MODE``):

``mpio``
    h5py built with MPI and more than one rank: one shared file opened with the ``mpio``
    driver; dataset creation and attribute writes are collective (identical arguments on
    every rank, taken from rank 0), each rank writes its hyperslab with a collective write.
``vds``
    the default on several ranks with a serial h5py (the pip wheel): each rank writes its
    blocks to a part file, rank 0 writes a master file whose HDF5 *virtual datasets* stitch
    the blocks into the global arrays. Any HDF5 >= 1.10 reader (h5py, h5dump, ParaView) sees
    one global array. On disk::

        run/fields.h5                              master (virtual datasets, attributes)
        run/fields.h5.parts-<uid>/rank00000.h5     rank 0's blocks, one dataset per field
        run/fields.h5.parts-<uid>/rank00001.h5     ...

    The master stores the source file names *relative* (``fields.h5.parts-<uid>/rankNNNNN.h5``);
    HDF5 resolves a relative source against the directory of the master file (after
    ``HDF5_VDS_PREFIX`` and the access property prefix, which we never set), so the run directory
    can be moved or read from any working directory. Copy the ``*.parts-*`` folder with the
    master; :func:`consolidate` turns a master into a plain self-contained file.
``single``
    one rank: a plain file holding the arrays themselves.

Atomicity (checkpoints rely on it). Everything is written under new names first: the master
as ``.<name>.tmp-<uid>`` and the parts into a new, uniquely named ``<name>.parts-<uid>``
directory; files are flushed and fsynced, the master is then renamed onto ``path`` with
``os.replace`` (atomic on POSIX) and the directory fsynced. Only after that are the previous
write's parts directory and the leftovers of crashed writes removed. A reader therefore sees
either the complete previous file or the complete new one, and a crash at any point leaves
the previous file intact (at worst an orphaned ``.tmp-``/``.parts-`` entry, removed by the
next successful write to the same path). One writer per path at a time.

Readers (:func:`read_cells`, :func:`read_faces`) read only this rank's hyperslab, so a file
written on any number of ranks can be read back on any other (restart on a different rank
count). A virtual dataset whose source file is missing silently reads as its fill value in
HDF5; the readers check the sources they touch and raise ``FileNotFoundError`` instead. A
reader racing a writer of the same path (``hpcinv plot`` on a running run) may find the previous
parts gone between opening the master and reading: it then re-opens ``path``, which by then is
the new, complete master (parts are deleted only after the rename), and reads again.

Axis order and XDMF: see :func:`write_xdmf`.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODES = ("auto", "mpio", "vds", "single", "sequential")
PART_DIR_RE = r"\.parts-[0-9a-f]{12}$"


# --- helpers ------------------------------------------------------------------------------

def _h5py():
    import h5py
    return h5py


def h5py_has_mpi() -> bool:
    """True if the installed h5py was built against parallel HDF5 (``driver='mpio'``)."""
    return bool(_h5py().get_config().mpi)


def choose_mode(comm, mode: str | None = None) -> str:
    """The write strategy for ``comm``: ``mode`` or ``$HPCINV_H5_MODE`` unless ``auto``.

    ``auto``: ``single`` on one rank, ``mpio`` where h5py has MPI, else ``vds``. ``vds`` may be
    forced on any rank count (tests use it on one rank); ``mpio`` needs a parallel h5py.
    ``sequential`` (testing aid, not scalable): one shared plain file written by the ranks in
    turn with the same hyperslab code as ``mpio``.
    """
    mode = (mode or os.environ.get("HPCINV_H5_MODE") or "auto").lower()
    if mode not in MODES:
        raise ValueError(f"HDF5 write mode must be one of {MODES}, got {mode!r}")
    size = comm.Get_size()
    if mode == "auto":
        if size == 1:
            return "single"
        return "mpio" if h5py_has_mpi() else "vds"
    if mode == "mpio" and not h5py_has_mpi():
        raise ValueError("HDF5 write mode 'mpio' needs h5py built with MPI (parallel HDF5)")
    if mode == "single" and size > 1:
        raise ValueError("HDF5 write mode 'single' needs a one-rank communicator")
    return mode


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(p: Path) -> None:
    try:
        _fsync_path(p)
    except OSError:   # some file systems refuse fsync on directories; the rename still stands
        pass


def _sync(comm, err: BaseException | None, what: str) -> None:
    """Collective error check: if any rank failed, raise on every rank (no deadlock)."""
    failed = comm.allgather(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(failed) if m is not None]
    if bad:
        r, m = bad[0]
        raise RuntimeError(f"{what} failed on rank {r}: {m}")


@dataclass
class _Item:
    name: str
    block: np.ndarray            # this rank's owned block (host, C-contiguous)
    offset: tuple                # global index of block[0, 0(, 0)]
    global_shape: tuple

    @property
    def selection(self) -> tuple:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.block.shape))


def _items(decomp, cells, faces, to_host) -> list[_Item]:
    from .gather import owned_face_block
    to_host = to_host or np.asarray
    out = []
    for name, v in (cells or {}).items():
        b = np.ascontiguousarray(to_host(v[decomp.owned()]))
        out.append(_Item(name, b, tuple(decomp.offset), tuple(decomp.global_shape)))
    for name, (v, axis) in (faces or {}).items():
        sl, off, gshape = owned_face_block(decomp, axis)
        b = np.ascontiguousarray(to_host(v[sl]))
        out.append(_Item(name, b, tuple(off), tuple(gshape)))
    names = [it.name for it in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate dataset names in {names}")
    return out


def _check_consistent(comm, items, replicated) -> None:
    """Every rank must pass the same names, dtypes and global shapes in the same order."""
    mine = [(it.name, it.block.dtype.str, it.global_shape) for it in items]
    ref = comm.bcast(mine, root=0)
    err = None
    if mine != ref:
        err = ValueError(f"write_h5: rank {comm.Get_rank()} passes datasets {mine}, "
                         f"rank 0 passes {ref}")
    elif replicated and set(replicated) & {it.name for it in items}:
        err = ValueError(f"replicated names {sorted(set(replicated) & set(n for n, *_ in mine))}"
                         " clash with field names")
    _sync(comm, err, "write_h5")


def _write_attrs(f, attrs) -> None:
    for k, v in (attrs or {}).items():
        f.attrs[k] = v


def _fillvalue(dtype):
    return np.nan if np.dtype(dtype).kind in "fc" else 0


def _cleanup(path: Path, keep: str | None) -> None:
    """Remove parts directories and temporary masters of ``path`` except ``keep``."""
    pat = re.compile(re.escape(path.name) + PART_DIR_RE)
    tmp = re.compile(r"\." + re.escape(path.name) + r"\.tmp-[0-9a-f]{12}$")
    for p in path.parent.iterdir():
        if p.name == keep:
            continue
        if pat.match(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif tmp.match(p.name):
            try:
                p.unlink()
            except OSError:
                pass


def _new_uid(comm) -> str:
    return comm.bcast(uuid.uuid4().hex[:12] if comm.Get_rank() == 0 else None, root=0)


# --- the writer ---------------------------------------------------------------------------

def write_h5(path, decomp, cells=None, faces=None, attrs=None, to_host=None, replicated=None,
             mode=None):
    """Write distributed fields as global HDF5 datasets (collective: every rank calls it).

    Args:
        path: output file; its directory is created if missing.
        decomp: the :class:`~hpcinv.parallel.Decomposition` of the fields.
        cells: ``{name: padded local cell array}`` -> dataset of shape ``global_shape``.
        faces: ``{name: (padded local face array, axis)}`` -> ``global_shape`` plus one along
            ``axis`` (padded index ``j`` is the face between cells ``j-1`` and ``j``).
        attrs: attributes of the file's root group (rank 0's values are written).
        to_host: backend array -> numpy copy (default ``np.asarray``).
        replicated: ``{name: small numpy array}`` written once from rank 0 as a root dataset
            (e.g. observation coordinates); read back with :func:`read_replicated`.
        mode: write strategy, see :func:`choose_mode` (default: automatic).

    The dtype of each array is preserved. Returns ``Path(path)`` on every rank. A failure on any
    rank raises on every rank and leaves an existing file at ``path`` untouched.
    """
    path = Path(path)
    comm = decomp.comm
    mode = choose_mode(comm, mode)
    err, items = None, []
    try:
        items = _items(decomp, cells, faces, to_host)
    except Exception as e:   # noqa: BLE001 - re-raised collectively below
        err = e
    _sync(comm, err, "write_h5")
    _check_consistent(comm, items, replicated)
    if comm.Get_rank() == 0:
        replicated = {k: np.asarray(v) for k, v in (replicated or {}).items()}
    else:
        replicated = None
    if mode == "vds":
        _write_vds(path, comm, items, attrs, replicated)
    else:
        _write_shared(path, comm, items, attrs, replicated, mode)
    return path


def _prepare_dir(comm, path: Path) -> None:
    err = None
    if comm.Get_rank() == 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except Exception as e:   # noqa: BLE001
            err = e
    _sync(comm, err, "write_h5 (creating the output directory)")


def _publish(tmp: Path, path: Path, keep_parts: str | None) -> None:
    """Rank 0: fsync ``tmp``, rename it onto ``path``, fsync the directory, clean up."""
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    _cleanup(path, keep_parts)


def _write_shared(path, comm, items, attrs, replicated, mode) -> None:
    """One shared file: ``single`` (1 rank), ``mpio`` (parallel h5py) or ``sequential``."""
    h5py = _h5py()
    rank = comm.Get_rank()
    _prepare_dir(comm, path)
    uid = _new_uid(comm)
    tmp = path.parent / f".{path.name}.tmp-{uid}"
    # collective metadata must be identical on all ranks: take rank 0's
    attrs = comm.bcast(dict(attrs or {}) if rank == 0 else None, root=0)
    rep_meta = comm.bcast({k: (v.shape, v.dtype) for k, v in replicated.items()}
                          if rank == 0 else None, root=0)

    def create(f):
        dsets = [f.create_dataset(it.name, shape=it.global_shape, dtype=it.block.dtype,
                                  fillvalue=_fillvalue(it.block.dtype)) for it in items]
        reps = {k: f.create_dataset(k, shape=s, dtype=t) for k, (s, t) in rep_meta.items()}
        _write_attrs(f, attrs)
        return dsets, reps

    err = None
    try:
        if mode == "mpio":
            with h5py.File(tmp, "w", driver="mpio", comm=comm) as f:
                dsets, reps = create(f)                       # collective
                for ds, it in zip(dsets, items):
                    with ds.collective:                         # every rank writes its slab
                        ds[it.selection] = it.block
                if rank == 0:
                    for k, ds in reps.items():                  # independent, rank 0 only
                        ds[...] = replicated[k]
                f.flush()                                       # MPI_File_sync
        else:
            if rank == 0:
                with h5py.File(tmp, "w") as f:
                    _, reps = create(f)
                    for k, ds in reps.items():
                        ds[...] = replicated[k]
    except Exception as e:   # noqa: BLE001
        err = e
    if mode == "sequential":   # ranks take turns writing their hyperslabs (testing aid)
        for r in range(comm.Get_size()):
            if any(comm.allgather(err is not None)):
                break                                   # _finish raises everywhere
            if r == rank:
                try:
                    with h5py.File(tmp, "r+") as f:
                        for it in items:
                            f[it.name][it.selection] = it.block
                except Exception as e:   # noqa: BLE001
                    err = e
    elif mode == "single":
        try:
            if err is None:
                with h5py.File(tmp, "r+") as f:
                    for it in items:
                        f[it.name][it.selection] = it.block
        except Exception as e:   # noqa: BLE001
            err = e
    _finish(comm, err, path, tmp, None, None)


def _finish(comm, err, path, tmp, parts_dir, parts_name) -> None:
    """Collective tail: publish on rank 0 if every rank succeeded, else clean up and raise."""
    try:
        _sync(comm, err, "write_h5")
    except BaseException:
        if comm.Get_rank() == 0:
            _discard(tmp, parts_dir)
        raise
    err = None
    if comm.Get_rank() == 0:
        try:
            _publish(tmp, path, parts_name)
        except Exception as e:   # noqa: BLE001
            err = e
            _discard(tmp, parts_dir)
    err_msg = comm.bcast(None if err is None else f"{type(err).__name__}: {err}", root=0)
    if err is not None:
        raise err
    if err_msg is not None:
        raise RuntimeError(f"write_h5 failed on rank 0: {err_msg}")


def _discard(tmp: Path, parts_dir: Path | None) -> None:
    try:
        if tmp.exists():
            tmp.unlink()
    except OSError:
        pass
    if parts_dir is not None:
        shutil.rmtree(parts_dir, ignore_errors=True)


def _write_vds(path, comm, items, attrs, replicated) -> None:
    """Part file per rank plus a master of virtual datasets (serial h5py, several ranks)."""
    h5py = _h5py()
    rank = comm.Get_rank()
    _prepare_dir(comm, path)
    uid = _new_uid(comm)
    parts_name = f"{path.name}.parts-{uid}"
    parts_dir = path.parent / parts_name
    tmp = path.parent / f".{path.name}.tmp-{uid}"
    err = None
    if rank == 0:
        try:
            parts_dir.mkdir()
        except Exception as e:   # noqa: BLE001
            err = e
    _sync(comm, err, "write_h5 (creating the parts directory)")
    part = parts_dir / f"rank{rank:05d}.h5"
    try:
        with h5py.File(part, "w") as f:
            f.attrs["rank"] = rank
            f.attrs["size"] = comm.Get_size()
            for it in items:
                ds = f.create_dataset(it.name, data=it.block)
                ds.attrs["offset"] = np.asarray(it.offset, dtype=np.int64)
                ds.attrs["global_shape"] = np.asarray(it.global_shape, dtype=np.int64)
        _fsync_path(part)
    except Exception as e:   # noqa: BLE001
        err = e
    # every rank's (offset, shape) per dataset; metadata only, a few integers per rank
    meta = comm.gather([(it.offset, it.block.shape) for it in items], root=0)
    try:
        _sync(comm, err, "write_h5 (part files)")
    except BaseException:
        if rank == 0:
            _discard(tmp, parts_dir)
        raise
    if rank == 0:
        try:
            _fsync_dir(parts_dir)
            with h5py.File(tmp, "w") as f:
                for k, it in enumerate(items):
                    layout = h5py.VirtualLayout(shape=it.global_shape, dtype=it.block.dtype)
                    for r, m in enumerate(meta):
                        off, shape = m[k]
                        src = h5py.VirtualSource(f"{parts_name}/rank{r:05d}.h5", it.name,
                                                 shape=shape, dtype=it.block.dtype)
                        layout[tuple(slice(o, o + n) for o, n in zip(off, shape))] = src
                    f.create_virtual_dataset(it.name, layout,
                                             fillvalue=_fillvalue(it.block.dtype))
                for k, v in replicated.items():
                    f.create_dataset(k, data=v)
                _write_attrs(f, attrs)
        except Exception as e:   # noqa: BLE001
            err = e
    _finish(comm, err, path, tmp, parts_dir, parts_name)


# --- readers ------------------------------------------------------------------------------

def _open_dataset(f, path, name):
    if name not in f:
        raise KeyError(f"{path}: no dataset {name!r} (has {sorted(f.keys())})")
    return f[name]


def _check_sources(path: Path, ds, selection) -> None:
    """Raise if a virtual source file overlapping ``selection`` is missing (HDF5 would
    silently return fill values)."""
    if not ds.is_virtual:
        return
    lo = [s.start for s in selection]
    hi = [s.stop - 1 for s in selection]
    seen = set()
    for vs in ds.virtual_sources():
        start, end = vs.vspace.get_select_bounds()
        if any(e < a or s > b for s, e, a, b in zip(start, end, lo, hi)):
            continue
        if vs.file_name in seen or vs.file_name == ".":
            continue
        seen.add(vs.file_name)
        src = Path(vs.file_name)
        if not src.is_absolute():
            src = path.parent / src
        if not src.exists():
            raise FileNotFoundError(
                f"{path}: dataset {ds.name!r} needs the part file {src}, which is missing "
                "(copy the '*.parts-*' folder together with the master file)")


def _read_block(path, name, selection, expect_shape, what, retries: int = 3):
    """Read a hyperslab. For a virtual dataset the part files it touches are checked before
    and after the read: a concurrent writer replacing the file deletes the previous parts
    only after the new master is in place, so a vanished part means "re-open and read the new
    master" (up to ``retries`` times), never silently returned fill values."""
    h5py = _h5py()
    path = Path(path)
    for attempt in range(retries + 1):
        with h5py.File(path, "r") as f:
            ds = _open_dataset(f, path, name)
            if tuple(ds.shape) != tuple(expect_shape):
                raise ValueError(f"{path}: dataset {name!r} has shape {tuple(ds.shape)}, the "
                                 f"grid needs {tuple(expect_shape)} ({what})")
            try:
                _check_sources(path, ds, selection)
                block = ds[selection]
                _check_sources(path, ds, selection)
                return block, ds.dtype
            except FileNotFoundError:
                if attempt == retries:
                    raise


def read_cells(path, name, decomp, dtype=None) -> np.ndarray:
    """This rank's padded local cell array of dataset ``name`` (owned cells read, ghosts 0).

    Works whatever number of ranks wrote the file; each rank reads only its hyperslab.
    """
    sel = tuple(slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape))
    block, dt = _read_block(path, name, sel, decomp.global_shape, "cell array")
    out = np.zeros(decomp.padded_shape, dtype=dtype or dt)
    out[decomp.owned()] = block
    return out


def read_faces(path, name, axis, decomp, dtype=None) -> np.ndarray:
    """This rank's padded local face array along ``axis`` (padded index ``j`` = face between
    cells ``j-1`` and ``j``): both faces of every owned cell are filled (``j = 1 .. n+1``),
    the rest is 0. Works whatever number of ranks wrote the file.
    """
    gshape = list(decomp.global_shape)
    gshape[axis] += 1
    sel = [slice(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape)]
    sel[axis] = slice(sel[axis].start, sel[axis].stop + 1)
    block, dt = _read_block(path, name, tuple(sel), gshape, f"face array along axis {axis}")
    out = np.zeros(decomp.padded_shape, dtype=dtype or dt)
    dst = list(decomp.owned())
    dst[axis] = slice(1, decomp.local_shape[axis] + 2)
    out[tuple(dst)] = block
    return out


def read_global(path, name) -> np.ndarray:
    """The whole global dataset ``name`` (small files, tests, plotting on rank 0)."""
    h5py = _h5py()
    path = Path(path)
    with h5py.File(path, "r") as f:
        shape = _open_dataset(f, path, name).shape
    return _read_block(path, name, tuple(slice(0, n) for n in shape), shape, "global read")[0]


def read_attrs(path) -> dict:
    """Root attributes of an output file as a dict (numpy values)."""
    with _h5py().File(path, "r") as f:
        return {k: f.attrs[k] for k in f.attrs}


def read_replicated(path, name) -> np.ndarray:
    """A replicated (rank-0-written) dataset, e.g. observation coordinates."""
    path = Path(path)
    with _h5py().File(path, "r") as f:
        return _open_dataset(f, path, name)[()]


def consolidate(path, out) -> Path:
    """Copy a (possibly virtual) output file into one self-contained plain file ``out``
    (serial; whole arrays in memory, one dataset at a time)."""
    h5py = _h5py()
    path, out = Path(path), Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    with h5py.File(path, "r") as f, h5py.File(tmp, "w") as g:
        for k in f.attrs:
            g.attrs[k] = f.attrs[k]
        for name, ds in f.items():
            g.create_dataset(name, data=read_global(path, name))
    _fsync_path(tmp)
    os.replace(tmp, out)
    return out


# --- XDMF ---------------------------------------------------------------------------------

_XDMF_TYPES = {"f": "Float", "i": "Int", "u": "UInt"}


def _number_type(dtype) -> tuple[str, int]:
    dt = np.dtype(dtype)
    if dt.kind not in _XDMF_TYPES:
        raise ValueError(f"XDMF cannot describe dtype {dt}")
    kind = _XDMF_TYPES[dt.kind]
    if dt.itemsize == 1:
        kind = "Char" if dt.kind == "i" else "UChar"
    return kind, dt.itemsize


def write_xdmf(h5path, grid, names=None) -> Path:
    """Write the XDMF 3 sidecar ``<h5path stem>.xmf`` so ParaView/VisIt open the fields.

    Args:
        h5path: an output file of :func:`write_h5` (serial: call on one rank).
        grid: the :class:`~hpcinv.grid.Grid` (shape, extent, spacing).
        names: datasets to expose (default: every dataset of cell or face shape).

    Cell arrays (shape ``grid.shape``) become ``Center="Cell"`` attributes of a
    ``2DCoRectMesh``/``3DCoRectMesh`` grid named ``cells``. A face array along axis ``a``
    (shape ``grid.shape`` plus one along ``a``) becomes a ``Center="Node"`` attribute of its own
    co-rectilinear grid ``faces_<x|y|z>`` whose points are the face centres (origin shifted by
    half a cell along the other axes), so values sit where they were computed.

    Axis order: XDMF lists ``Dimensions`` slowest-varying first and has no transpose. Our
    arrays are C-ordered ``[ix, iy(, iz)]`` (x slowest), so the topology is declared in the
    storage order, ``"nx+1 ny+1 [nz+1]"`` points, with ``Origin`` and ``Spacing`` listed in the
    same order ``(x0, y0[, z0])``, ``(dx, dy[, dz])`` -- the slowest-first reading that
    ParaView's and VisIt's XDMF readers apply to CoRectMesh origin/spacing too. Consequence: the
    viewer's first coordinate (its X) is hpcinv's *last* axis: in 2D ParaView X = hpcinv y and
    ParaView Y = hpcinv x; in 3D ParaView X = z, Y = y, Z = x. The geometry is exact, only the
    axis labels are swapped (swap them back with a Transform filter if needed). No data copy
    or per-point coordinate array is required, which keeps this usable for huge grids.
    """
    h5 = _h5py()
    h5path = Path(h5path)
    shape = tuple(grid.shape)
    nd = len(shape)
    with h5.File(h5path, "r") as f:
        avail = {k: (tuple(v.shape), v.dtype) for k, v in f.items()
                 if isinstance(v, h5.Dataset)}
    if names is None:
        names = [k for k, (s, _) in avail.items() if _field_axis(s, shape) is not None]
    cells, faces = [], {a: [] for a in range(nd)}
    for name in names:
        if name not in avail:
            raise KeyError(f"{h5path}: no dataset {name!r} for the XDMF file")
        s, dt = avail[name]
        axis = _field_axis(s, shape)
        if axis is None:
            raise ValueError(f"{h5path}: dataset {name!r} of shape {s} is neither a cell "
                             f"array {shape} nor a face array of this grid")
        (cells if axis == -1 else faces[axis]).append((name, s, dt))

    root = ET.Element("Xdmf", Version="3.0")
    root.set("xmlns:xi", "http://www.w3.org/2001/XInclude")
    dom = ET.SubElement(root, "Domain")
    topo = f"{nd}DCoRectMesh"
    geo = "ORIGIN_DXDYDZ" if nd == 3 else "ORIGIN_DXDY"
    x0 = [e[0] for e in grid.extent]
    dx = list(grid.spacing)

    def mesh(name, npoints, origin, fields, center):
        g = ET.SubElement(dom, "Grid", Name=name, GridType="Uniform")
        ET.SubElement(g, "Topology", TopologyType=topo,
                      Dimensions=" ".join(map(str, npoints)))
        ge = ET.SubElement(g, "Geometry", GeometryType=geo)
        for label, vals in (("Origin", origin), ("Spacing", dx)):
            it = ET.SubElement(ge, "DataItem", Name=label, Dimensions=str(nd),
                               NumberType="Float", Precision="8", Format="XML")
            it.text = " ".join(repr(float(v)) for v in vals)
        for fname, s, dt in fields:
            kind, prec = _number_type(dt)
            a = ET.SubElement(g, "Attribute", Name=fname, AttributeType="Scalar", Center=center)
            it = ET.SubElement(a, "DataItem", Dimensions=" ".join(map(str, s)), NumberType=kind,
                               Precision=str(prec), Format="HDF")
            it.text = f"{h5path.name}:/{fname}"

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
