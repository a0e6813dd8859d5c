"""The config fingerprint of an inversion: what a restart must not change.

Everything but :data:`MAY_CHANGE` (iterations, checkpoint frequency, stopping thresholds,
the memory budget (a restart re-uses the warm starts it chose), ``maxiter``, ``[parallel]``,
``[output]``) is written canonically (numbers as floats, data files
by the SHA-256 of their content, so a moved file is fine and an edited one is not) and hashed;
the checkpoint stores both (:mod:`hpcinv.io.checkpoint`), and a restart whose fingerprint differs
fails with one line listing the keys that differ.
"""
from __future__ import annotations

import hashlib
import json

from ..config.schema import PATH_KEYS
from ..errors import ConfigError
from ..io.checkpoint import canonical, rank0

MAY_CHANGE = ("inversion.iterations", "inversion.checkpoint_every", "inversion.misfit_ratio",
              "inversion.step_tol", "inversion.memory", "solver.maxiter", "adjoint.maxiter",
              "parallel.*", "output.*")


def _may_change(key: str) -> bool:
    return any(key == m or (m.endswith(".*") and key.startswith(m[:-1])) for m in MAY_CHANGE)


def _file_digest(path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return "sha256:" + h.hexdigest()


def config_canonical(cfg) -> dict:
    """``{"section.key": canonical value}`` of everything a restart must not change; data
    files (observations, permeability, initial model) by the SHA-256 of their content, so a
    moved file is fine and an edited one is not."""
    files = {f"{s}.{k}": _file_digest(getattr(getattr(cfg, s), k)) for s, k in PATH_KEYS
             if getattr(getattr(cfg, s), k)}
    flat = {}
    for sname, sec in cfg.to_dict().items():
        if sname == "wells":
            flat["wells"] = canonical(sec)
            continue
        for k, v in sec.items():
            key = f"{sname}.{k}"
            if not _may_change(key):
                flat[key] = files[key] if key in files else canonical(v)
    return flat


def config_fingerprint(cfg, comm) -> tuple[str, str, tuple]:
    """``(sha256, canonical JSON, MAY_CHANGE)`` of :func:`config_canonical` (rank 0 hashes the
    data files; every rank gets rank 0's result)."""
    def f():
        text = json.dumps(config_canonical(cfg), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest(), text, MAY_CHANGE
    return rank0(comm, f, "fingerprinting the config", ConfigError)
