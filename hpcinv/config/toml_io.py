"""TOML side of the run configuration: data-file path resolution and writing a
:class:`~hpcinv.config.Config` back as TOML text (:func:`dumps`, :func:`save`)."""
from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

from .schema import PATH_KEYS

if TYPE_CHECKING:
    from .schema import Config


def resolve_paths(cfg: Config, base) -> Config:
    """Make the relative data-file paths of ``cfg`` absolute, relative to directory ``base``."""
    for sname, key in PATH_KEYS:
        sec = getattr(cfg, sname)
        v = getattr(sec, key)
        if v:
            v = os.path.expanduser(v)
            setattr(sec, key, v if os.path.isabs(v) else os.path.abspath(os.path.join(base, v)))
    return cfg


def save(cfg: Config, path) -> None:
    """Write ``cfg`` as UTF-8 TOML to ``path`` (the config a run directory records)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(dumps(cfg))


def dumps(cfg: Config) -> str:
    """The config as TOML text (the resolved config written next to the results)."""
    lines = []
    for sname, sec in cfg.to_dict().items():
        if sname == "wells":
            for w in sec:
                lines.append("[[wells]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in w.items()]
                lines.append("")
            continue
        lines.append(f"[{sname}]")
        for k, v in sec.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k) -> str:
    k = str(k)
    return k if _BARE_KEY.match(k) else _toml_value(k)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _escape(c: str) -> str:
    """One character of a TOML basic string: quote, backslash and every control character
    (U+0000-U+001F, U+007F, which TOML forbids raw) escaped, so a path holding them reloads."""
    if c in _ESCAPES:
        return _ESCAPES[c]
    return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + "".join(_escape(c) for c in v) + '"'
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return str(v)
