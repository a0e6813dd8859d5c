"""Run-directory ownership (issue 13): whose run a directory holds, what that run owns, and
what a new ``forward``/``gradient``/``invert`` may do with it.

Every run records itself in ``DIR/.hpcinv-run.json`` (:data:`RECORD`) before it does any work::

    {"command": "invert", "fingerprint": <config sha256>, "started": "2026-...Z",
     "by": "hpcinv 0.1.0", "argv": "hpcinv invert run.toml -o DIR", "owns": [<patterns>]}

``owns`` is the manifest: the names (shell patterns, relative to ``DIR``) the command writes,
:data:`COMMON` plus :data:`OWNED` of its kind (``demo`` is an ``invert``). Only files that match
it are ever removed; anything else in the directory (a job log, notes, the input config under
another name) is never touched and never blocks a run. The rules, decided by rank 0 after the
lock is taken (:func:`claim`):

* no record, nothing hpcinv writes there (missing, empty, or foreign files only): a new run;
* no record but files with hpcinv's names (an older hpcinv's run, someone else's files):
  refused, also with ``--overwrite`` (hpcinv deletes only what it recorded as its own), except
  ``invert --restart`` of a directory with a checkpoint (runs older than the record);
* another command's record: refused, also with ``--overwrite``;
* the same command: ``--restart`` continues from the checkpoint, or starts from the beginning
  with the directory's ``config.toml`` where there is none yet (interrupted before it);
  ``--overwrite`` removes the old run's files first; a plain rerun is accepted where the old
  run has no result yet (no checkpoint / ``fields.h5`` / ``gradient.h5``) and the same config
  fingerprint (an interrupted start), otherwise refused with the options that work.

A failure while the run is still being set up (bad input found while building, no compiler)
undoes the claim (:meth:`Claim.setup`), so the corrected rerun finds the directory as it was;
an interrupt keeps it, recognisably unstarted.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..errors import Interrupted, OutputDirError, OutputIOError
from ..io import checkpoint as ckpt
from ..io.rundir import LOCK_NAME, signals_held
from . import interrupt
from .plot import FIGURES

RECORD = ".hpcinv-run.json"


def _h5(name: str) -> list[str]:
    """An HDF5 output: the file, its ``vds`` parts folder, its temp file, its XDMF sidecar."""
    return [name, f"{name}.parts-*", f".{name}.tmp-*", name[:-3] + ".xmf"]


COMMON = ["config.toml", "memory.json", RECORD, f"{RECORD}.tmp-*", interrupt.STOP_RECORD,
          f"{interrupt.STOP_RECORD}.tmp-*"]
OWNED = {
    "forward": [*_h5("fields.h5"), "figures/fields.png"],          # hpcinv plot DIR
    "gradient": [*_h5("gradient.h5"), "figures/gradient.png"],
    "invert": [*_h5("setup.h5"), "history.jsonl", "history.jsonl.tmp", *_h5("checkpoint.h5"),
               *_h5("checkpoint.prev.h5"), *_h5("checkpoint.damaged.h5"),
               *_h5("checkpoint-*.h5"), *_h5("model_latest.h5"), *_h5("model_final.h5"),
               *(f"figures/{f}" for f in FIGURES)],
}
RESULT = {"forward": "fields.h5", "gradient": "gradient.h5"}     # invert: a checkpoint


def owns(kind: str) -> list[str]:
    return COMMON + OWNED[kind]


def _entries(path: Path) -> list[Path]:
    """What ``path`` holds, its lock (and a lock being taken over) aside."""
    return sorted(p for p in path.iterdir() if not p.name.startswith(LOCK_NAME))


def owned_files(path: Path, patterns) -> list[Path]:
    """The files and folders in ``path`` that ``patterns`` name (``figures/x.png``: inside);
    patterns that would leave ``path`` (absolute, ``..``) are ignored."""
    out = []
    for pat in patterns:
        if not isinstance(pat, str) or pat.startswith("/") or ".." in pat.split("/"):
            continue
        parent, _, name = pat.rpartition("/")
        where = path / parent if parent else path
        if where.is_dir():
            out += [p for p in where.iterdir() if fnmatch.fnmatchcase(p.name, name)]
    return sorted(set(out))


def read_record(path: Path):
    """The run record of ``path`` (a dict), ``None`` if there is none; OutputDirError if it is
    unreadable."""
    try:
        rec = json.loads((path / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputDirError(f"{path / RECORD} is unreadable ({exc}); if the run in {path} is "
                             f"yours to replace, delete that file") from None
    if not isinstance(rec, dict) or "command" not in rec:
        raise OutputDirError(f"{path / RECORD} is not a run record; delete it if the run in "
                             f"{path} is yours to replace")
    return rec


def has_result(path: Path, kind: str) -> bool:
    return ckpt.exists(path) if kind == "invert" else (path / RESULT[kind]).exists()


def _names(paths, n=3) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def decide(path: Path, kind: str, fingerprint: str, overwrite=False, restart=False) -> str:
    """The mode of a run of ``kind`` in ``path`` (rank 0): ``new``, ``rerun``, ``overwrite``,
    ``continue`` or ``scratch`` (restart without a checkpoint); OutputDirError if refused."""
    if not path.is_dir():
        return "new"
    rec = read_record(path)
    if rec is None:
        ours = owned_files(path, sorted({p for k in OWNED for p in owns(k)}))
        if restart and ckpt.exists(path):
            return "continue"            # a run from before run records
        if restart:
            raise OutputDirError(f"--restart {path}: no checkpoint and no run record there "
                                 f"(not a run directory of hpcinv invert)")
        if ours:
            raise OutputDirError(
                f"output directory {path} holds {_names(ours)} but no run record ({RECORD}): "
                f"files of an older hpcinv or of someone else, which hpcinv does not delete, "
                f"not even with --overwrite; move them away or choose another --output")
        return "new"
    other = rec.get("command")
    if other != kind:
        raise OutputDirError(
            f"output directory {path} holds a run of hpcinv {other}; hpcinv {kind} does not "
            f"write into another command's run directory, not even with --overwrite: choose "
            f"another --output (or delete {path})")
    done = has_result(path, kind)
    if restart:
        return "continue" if done else "scratch"
    if overwrite:
        return "overwrite"
    if not done and rec.get("fingerprint") == fingerprint:
        return "rerun"
    if kind == "invert":
        what = "an inversion with a checkpoint" if done else \
            "an unstarted inversion of another config (no checkpoint)"
        raise OutputDirError(f"output directory {path} holds {what}; use --restart {path} to "
                             f"continue it or --overwrite to replace it")
    what = f"a finished {kind} run" if done else f"an unfinished {kind} run of another config"
    raise OutputDirError(f"output directory {path} holds {what}; use --overwrite to replace it "
                         f"or choose another --output")


def remove(paths) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    for d in {p.parent for p in paths}:          # figures/ once its figures are gone
        if d.name == "figures":
            try:
                d.rmdir()
            except OSError:
                pass


def write_record(path: Path, kind: str, fingerprint: str) -> None:
    """Write ``path``'s run record atomically (temp file, rename)."""
    rec = {"command": kind, "fingerprint": fingerprint,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "by": f"hpcinv {__version__}", "argv": " ".join(["hpcinv", *sys.argv[1:]]),
           "owns": owns(kind)}
    tmp = path / f"{RECORD}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp, path / RECORD)


NOTES = {"rerun": "{path} holds an unstarted {kind} run of the same config (interrupted before "
                  "its first result): starting it again",
         "overwrite": "--overwrite: removed {n} file(s) of the previous {kind} run in {path}",
         "scratch": "--restart {path}: no checkpoint yet (interrupted before the first one): "
                    "starting from iteration 0 with its config.toml"}


class Claim:
    """A run's hold on its directory (every rank has one; rank 0 does the file work).

    ``mode``: as :func:`decide` returns. ``config_text``: written as ``config.toml`` with the
    record (the inversion's config, before any work; ``None``: the command writes it later).
    """

    def __init__(self, path, kind, fingerprint, comm, *, overwrite=False, restart=False,
                 config_text=None, note=None):
        self.path, self.kind, self.comm = Path(path), kind, comm
        note = note or (lambda s: print(s, file=sys.stderr, flush=True))
        result = None
        if comm.Get_rank() == 0:
            try:
                with signals_held():               # never half cleared, never half recorded
                    result = ("ok", self._take(fingerprint, overwrite, restart, config_text))
            except OutputDirError as exc:
                result = ("bad", str(exc))
            except OSError as exc:
                result = ("io", f"cannot prepare the run directory {self.path}: {exc}")
        kind_, value = comm.bcast(result, root=0)
        if kind_ != "ok":
            raise (OutputDirError if kind_ == "bad" else OutputIOError)(value)
        self.mode, message = value
        if message and comm.Get_rank() == 0:
            note(f"hpcinv: note: {message}")
        interrupt.advise(self.advice, self.path)    # every rank

    def _take(self, fingerprint, overwrite, restart, config_text):
        mode = decide(self.path, self.kind, fingerprint, overwrite, restart)
        old = []
        if mode in ("rerun", "overwrite", "scratch"):
            rec = read_record(self.path)
            old = owned_files(self.path, rec.get("owns") or owns(self.kind))
            if mode == "scratch":                # its config is the restart's config
                old = [p for p in old if p.name not in ("config.toml", RECORD)]
            remove(old)
        if mode != "continue" and mode != "scratch":
            write_record(self.path, self.kind, fingerprint)
            if config_text is not None:
                (self.path / "config.toml").write_text(config_text, encoding="utf-8")
        elif read_record(self.path) is None:     # a restart of a run from before records
            write_record(self.path, self.kind, fingerprint)
        interrupt.advise(self.advice, self.path)   # before a held signal is raised again
        msg = NOTES.get(mode, "").format(path=self.path, kind=self.kind, n=len(old))
        return mode, msg

    def advice(self) -> str:
        """What works after an interrupt now (for :func:`hpcinv.app.interrupt.advice`)."""
        if self.kind == "invert":
            if ckpt.exists(self.path):
                return f"continue with: hpcinv invert --restart {self.path}"
            return (f"no checkpoint yet: hpcinv invert --restart {self.path} (or the same "
                    f"command again) starts it from the beginning")
        if has_result(self.path, self.kind):
            return f"{self.path} holds the result; rerun with --overwrite to compute it again"
        return f"nothing computed yet: run the same command again (it reuses {self.path})"

    def rollback(self) -> None:
        """Remove what this run wrote (rank 0), where it has no result: the directory is as if
        the run never started (foreign files untouched)."""
        if self.mode in ("continue", "scratch") or self.comm.Get_rank() != 0:
            return
        try:
            if not has_result(self.path, self.kind):
                remove(owned_files(self.path, owns(self.kind)))
        except OSError:
            pass

    @contextmanager
    def setup(self):
        """The set-up phase: an error in it (not an interrupt) undoes the claim."""
        try:
            yield
        except Interrupted:
            raise
        except BaseException:
            self.rollback()
            raise


def claim(directory, kind: str, cfg, comm, **kw) -> Claim:
    """Take ``directory`` for a run of ``kind`` with config ``cfg`` (collective; after the
    lock): see the module docstring. Keyword arguments as for :class:`Claim`."""
    from .fingerprint import config_fingerprint
    return Claim(directory, kind, config_fingerprint(cfg, comm)[0], comm, **kw)
