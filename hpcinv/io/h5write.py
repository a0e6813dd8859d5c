"""Scalable, atomic HDF5 writer of distributed fields: global datasets written without a gather.

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
    master; :func:`~hpcinv.io.h5read.consolidate` turns a master into a plain self-contained file.
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

Checked writes. In the ``single`` and ``vds`` modes HDF5 never writes to the disk itself: it
writes through a :class:`~hpcinv.io.checked_file.CheckedFile`, whose every write is a checked
``os.pwrite`` as HDF5 makes it, fsynced at the end (:func:`write_checked`), so a full disk or an
I/O error raises ``OSError``, also one HDF5 would swallow at close. (HDF5's own file driver
reports such errors unreliably: a failed write of a dataset's buffer at close is only printed,
"Exception ignored", and the broken file state it leaves can crash the process later.) Nothing
holds a file's image in memory. ``mpio`` and ``sequential`` write through HDF5's drivers (a
shared file); callers that need certainty re-read what they wrote (see
:mod:`hpcinv.io.checkpoint`). A rank-local failure inside ``mpio``'s collective calls cannot be
combined over the ranks; it ends the job with one line and exit status 4
(:mod:`hpcinv.io.watchdog`).

Memory: each rank downloads (``to_host``) and writes its blocks one dataset at a time
(:mod:`hpcinv.io.h5items`), so a write holds one block (two with its XDMF view) beyond the
fields themselves, never a global field and never all of its blocks at once.

Reading back: :mod:`hpcinv.io.h5read`; XDMF sidecars: :mod:`hpcinv.io.xdmf`.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

from .checked_file import CheckedFile
from .h5items import Item, dataset_items
from .h5mode import choose_mode
from .h5util import _fsync_dir, _fsync_path, _h5py
from .watchdog import collective_region, io_timeout_s

PART_DIR_RE = r"\.parts-[0-9a-f]{12}$"


def _sync(comm, err: BaseException | None, what: str) -> None:
    """Collective error check: if any rank failed, raise on every rank (no deadlock)."""
    failed = comm.allgather(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(failed) if m is not None]
    if bad:
        r, m = bad[0]
        raise RuntimeError(f"{what} failed on rank {r}: {m}")


def _check_consistent(comm, items, replicated) -> None:
    """Every rank must pass the same names, dtypes and global shapes in the same order."""
    mine = [(it.name, it.dtype.str, it.global_shape) for it in items]
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


def write_checked(path, build) -> None:
    """Create the HDF5 file ``path``: ``build(f)`` fills it through a
    :class:`~hpcinv.io.checked_file.CheckedFile` (every write checked as HDF5 makes it, the
    file fsynced after HDF5 closed it); any failure of the disk raises that ``OSError``, also
    one HDF5 swallowed or turned into another error."""
    with CheckedFile(path) as out:
        try:
            with _h5py().File(out, "w") as f:
                build(f)
        except Exception:
            if out.error is not None:
                raise out.error from None              # the disk's error, not HDF5's echo
            raise
        out.finish()


def _new_uid(comm) -> str:
    return comm.bcast(uuid.uuid4().hex[:12] if comm.Get_rank() == 0 else None, root=0)


# --- the writer ---------------------------------------------------------------------------

def write_h5(path, decomp, cells=None, faces=None, attrs=None, to_host=None, replicated=None,
             mode=None, views=()):
    """Write distributed fields as global HDF5 datasets (collective: every rank calls it).

    Args:
        path: output file; its directory is created if missing.
        decomp: the :class:`~hpcinv.parallel.Decomposition` of the fields.
        cells: ``{name: padded local cell array}`` -> dataset of shape ``global_shape``.
        faces: ``{name: (padded local face array, axis)}`` -> ``global_shape`` plus one along
            ``axis`` (padded index ``j`` is the face between cells ``j-1`` and ``j``).
        attrs: attributes of the file's root group (rank 0's values are written).
        to_host: ``to_host(array, region)`` -> NumPy copy of ``array[region]``, e.g.
            ``backend.to_host`` for backend arrays; ``None`` (default): the arrays are NumPy
            arrays, read directly.
        replicated: ``{name: small numpy array}`` written once from rank 0 as a root dataset
            (e.g. observation coordinates); read back with
            :func:`~hpcinv.io.h5read.read_replicated`.
        mode: write strategy, see :func:`choose_mode` (default: automatic).
        views: names of cell or face fields to write a second time as ``xdmf/<name>``, with
            the axes reversed (``[iz, iy, ix]``; in 2D ``[0, iy, ix]``), for the XDMF sidecar
            of :mod:`hpcinv.io.xdmf`: XDMF readers (ParaView, VisIt) map the fastest-varying
            index to X, and no XDMF construct transposes an HDF5 dataset. Each rank transposes
            its own block (no gather); the view doubles those fields' bytes on disk.

    The dtype of each array is preserved. Returns ``Path(path)`` on every rank. A failure on any
    rank raises on every rank and leaves an existing file at ``path`` untouched.
    """
    path = Path(path)
    comm = decomp.comm
    mode = choose_mode(comm, mode)
    err, items = None, []
    try:
        items = dataset_items(decomp, cells, faces, to_host, views)
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
        dsets = [f.create_dataset(it.name, shape=it.global_shape, dtype=it.dtype,
                                  fillvalue=_fillvalue(it.dtype)) for it in items]
        reps = {k: f.create_dataset(k, shape=s, dtype=t) for k, (s, t) in rep_meta.items()}
        _write_attrs(f, attrs)
        return dsets, reps

    err = _attempt(lambda: [_check_block(it) for it in items])
    if mode != "single":
        # the collective region (or the ranks' turns) is entered only when every rank is ready
        _sync(comm, err, "write_h5 (preparing the blocks)")
    try:
        if mode == "mpio":
            # a rank failing inside cannot tell the others: one line and exit 4, no hang
            nbytes = sum(int(np.prod(it.global_shape)) * it.dtype.itemsize for it in items)
            with collective_region(path, io_timeout_s(nbytes), rank):
                _write_mpio(tmp, comm, items, create, replicated)
        elif err is None and rank == 0:
            def build(f):
                dsets, reps = create(f)
                for k, ds in reps.items():
                    ds[...] = replicated[k]
                if mode == "single":
                    for ds, it in zip(dsets, items):
                        ds[it.selection] = it.load()
            if mode == "single":
                write_checked(tmp, build)      # every byte written and checked by os.pwrite
            else:
                with h5py.File(tmp, "w") as f:
                    build(f)
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
                            f[it.name][it.selection] = it.load()
                except Exception as e:   # noqa: BLE001
                    err = e
    _finish(comm, err, path, tmp, None, None)


def _attempt(fn) -> BaseException | None:
    """Run a rank-local step; its exception (or ``None``), to be combined with :func:`_sync`."""
    try:
        fn()
    except Exception as e:   # noqa: BLE001 - combined by the caller
        return e
    return None


def _check_block(it: Item) -> None:
    """Rank-local check of a block's place before any collective call uses it (a failure
    here is combined over the ranks first, so no rank waits in a collective another never
    enters; the block's own checks are :meth:`~hpcinv.io.h5items.Item.load`'s)."""
    if any(o < 0 or o + n > g for o, n, g in zip(it.offset, it.shape, it.global_shape)) \
            or len(it.offset) != len(it.global_shape) or len(it.shape) != len(it.offset):
        raise ValueError(f"write_h5: block of {it.name!r} at {it.offset} with shape "
                         f"{it.shape} does not fit the global shape {it.global_shape}")


def _write_mpio(tmp, comm, items, create, replicated) -> None:
    """The ``mpio`` writer as a sequence of collective steps. Every rank-local failure that can
    be foreseen is detected before the collective region (:func:`_check_block`, combined by the
    caller); each step's outcome is combined over the ranks (:func:`_sync`) before the next one
    starts. An error that HDF5 raises on some ranks only, inside a collective call, leaves the
    others in HDF5's next collective MPI call, where no ``_sync`` reaches them: the caller runs
    this function inside :class:`~hpcinv.io.watchdog.collective_region`, which ends the job
    with one line and exit status 4 (at once on the failing rank; after ``HPCINV_IO_TIMEOUT``
    on a rank that never leaves the region)."""
    h5py = _h5py()
    rank = comm.Get_rank()
    f = h5py.File(tmp, "w", driver="mpio", comm=comm)
    try:
        made = {}

        def make():
            made["dsets"], made["reps"] = create(f)                 # collective metadata
        _sync(comm, _attempt(make), "write_h5 (creating the datasets)")
        for ds, it in zip(made["dsets"], items):
            block = []                                # downloaded before the collective call
            _sync(comm, _attempt(lambda it=it: block.append(it.load())),
                  f"write_h5 (downloading {it.name!r})")

            def write(ds=ds, it=it):
                with ds.collective:                                   # every rank its slab
                    ds[it.selection] = block.pop()
            _sync(comm, _attempt(write), f"write_h5 (writing {it.name!r})")
        if rank == 0:
            err = _attempt(lambda: [ds.__setitem__(Ellipsis, replicated[k])
                                    for k, ds in made["reps"].items()])   # independent
        else:
            err = None
        _sync(comm, err, "write_h5 (writing the replicated datasets)")
        _sync(comm, _attempt(f.flush), "write_h5 (flushing)")        # MPI_File_sync
    finally:
        close_err = _attempt(f.close)                                  # collective
    _sync(comm, close_err, "write_h5 (closing)")


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
        for it in items:
            _check_block(it)

        def build_part(f):
            f.attrs["rank"] = rank
            f.attrs["size"] = comm.Get_size()
            for it in items:
                ds = f.create_dataset(it.name, data=it.load())
                ds.attrs["offset"] = np.asarray(it.offset, dtype=np.int64)
                ds.attrs["global_shape"] = np.asarray(it.global_shape, dtype=np.int64)
        write_checked(part, build_part)        # checked writes, fsynced
    except Exception as e:   # noqa: BLE001
        err = e
    # every rank's (offset, shape) per dataset; metadata only, a few integers per rank
    meta = comm.gather([(it.offset, it.shape) for it in items], root=0)
    try:
        _sync(comm, err, "write_h5 (part files)")
    except BaseException:
        if rank == 0:
            _discard(tmp, parts_dir)
        raise
    if rank == 0:
        try:
            _fsync_dir(parts_dir)

            def build_master(f):
                for k, it in enumerate(items):
                    layout = h5py.VirtualLayout(shape=it.global_shape, dtype=it.dtype)
                    for r, m in enumerate(meta):
                        off, shape = m[k]
                        src = h5py.VirtualSource(f"{parts_name}/rank{r:05d}.h5", it.name,
                                                 shape=shape, dtype=it.dtype)
                        layout[tuple(slice(o, o + n) for o, n in zip(off, shape))] = src
                    f.create_virtual_dataset(it.name, layout,
                                             fillvalue=_fillvalue(it.dtype))
                for k, v in replicated.items():
                    f.create_dataset(k, data=v)
                _write_attrs(f, attrs)
            write_checked(tmp, build_master)
        except Exception as e:   # noqa: BLE001
            err = e
    _finish(comm, err, path, tmp, parts_dir, parts_name)
