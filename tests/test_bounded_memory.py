"""Issue 20: memory that does not grow with a field or a file where it need not.

* The checkpoint seal edits the file through a copy-on-write view (``io/cow_file.py``): the
  sealed file is byte for byte what the old in-memory edit made, only the pages HDF5 writes are
  held, and a failed write raises and leaves the generation as it was.
"""
import errno
import io
import json
import os

import h5py
import numpy as np
import pytest

from hpcinv.io import checkpoint as ckpt
from hpcinv.io.cow_file import PAGE, CopyOnWriteFile


def _h5(path, nbytes=3 << 20):
    rng = np.random.default_rng(7)
    n = nbytes // 8 // 4
    with h5py.File(path, "w") as f:
        for i in range(4):
            f[f"field{i}"] = rng.standard_normal(n)
        f.attrs["iteration"] = 3
    return path


def _attrs(path):
    with h5py.File(path, "r") as f:
        return {k: f.attrs[k] for k in f.attrs}


def test_copy_on_write_edit_equals_the_in_memory_edit_and_holds_few_pages(tmp_path):
    path = _h5(tmp_path / "a.h5")
    original = path.read_bytes()
    buf = io.BytesIO(original)
    with h5py.File(buf, "r+") as f:
        f.attrs["data_sha256"] = "x" * 100
    with CopyOnWriteFile(path) as view:
        with h5py.File(view, "r+") as f:
            f.attrs["data_sha256"] = "x" * 100
        edited = b"".join(bytes(c) for c in view.chunks())
        assert view.dirty_bytes <= 8 * PAGE < len(original) / 4
    assert edited == buf.getvalue()
    assert path.read_bytes() == original                # the file itself is never written


def test_seal_stores_and_verifies_the_digest(tmp_path):
    path = _h5(tmp_path / "checkpoint-0123456789ab.h5")
    attrs = _attrs(path)
    state = ckpt.state_digest(attrs)
    ckpt._seal(path, {"field0": "d0"}, state)
    back = _attrs(path)
    assert json.loads(back["data_sha256"]) == {"field0": "d0"}
    with h5py.File(path, "r") as f:
        assert f["field3"].shape == ((3 << 20) // 32,)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # no temporary left
    with pytest.raises(OSError, match="read back differently"):
        ckpt._seal(path, {"field0": "d0"}, "not the state digest")


def test_seal_write_failure_raises_and_keeps_the_generation(tmp_path, monkeypatch):
    path = _h5(tmp_path / "checkpoint-0123456789ab.h5")
    before = path.read_bytes()
    written = []

    def full_disk(fd, data):
        if sum(written) > 1 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return real_write(fd, data)
    real_write = os.write
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt._seal(path, {"field0": "d0"}, ckpt.state_digest(_attrs(path)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
