"""Small inversion configs shared by the inversion, checkpoint and run-lock tests."""
from __future__ import annotations

import json


def small_config(tmp_path, regularisation=None, iterations=8, **inversion):
    """A 63 x 31 geothermal2d inversion config file in ``tmp_path`` (``[inversion]`` keys as
    keyword arguments; ``regularisation``: a dict of ``[regularisation]`` keys)."""
    inversion = {"iterations": iterations, **inversion}
    lines = ["[grid]", "nx = 63", "ny = 31", "[inversion]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in inversion.items()]
    lines += ["[regularisation]"] + [f"{k} = {v}" for k, v in (regularisation or {}).items()]
    path = tmp_path / "small.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
