"""Issue 13, class 5: bad input ends with exactly one ``hpcinv: error:`` line on stderr and its
exit status, never a traceback, a ``RuntimeWarning`` line or a NumPy scalar repr.

Each case runs the real CLI in a subprocess on a tiny grid (the properties are those of the
process: what reaches stderr, the exit status).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinv import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--nx", "16", "--ny", "16", "-q"]


def run_cli(*args, cwd=None, **env):
    """``python -m hpcinv ARGS`` with the environment ``env`` added; the completed process."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPI_LOCAL"))}
    e.setdefault("HPCINV_NUM_THREADS", "1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    e.update(env)
    return subprocess.run([sys.executable, "-m", "hpcinv", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300, env=e)


def assert_one_line(p, code=2, *needles):
    """Exit status ``code``, one stderr line ``hpcinv: error: ...`` holding every needle, and
    none of the forbidden texts anywhere in the output."""
    lines = p.stderr.splitlines()
    assert p.returncode == code, p.stderr
    assert len(lines) == 1 and lines[0].startswith("hpcinv: error: "), p.stderr
    for bad in ("Traceback", "RuntimeWarning", "np.int64(", "np.float64(", "np.float32("):
        assert bad not in p.stderr + p.stdout, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- config files

@pytest.mark.parametrize("kind", ["binary", "directory", "latin1"])
def test_unreadable_config_is_one_line(tmp_path, kind):
    cfg = tmp_path / "cfg.toml"
    if kind == "binary":
        cfg.write_bytes(bytes(range(256)) * 4)
    elif kind == "latin1":
        cfg.write_bytes("[output]\ndir = \"r\u00e9sultats\"\n".encode("latin-1"))
    else:
        cfg.mkdir()
    p = run_cli("forward", cfg, "-o", tmp_path / "out", *TINY)
    line = assert_one_line(p, 2, str(cfg))
    assert ("is a directory" in line) if kind == "directory" else ("not UTF-8" in line)


def test_config_with_utf8_bom_is_accepted(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_bytes(b"\xef\xbb\xbf[grid]\nnx = 16\nny = 16\n")
    assert config_mod.load(cfg).grid.nx == 16


# --------------------------------------------------------------------------- memory

@pytest.mark.parametrize("cmd, sizes", [
    ("forward", ["--nx", "1000000", "--ny", "1000000"]),
    ("gradient", ["--nx", "100000000000", "--ny", "100000000000"]),      # > 2**63 bytes
    ("invert", ["--problem", "geothermal3d", "--nx", "100000", "--ny", "100000", "--nz",
                "100000"]),
])
def test_grid_too_large_for_memory_is_one_line(tmp_path, cmd, sizes):
    p = run_cli(cmd, *sizes, "-o", tmp_path / "out")
    assert_one_line(p, 2, "memory", "available", "smaller grid (grid.nx")
    assert not (tmp_path / "out" / "fields.h5").exists()


def test_memory_estimate_counts_ranks_and_dtype():
    from hpcinv.app.memory import block_cells, field_counts
    cfg = config_mod.Config()
    assert block_cells((10, 7), 1) == 12 * 9
    assert block_cells((10, 7), 4, [2, 2]) == 7 * 6           # the largest block, padded
    assert block_cells((10**12, 10**12), 1) == (10**12 + 2) ** 2      # Python ints
    fwd, host = field_counts(cfg, 2, False)
    inv, host_inv = field_counts(cfg, 2, True, adjoint_memory=6)
    assert fwd == 10 and inv > fwd and host_inv > host
    cfg.inversion.method = "lbfgs"
    assert field_counts(cfg, 2, True, 6)[0] == inv + 2 * cfg.inversion.lbfgs_memory


# --------------------------------------------------------------------------- observations

def _obs_config(tmp_path, obs_file) -> Path:
    return toml(tmp_path / "cfg.toml", f'[grid]\nnx = 16\nny = 16\n[observations]\n'
                f'points = "file"\nfile = "{obs_file.name}"\n')


@pytest.mark.parametrize("what", ["group", "bytes", "vlen-str", "values-group"])
def test_observation_h5_not_numeric_names_the_file(tmp_path, what):
    path = tmp_path / "obs.h5"
    with h5py.File(path, "w") as f:
        if what == "group":
            f.create_group("points")
        elif what == "bytes":
            f["points"] = np.array([[b"a", b"b"]])
        elif what == "vlen-str":
            f["points"] = np.array([["0.1", "0.2"]], dtype=h5py.string_dtype())
        else:
            f["points"] = np.array([[0.1, 0.2]])
            f.create_group("values")
    p = run_cli("gradient", _obs_config(tmp_path, path), "-o", tmp_path / "out", "-q")
    name = "values" if what == "values-group" else "points"
    line = assert_one_line(p, 2, "observations.file", str(path), repr(name))
    assert ("group" in line) if "group" in what else ("not numeric" in line)


def test_observation_csv_with_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text("x,y,value\n0.3,0.4,1.0\n0.6,0.5,2.0\n", encoding="utf-8-sig")
    p = run_cli("gradient", _obs_config(tmp_path, path), "-o", tmp_path / "out", "-q")
    assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / "out" / "gradient.h5") as f:
        assert int(f.attrs["observations"]) == 2


# --------------------------------------------------------------------------- paths

CONTROL = "a\tb\nc\x01d\x1b\x7fe\"f\\g"


def test_control_characters_in_paths_round_trip(tmp_path):
    out = tmp_path / f"run{CONTROL}"
    p = run_cli("forward", "-o", out, *TINY)
    assert p.returncode == 0, p.stderr
    assert config_mod.load(out / "config.toml").output.dir == str(out)
    cfg = config_mod.Config()
    cfg.observations.file = f"/data/obs{CONTROL}.csv"
    text = config_mod.dumps(cfg)
    again = config_mod.tomllib.loads(text)
    assert again["observations"]["file"] == cfg.observations.file


def test_error_naming_a_path_with_a_newline_stays_one_line(tmp_path):
    missing = tmp_path / "no\nsuch.toml"
    p = run_cli("forward", missing, *TINY)
    assert_one_line(p, 2, "config file not found", "no\\nsuch.toml")


def test_path_that_is_not_utf8_is_refused_before_any_work(tmp_path):
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    p = run_cli("forward", "-o", out, *TINY)
    assert_one_line(p, 2, "output.dir", "not valid UTF-8")


# --------------------------------------------------------------------------- environment

@pytest.mark.parametrize("env, needle", [
    ({"HPCINV_NUM_THREADS": "abc"}, "HPCINV_NUM_THREADS"),
    ({"HPCINV_NUM_THREADS": "", "OMP_NUM_THREADS": "0,2"}, "OMP_NUM_THREADS must be >= 1"),
    ({"HPCINV_H5_MODE": "bogus"}, "HPCINV_H5_MODE"),
    ({"HPCINV_CXXFLAGS": "-fhpcinv-no-such-flag"}, ".log"),
])
def test_bad_environment_is_one_line(tmp_path, env, needle):
    if "HPCINV_CXXFLAGS" in env:          # the failed build's log goes to a cache of its own
        env = {**env, "HPCINV_CACHE_DIR": str(tmp_path / "cache")}
    p = run_cli("forward", "-o", tmp_path / "out", *TINY, **env)
    assert_one_line(p, 2, needle)


def test_omp_num_threads_list_takes_the_first_level(tmp_path):
    p = run_cli("forward", "-o", tmp_path / "out", *TINY, HPCINV_NUM_THREADS="",
                OMP_NUM_THREADS="2,1")
    assert p.returncode == 0 and not p.stderr, p.stderr
