"""``history.jsonl`` of an inversion: one JSON object per outer iteration, written by rank 0.

Writes are checked: every line is written, flushed and fsynced, and a failure (disk full) raises
:class:`~hpcinv.errors.OutputIOError` on every rank (rank 0 broadcasts the outcome).

Reading for a restart (:meth:`History.resume`) is tolerant of what a crash leaves behind:

* a torn last line (killed mid-write) is dropped, with a notice;
* lines beyond the checkpoint's iteration (written after it) are dropped, as before;
* a missing, unreadable or too short history is rebuilt from the copy of the history every
  checkpoint carries (see :mod:`hpcinv.io.checkpoint`), saying so; with no copy (a checkpoint
  of an older hpcinv) a missing history is an error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import OutputIOError

NAME = "history.jsonl"


def parse(text: str) -> tuple[list[dict], list[str]]:
    """``(records, problems)``: the records of a JSON-lines text; an unparsable *last* line is
    dropped (a torn write) and reported in ``problems``; an unparsable line before it raises
    ``ValueError`` (the file is damaged, not torn)."""
    lines = text.split("\n")
    records, problems = [], []
    for k, s in enumerate(lines):
        if not s.strip():
            continue
        last = all(not t.strip() for t in lines[k + 1:])
        try:
            rec = json.loads(s)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if last:
                problems.append(f"dropped a torn last line ({len(s)} bytes: {e})")
                break
            raise ValueError(f"line {k + 1} is not valid JSON: {e}") from None
        records.append(rec)
    if text and not text.endswith("\n") and not problems and records:
        problems.append("the last line had no newline (kept: it is complete JSON)")
    return records, problems


class History:
    """The run's history (``lines``: the records), appended by rank 0 with checked writes."""

    def __init__(self, path, comm, lines=None, _write=True):
        self.path, self.comm, self.rank0 = Path(path), comm, comm.Get_rank() == 0
        self.lines: list[dict] = list(lines or [])
        if _write:
            self._collective(self._rewrite, f"writing {self.path}")

    @classmethod
    def resume(cls, path, comm, keep: int, saved=None, say=print) -> "History":
        """The history for a restart at ``keep - 1`` iterations: ``path`` read tolerantly, or
        ``saved`` (the checkpoint's copy, a list of records) when ``path`` is missing, damaged
        or too short. Rewrites ``path`` with exactly ``keep`` records (collective)."""
        path = Path(path)
        msg, lines = None, None
        if comm.Get_rank() == 0:
            lines, msg = _resume_lines(path, keep, saved)
        lines, msg = comm.bcast((lines, msg), root=0)
        if lines is None:
            raise OutputIOError(msg)
        if msg:
            say(f"hpcinv: note: {path.name}: {msg}")
        return cls(path, comm, lines)

    def _collective(self, fn, what):
        err = None
        if self.rank0:
            try:
                fn()
            except OSError as e:
                err = f"{what} failed: {e}"
        err = self.comm.bcast(err, root=0)
        if err:
            raise OutputIOError(err)

    def _rewrite(self):
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _append_line(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self):
        """Write :attr:`lines` anew (collective), e.g. after amending the last record."""
        self._collective(self._rewrite, f"writing {self.path}")

    def append(self, record: dict):
        """Append a record (collective: the write's outcome is broadcast from rank 0)."""
        self.lines.append(record)
        self._collective(lambda: self._append_line(record), f"appending to {self.path}")


def _resume_lines(path: Path, keep: int, saved):
    """Rank 0: ``(lines, message)``; ``lines`` is ``None`` when nothing usable exists."""
    notes, lines = [], None
    try:
        lines, problems = parse(path.read_text())
        notes += problems
    except FileNotFoundError:
        notes.append("missing")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        notes.append(f"unreadable ({e})")
    if lines is not None and len(lines) >= keep:
        if len(lines) > keep:
            notes.append(f"dropped {len(lines) - keep} line(s) written after the checkpoint")
        return lines[:keep], "; ".join(n for n in notes if "no newline" not in n)
    if saved is not None and len(saved) >= keep:
        have = "missing" if lines is None else f"has {len(lines)} of {keep} lines"
        return saved[:keep], (f"{'; '.join(notes) or have}: rebuilt the first {keep} lines from "
                              "the checkpoint's copy")
    if lines is None:
        return None, (f"restart: {path} is {'; '.join(notes)} and the checkpoint carries no "
                      f"copy of it (written by an older hpcinv); restore the file or start a "
                      f"new run")
    return lines, "; ".join(notes + [f"has {len(lines)} of {keep} lines (continuing)"])
