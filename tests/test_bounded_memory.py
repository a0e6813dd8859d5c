"""Issue 20: memory that does not grow with a field or a file where it need not.

* The checkpoint seal edits the file through a copy-on-write view (``io/cow_file.py``): the
  sealed file is byte for byte what the old in-memory edit made, only the pages HDF5 writes are
  held, and a failed write raises and leaves the generation as it was.
* The host backend's ``max_abs`` and ``dot`` reduce in small leaves (``backend/host_reduce.py``):
  bitwise the full-temporary NumPy results on random fields and regions, float64 and float32,
  and no temporary larger than a leaf in the memory counter.
"""
import errno
import io
import json
import os

import h5py
import numpy as np
import pytest

from hpcinv.backend import host_reduce, make_backend
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


# --- reductions without a full-field temporary -----------------------------------------------

def _cases():
    rng = np.random.default_rng(3)
    shapes = [(200_001,), (700, 301), (66, 70, 58), (40, 41, 43)]
    for shape in shapes:
        for dtype in (np.float64, np.float32):
            scale = 10.0 ** rng.integers(-4, 5, shape)
            a = (rng.standard_normal(shape) * scale).astype(dtype)
            b = rng.standard_normal(shape).astype(dtype)
            regions = [None, tuple(slice(1, n - 1) for n in shape),
                       tuple(slice(int(rng.integers(0, 3)), n - int(rng.integers(0, 5)))
                             for n in shape)]
            if len(shape) > 1:
                regions.append((int(rng.integers(0, shape[0])),) + (slice(None),) *
                               (len(shape) - 1))
            for region in regions:
                yield a, b, region


def test_host_reductions_are_bitwise_the_full_temporary_ones():
    bk = make_backend("host", threads=1)
    checked = 0
    for a, b, region in _cases():
        r = (slice(None),) * a.ndim if region is None else region
        x, y = a[r], b[r]
        want_dot = float(np.sum(x * y))
        want_max = float(np.max(np.abs(x)))
        assert host_reduce.dot(x, y) == want_dot and np.signbit(host_reduce.dot(x, y)) == \
            np.signbit(want_dot), (a.shape, a.dtype, region)
        assert bk.dot(bk.upload(a), bk.upload(b), region=region) == want_dot
        assert bk.max_abs(bk.upload(a), region=region) == want_max
        checked += x.size > host_reduce.CHUNK
    assert checked >= 8                         # the leaves were exercised, not the shortcut


def test_flat_boxes_tile_the_range_in_order():
    shape = (5, 6, 7)
    flat = np.arange(np.prod(shape)).reshape(shape)
    for lo, hi in [(0, 210), (3, 4), (5, 100), (41, 43), (42, 84), (13, 197), (7, 7)]:
        got = [v for box in host_reduce.flat_boxes(shape, lo, hi) for v in flat[box].ravel()]
        assert got == list(range(lo, hi))


def test_nan_propagates_as_in_numpy():
    v = np.ones(3 * host_reduce.CHUNK + 5)
    v[2 * host_reduce.CHUNK + 1] = np.nan
    assert np.isnan(host_reduce.max_abs(v)) and np.isnan(host_reduce.dot(v, v))


def test_no_field_sized_temporary_in_the_counter():
    bk = make_backend("host", threads=1)
    a = bk.upload(np.linspace(-3.0, 2.0, 100_000))
    bk.memory.reset_peak()
    held = bk.memory.snapshot()["current_bytes"]
    assert bk.max_abs(a) == 3.0
    assert bk.dot(a, a) == float(np.sum(np.asarray(a) * np.asarray(a)))
    peak = bk.memory.snapshot()["peak_bytes"]
    assert peak - held == host_reduce.CHUNK * 8 < a.nbytes / 3


def test_the_estimate_counts_a_leaf_on_the_host_and_a_field_on_gpus():
    from hpcinv import config as config_mod
    from hpcinv.app.memory import estimate
    from hpcinv.app.resolve import resolved
    cfg = resolved(config_mod.from_dict({"problem": {"name": "geothermal3d"},
                                         "grid": {"nx": 96, "ny": 96, "nz": 96}}))
    host = estimate(cfg, (96,) * 3, 1, "forward").items["reduction temporary"]
    gpu = estimate(cfg, (96,) * 3, 1, "forward", device_memory=True).items["reduction temporary"]
    assert gpu == 1 and host == host_reduce.CHUNK / 98 ** 3
