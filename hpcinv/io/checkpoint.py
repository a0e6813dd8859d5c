"""Verified checkpoints of an inversion: checked writes, checksums, fallback, config fingerprint.

A checkpoint is published only once it is known complete:

1. it is written (:func:`~hpcinv.io.h5write.write_h5`, every error raised, on every rank) as a
   new *generation* ``checkpoint-<uid>.h5`` (plus its ``.parts-*`` folder in ``vds`` mode);
2. every rank re-reads its own blocks from that file and compares them byte for byte with what
   it meant to write (catches silently lost or fill-valued data after a full disk);
3. the SHA-256 of every dataset is computed from the file in a fixed global order (plane by
   plane along the first axis, planes spread over the ranks, the per-plane digests combined in
   plane order), so it does not depend on how many ranks wrote or read it; rank 0 stores them
   in the attribute ``data_sha256``, closes the file (close/flush errors propagate), re-opens it
   and checks the attribute reads back;
4. only then is it renamed to ``checkpoint.h5``, the previous ``checkpoint.h5`` having become
   ``checkpoint.prev.h5`` (at every moment one complete, verified checkpoint is on disk); the
   parts of older generations are removed.

The scalar state (iteration, the optimiser's JSON scalars, method, grid, config fingerprint) is
covered by the attribute ``state_sha256``. The checkpoint also carries a copy of the history
(``history_jsonl``) so a lost or torn ``history.jsonl`` can be rebuilt.

On restart (:func:`select`) ``checkpoint.h5`` is verified (collectively, the same way) before
anything uses it; if it is unreadable, truncated or fails a checksum the run continues from
``checkpoint.prev.h5`` with a warning (the damaged file is kept as ``checkpoint.damaged.h5``),
and if neither is usable the run stops with one line (:class:`~hpcinv.errors.OutputIOError`,
exit status 4). A checkpoint whose config fingerprint differs from the config of the restart
stops it with one line listing the differing keys (:class:`~hpcinv.errors.ConfigError`).

Every failure here is raised on every rank (the ranks combine their outcomes before leaving).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputIOError
from .h5util import _fsync_dir, _fsync_path, _h5py, write_all

CHECKPOINT = "checkpoint.h5"
PREVIOUS = "checkpoint.prev.h5"
DAMAGED = "checkpoint.damaged.h5"
FORMAT = 2
HISTORY_DATASET = "history_jsonl"
_DIGEST_ATTRS = ("data_sha256", "state_sha256")
SEAL_BY_COPY = 256 << 20      # bytes: larger files are sealed in place
_GEN_RE = re.compile(r"^checkpoint-[0-9a-f]{12}\.h5$")
_PARTS_RE = re.compile(r"^checkpoint(-[0-9a-f]{12})?\.h5\.parts-[0-9a-f]{12}$")
_TMP_RE = re.compile(r"^\.checkpoint(-[0-9a-f]{12})?\.h5\.tmp-[0-9a-f]{12}$")


# --- collective helpers ---------------------------------------------------------------------

def _combine(comm, err, what: str, cls=OutputIOError) -> None:
    """Every rank's outcome of a step: raise ``cls`` on every rank if any rank failed."""
    msgs = comm.allgather(None if err is None else f"{err}")
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if bad:
        r, m = bad[0]
        where = "" if comm.Get_size() == 1 else f" (rank {r})"
        raise cls(f"{what}{where}: {m}")


def rank0(comm, fn, what: str, cls=OutputIOError):
    """Run ``fn`` on rank 0, broadcast its result or its error (raised on every rank)."""
    res, err = None, None
    if comm.Get_rank() == 0:
        try:
            res = fn()
        except Exception as e:   # noqa: BLE001 - re-raised on every rank
            err = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)
    res, err = comm.bcast((res, err), root=0)
    if err is not None:
        raise cls(f"{what}: {err}")
    return res


def checked_write_h5(path, decomp, *args, what=None, **kw):
    """:func:`~hpcinv.io.h5write.write_h5` whose failures (disk full, I/O errors; raised on
    every rank by the writer) become :class:`~hpcinv.errors.OutputIOError` on every rank."""
    from .h5write import write_h5
    try:
        return write_h5(path, decomp, *args, **kw)
    except (OSError, RuntimeError) as e:   # write_h5 raises these on every rank together
        mine = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)
        msgs = decomp.comm.allgather((isinstance(e, OSError), mine))
        first = next((m for is_os, m in msgs if is_os), mine)
        raise OutputIOError(f"writing {what or path} failed: {first}") from None


# --- canonical values, fingerprint -----------------------------------------------------------

def canonical(v):
    """JSON-able, canonical form of a config or attribute value (numbers as floats)."""
    if isinstance(v, np.ndarray):
        return [canonical(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return canonical(v.item())
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        v = float(v)
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): canonical(x) for k, x in sorted(v.items())}
    return repr(v)


def config_differences(saved_json: str, current_json: str) -> list[str]:
    a, b = json.loads(saved_json), json.loads(current_json)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k} ({_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))})")
    return out


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."


# --- digests --------------------------------------------------------------------------------

def state_digest(attrs: dict) -> str:
    """SHA-256 of the root attributes (the scalar/JSON state) other than the digests."""
    plain = {k: canonical(v) for k, v in attrs.items() if k not in _DIGEST_ATTRS}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def _plane_digests(f, path, name, rank, size) -> list:
    """``[(plane, digest)]`` of the planes ``rank, rank + size, ...`` of dataset ``name``."""
    from .h5read import _check_sources
    ds = f[name]
    if ds.is_virtual:
        _check_sources(Path(path), ds, tuple(slice(0, n) for n in ds.shape))
    if ds.ndim == 0:
        return [(0, hashlib.sha256(np.asarray(ds[()]).tobytes()).digest())] if rank == 0 else []
    return [(i, hashlib.sha256(np.ascontiguousarray(ds[i]).tobytes()).digest())
            for i in range(rank, ds.shape[0], size)]


def dataset_digests(path, comm) -> dict:
    """``{name: sha256 hex}`` of every dataset of ``path`` (collective; rank 0 gets the result,
    the other ranks ``None``). Decomposition-independent: per-plane digests along the first
    axis, combined in plane order with the dtype and shape."""
    h5py = _h5py()
    rank, size = comm.Get_rank(), comm.Get_size()
    err, mine, meta = None, {}, None
    try:
        with h5py.File(path, "r") as f:
            meta = {n: (f[n].dtype.str, tuple(f[n].shape)) for n in sorted(f.keys())}
            for n in meta:
                mine[n] = _plane_digests(f, path, n, rank, size)
    except Exception as e:   # noqa: BLE001 - combined below
        err = e if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
    _combine(comm, err, f"reading {Path(path).name}")
    everyone = comm.gather(mine, root=0)
    if rank != 0:
        return None
    out = {}
    for n, (dt, shape) in meta.items():
        planes = sorted(p for d in everyone for p in d.get(n, []))
        h = hashlib.sha256(f"{dt}|{shape}|".encode())
        for _, d in planes:
            h.update(d)
        out[n] = h.hexdigest()
    return out


# --- writing --------------------------------------------------------------------------------

def save(directory, decomp, cells, faces, attrs, to_host=None, replicated=None, history=None,
         fingerprint=None) -> Path:
    """Write, verify and publish ``directory/checkpoint.h5`` (collective; arguments as for
    :func:`~hpcinv.io.h5write.write_h5`). ``history``: the records so far (a copy goes into the
    checkpoint); ``fingerprint``: ``(sha256, canonical JSON)`` of the config. Raises
    :class:`~hpcinv.errors.OutputIOError` on every rank if anything fails; the previous
    checkpoint is then untouched."""
    from .h5items import dataset_items
    directory, comm = Path(directory), decomp.comm
    uid = comm.bcast(uuid.uuid4().hex[:12] if comm.Get_rank() == 0 else None, root=0)
    gen = directory / f"checkpoint-{uid}.h5"
    attrs = dict(attrs or {})
    attrs.update(checkpoint_format=FORMAT, generation=gen.name)
    if fingerprint is not None:
        attrs.update(config_fingerprint=fingerprint[0], config_canonical=fingerprint[1])
    replicated = dict(replicated or {})
    if history is not None:
        text = "".join(json.dumps(r) + "\n" for r in history)
        replicated[HISTORY_DATASET] = np.frombuffer(text.encode(), dtype=np.uint8)
    attrs["state_sha256"] = state_digest(attrs)
    what = f"checkpoint {directory / CHECKPOINT}"
    try:
        checked_write_h5(gen, decomp, cells, faces, attrs, to_host, replicated=replicated,
                         what=what)
        _verify_blocks(gen, decomp, dataset_items(decomp, cells, faces, to_host),
                       replicated if comm.Get_rank() == 0 else {})
        digests = dataset_digests(gen, comm)
        rank0(comm, lambda: _seal(gen, digests, attrs["state_sha256"]),
               f"sealing {what}")
        rank0(comm, lambda: _rotate(directory, gen), f"publishing {what}")
    except OutputIOError as e:
        rank0(comm, lambda: _discard_generation(directory, gen), "cleaning up")
        prev = _describe_existing(directory)
        raise OutputIOError(f"{e}; {prev}; free space (or fix the file system) and continue "
                            f"with: hpcinv invert --restart {directory}") from None
    return directory / CHECKPOINT


def _verify_blocks(path, decomp, items, replicated) -> None:
    """Each rank re-reads the blocks it wrote and compares them byte for byte (one dataset at
    a time: the block downloaded again and its copy read back)."""
    h5py = _h5py()
    err = None
    try:
        with h5py.File(path, "r") as f:
            for it in items:
                back = np.ascontiguousarray(f[it.name][it.selection])
                if back.dtype != it.dtype or not np.array_equal(
                        back.view(np.uint8), it.load().view(np.uint8)):
                    raise OSError(f"dataset {it.name!r} reads back different from what was "
                                  "written (incomplete write: disk full?)")
            for k, v in replicated.items():
                if np.asarray(f[k][()]).tobytes() != np.asarray(v).tobytes():
                    raise OSError(f"dataset {k!r} reads back different from what was written")
    except Exception as e:   # noqa: BLE001 - combined below
        err = e if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
    _combine(decomp.comm, err, f"verifying {Path(path).name}")


def _seal(gen: Path, digests: dict, state: str) -> None:
    """Rank 0: store the dataset digests, close (errors propagate), fsync, re-open, check.

    Up to :data:`SEAL_BY_COPY` bytes (a ``vds`` master, a one-rank file) the attribute is
    added to a copy-on-write view of the file (:class:`~hpcinv.io.cow_file.CopyOnWriteFile`:
    only the pages HDF5 writes are held in memory, whatever the file's size), whose bytes are
    then written page by page by checked ``os.write`` calls to a temporary name and renamed
    onto ``gen`` (HDF5 never writes to the disk itself); larger shared files (``mpio``) are
    updated in place, the flush and close raising on failure."""
    from .cow_file import CopyOnWriteFile
    h5py = _h5py()
    text = json.dumps(digests, sort_keys=True)
    if gen.stat().st_size <= SEAL_BY_COPY:
        with CopyOnWriteFile(gen) as view:
            with h5py.File(view, "r+") as f:
                f.attrs["data_sha256"] = text
            tmp = gen.with_name(f".{gen.name}.tmp-{uuid.uuid4().hex[:12]}")
            try:
                write_all(tmp, view.chunks(), exclusive=True)
                os.replace(tmp, gen)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    else:
        with h5py.File(gen, "r+") as f:
            f.attrs["data_sha256"] = text
            f.flush()
    _fsync_path(gen)
    with h5py.File(gen, "r") as f:
        back = {k: f.attrs[k] for k in f.attrs}
    if canonical(back.get("data_sha256")) != text or state_digest(back) != state:
        raise OSError(f"{gen.name}: attributes read back differently after closing")


def _rotate(directory: Path, gen: Path) -> None:
    """Rank 0: checkpoint.h5 -> checkpoint.prev.h5, generation -> checkpoint.h5, clean up."""
    cur, prev = directory / CHECKPOINT, directory / PREVIOUS
    if cur.exists():
        os.replace(cur, prev)
    os.replace(gen, cur)
    _fsync_dir(directory)
    _cleanup(directory)


def _referenced_parts(master: Path) -> set:
    h5py = _h5py()
    out = set()
    try:
        with h5py.File(master, "r") as f:
            for ds in f.values():
                if getattr(ds, "is_virtual", False):
                    for vs in ds.virtual_sources():
                        out.add(Path(vs.file_name).parts[0])
    except Exception:   # noqa: BLE001 - an unreadable master references nothing we can keep
        pass
    return out


def _cleanup(directory: Path, keep=()) -> None:
    """Remove checkpoint generations, parts folders and temporary masters that no kept file
    (``checkpoint.h5``, ``checkpoint.prev.h5``, ``checkpoint.damaged.h5``, ``keep``) uses."""
    masters = [directory / n for n in (CHECKPOINT, PREVIOUS, DAMAGED)]
    used = set(keep)
    for m in masters:
        if m.exists():
            used |= _referenced_parts(m)
    for p in directory.iterdir():
        if p.name in used:
            continue
        if _PARTS_RE.match(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif _GEN_RE.match(p.name) or _TMP_RE.match(p.name):
            try:
                p.unlink()
            except OSError:
                pass


def _discard_generation(directory: Path, gen: Path) -> None:
    for p in directory.iterdir():
        if p.name == gen.name or p.name.startswith(gen.name + ".parts-") \
                or p.name.startswith(f".{gen.name}.tmp-"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass


def _describe_existing(directory: Path) -> str:
    for name in (CHECKPOINT, PREVIOUS):
        try:
            with _h5py().File(directory / name, "r") as f:
                return f"{name} (iteration {int(f.attrs['iteration'])}) is kept"
        except Exception:   # noqa: BLE001
            continue
    return "no earlier checkpoint exists"


# --- restart --------------------------------------------------------------------------------

def verify(path, comm) -> dict:
    """Verify a checkpoint (collective): readable, state and dataset checksums match. Returns
    its root attributes (plain values) on every rank; raises ``OutputIOError`` on every rank
    with the reason otherwise. A checkpoint without checksums (older hpcinv) is returned with
    ``attrs["_unverified"] = True``."""
    path = Path(path)

    def head():
        if not path.exists():
            raise OSError("missing")
        with _h5py().File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs}
        plain = {k: canonical(v) for k, v in attrs.items()}
        if "checkpoint_format" not in attrs:
            return {**plain, "_unverified": True}
        if state_digest(attrs) != plain.get("state_sha256"):
            raise OSError("its scalar state (iteration, optimiser scalars, config) fails its "
                          "checksum")
        json.loads(plain["scalars"])
        return plain

    attrs = rank0(comm, head, path.name)
    if attrs.get("_unverified"):
        return attrs
    digests = dataset_digests(path, comm)

    def check():
        saved = json.loads(attrs["data_sha256"])
        if set(saved) != set(digests):
            raise OSError(f"datasets {sorted(digests)} differ from the recorded "
                          f"{sorted(saved)}")
        bad = [n for n in sorted(saved) if saved[n] != digests[n]]
        if bad:
            raise OSError(f"dataset(s) {', '.join(bad)} fail their SHA-256 checksum")
    rank0(comm, check, path.name)
    return attrs


def select(directory, comm, fingerprint=None, say=print) -> tuple[Path, dict]:
    """The checkpoint to restart from (collective): ``(path, attrs)``.

    ``checkpoint.h5`` if it verifies, else ``checkpoint.prev.h5`` with a warning (the damaged
    file is renamed ``checkpoint.damaged.h5``); :class:`OutputIOError` if neither does.
    ``fingerprint``: the current config's ``(sha256, canonical JSON, keys that may change)``;
    a verified checkpoint
    with another fingerprint raises :class:`ConfigError` listing the differing keys.
    """
    directory = Path(directory)
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = directory / name
        try:
            attrs = verify(path, comm)
        except OutputIOError as e:
            problems.append(f"{e}")
            continue
        if problems:
            rank0(comm, lambda: _set_aside(directory), "renaming the damaged checkpoint")
            say(f"hpcinv: warning: {problems[0]}; continuing from {name} (iteration "
                f"{int(attrs['iteration'])}); the damaged file is kept as {DAMAGED}")
        elif attrs.get("_unverified"):
            say(f"hpcinv: warning: {name} has no checksums (written by an older hpcinv); "
                "restarting from it unverified")
        if fingerprint is not None and "config_canonical" in attrs \
                and attrs["config_canonical"] != fingerprint[1]:
            diff = config_differences(attrs["config_canonical"], fingerprint[1])
            raise ConfigError(f"restart: the config differs from the one {name} was written "
                              f"with in {'; '.join(diff)}; only {', '.join(fingerprint[2])} may "
                              "change across a restart (start a new run to change the others)")
        return path, attrs
    raise OutputIOError(f"no usable checkpoint in {directory}: " + "; ".join(problems))


def _set_aside(directory: Path) -> None:
    cur = directory / CHECKPOINT
    if cur.exists():
        os.replace(cur, directory / DAMAGED)
        _fsync_dir(directory)


def saved_history(path):
    """The history records stored in a checkpoint (``None`` if it has none)."""
    from .history import parse
    with _h5py().File(path, "r") as f:
        if HISTORY_DATASET not in f:
            return None
        text = np.asarray(f[HISTORY_DATASET][()], dtype=np.uint8).tobytes().decode()
    return parse(text)[0]


def exists(directory) -> bool:
    directory = Path(directory)
    return (directory / CHECKPOINT).exists() or (directory / PREVIOUS).exists()
