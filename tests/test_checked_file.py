"""Checked, streamed HDF5 writes (:mod:`hpcinv.io.checked_file`, ``write_h5``'s ``single`` and
``vds`` modes): the file is what the in-memory build of the same content was, byte for byte, and
reads back as HDF5's own driver writes it; a full disk (a per-file size limit, RLIMIT_FSIZE,
SIGXFSZ ignored: the kernel refuses with EFBIG, as with ENOSPC) at any point of a write raises
that ``OSError`` and leaves the previous file and no leftover; a write holds one block at a
time, not the file's image nor all of its blocks (tracemalloc sees NumPy's and Python's
buffers)."""
from __future__ import annotations

import contextlib
import errno
import io
import resource
import signal
import tracemalloc

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.io import write_h5
from hpcinv.io.checked_file import CheckedFile
from hpcinv.io.h5write import write_checked
from hpcinv.parallel import Decomposition


def build(f):
    """Some of everything a hpcinv file holds: attributes, float64/float32 datasets written
    whole and by hyperslab (the latter with a fill value), a group, a byte dataset."""
    f.attrs["iterations"] = 7
    f.attrs["problem"] = "test"
    f.create_dataset("K", data=np.linspace(0.0, 1.0, 3000).reshape(30, 100))
    ds = f.create_dataset("qx", shape=(31, 20), dtype=np.float32, fillvalue=np.nan)
    ds[3:20, :] = np.arange(17 * 20, dtype=np.float32).reshape(17, 20)
    f.create_dataset("xdmf/K", data=np.arange(12.0).reshape(1, 3, 4))
    f.create_dataset("history", data=np.frombuffer(b'{"it": 1}\n' * 50, dtype=np.uint8))


def content(path_or_file):
    """``({name: array}, {attr: value})`` of every dataset and root attribute."""
    data = {}
    with h5py.File(path_or_file, "r") as f:
        f.visititems(lambda n, o: data.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
        attrs = dict(f.attrs)
    return data, attrs


def assert_same_content(a, b):
    (da, aa), (db, ab) = a, b
    assert sorted(da) == sorted(db) and sorted(aa) == sorted(ab)
    for k in da:
        assert da[k].dtype == db[k].dtype and da[k].shape == db[k].shape, k
        assert da[k].tobytes() == db[k].tobytes(), k           # NaN fill values included
    for k in aa:
        assert np.array_equal(aa[k], ab[k]), k


def test_bytes_of_the_in_memory_build_and_content_of_a_plain_write(tmp_path):
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        build(f)
    write_checked(tmp_path / "checked.h5", build)
    assert (tmp_path / "checked.h5").read_bytes() == image.getvalue()
    with h5py.File(tmp_path / "plain.h5", "w") as f:                  # HDF5's own driver
        build(f)
    assert_same_content(content(tmp_path / "checked.h5"), content(tmp_path / "plain.h5"))


def test_reads_past_the_end_are_zeros_and_seek_end(tmp_path):
    with CheckedFile(tmp_path / "f.bin") as out:
        out.write(b"abc")
        assert out.seek(0, io.SEEK_END) == 3 and out.tell() == 3
        buf = bytearray(b"\xff" * 6)
        out.seek(1)
        assert out.readinto(buf) == 6 and bytes(buf) == b"bc\0\0\0\0"
        out.finish()
    assert (tmp_path / "f.bin").read_bytes() == b"abc"


@contextlib.contextmanager
def file_size_limit(nbytes):
    """Files may not grow past ``nbytes`` (soft limit only, restored after); SIGXFSZ ignored,
    so a write past it fails with EFBIG."""
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_sig)


def test_an_error_hdf5_does_not_see_is_raised_by_finish(tmp_path):
    """A failed write whose exception someone (HDF5 at close) swallowed is still raised."""
    with CheckedFile(tmp_path / "f.bin") as out:
        with file_size_limit(4):
            with contextlib.suppress(OSError):
                out.write(b"0123456789")
        with pytest.raises(OSError) as e:
            out.finish()
    assert e.value.errno == errno.EFBIG


def fields(decomp, nfields, salt=0.0):
    """``nfields`` padded cell fields and the faces along x (float64 and float32)."""
    rng = np.random.default_rng(int(salt))
    cells = {f"c{k}": rng.random(decomp.padded_shape) for k in range(nfields)}
    faces = {"qx": (rng.random(decomp.padded_shape).astype(np.float32), 0)}
    return cells, faces


@pytest.mark.parametrize("mode", ["single", "vds"])
@pytest.mark.parametrize("where", [0.0, 0.4, 0.999])
def test_disk_full_raises_the_disks_error_and_keeps_the_previous_file(tmp_path, mode, where):
    """The limit falls at the start, in the data, or at the metadata HDF5 writes last (at
    close): every case raises EFBIG, the previous file stays, no partial file remains."""
    d = Decomposition((20, 12, 10), comm=MPI.COMM_SELF)
    cells, faces = fields(d, 3)
    p = write_h5(tmp_path / "f.h5", d, cells, faces, attrs={"it": 1}, mode=mode)
    before = content(p)
    largest = max(q.stat().st_size for q in tmp_path.rglob("*.h5"))
    new_cells, new_faces = fields(d, 3, salt=1.0)
    with file_size_limit(int(where * largest)):
        with pytest.raises(OSError) as e:
            write_h5(p, d, new_cells, new_faces, attrs={"it": 2}, mode=mode)
    assert e.value.errno == errno.EFBIG, e.value
    assert_same_content(content(p), before)
    assert not [q.name for q in tmp_path.iterdir() if ".tmp-" in q.name]
    parts = [q.name for q in tmp_path.iterdir() if ".parts-" in q.name]
    assert len(parts) == (1 if mode == "vds" else 0)                  # the previous file's
    write_h5(p, d, new_cells, new_faces, attrs={"it": 2}, mode=mode)  # and the next succeeds
    assert content(p)[1]["it"] == 2


@pytest.mark.parametrize("mode", ["single", "vds"])
def test_a_write_holds_one_block_beyond_the_fields(tmp_path, mode):
    """Eight fields of 0.5 MB: the write's Python/NumPy peak stays under 1.5 blocks (one
    block downloaded plus small buffers; measured 1.03-1.06), where the in-memory image and
    all the blocks held for it came to 16-20 blocks."""
    d = Decomposition((40, 40, 40), comm=MPI.COMM_SELF)
    cells, faces = fields(d, 7)
    block = 41 * 40 * 40 * 4                                  # the largest: faces, float32
    block = max(block, 40 ** 3 * 8)
    small = Decomposition((4, 3, 2), comm=MPI.COMM_SELF)
    write_h5(tmp_path / "warm.h5", small, *fields(small, 1), mode=mode)   # imports, caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        write_h5(tmp_path / "f.h5", d, cells, faces, mode=mode)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * block, f"peak {peak} bytes, one block {block} bytes"
    data, _ = content(tmp_path / "f.h5")
    assert np.array_equal(data["c6"], cells["c6"][d.owned()])
