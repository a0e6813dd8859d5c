"""Issue 13, class 5: bad input ends with exactly one ``hpcinv: error:`` line on stderr and its
exit status, never a traceback, a ``RuntimeWarning`` line or a NumPy scalar repr.

Each case runs the real CLI in a subprocess on a tiny grid (the properties are those of the
process: what reaches stderr, the exit status).
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_cli import _clean_env, run_mpi
from test_cli import run_cli as _run_cli

from hpcinv import config as config_mod

TINY = ["--nx", "16", "--ny", "16", "-q"]


def run_cli(*args, cwd=None, **env):
    """``python -m hpcinv ARGS`` (test_cli's runner) with the environment ``env`` added."""
    return _run_cli(*args, env=_clean_env(**env), **({"cwd": cwd} if cwd else {}))


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
    ("demo", ["--problem", "geothermal3d", "--nx", "100000", "--ny", "100000", "--nz",
              "100000"]),          # invert needs a CONFIG file: demo takes the same options
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
    lbfgs = field_counts(cfg, 2, True, 6)[0]
    cfg.inversion.lbfgs_memory += 1
    assert lbfgs > inv and field_counts(cfg, 2, True, 6)[0] == lbfgs + 2    # 2 fields a pair


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


# --------------------------------------------------------------------------- permeability range

@pytest.mark.parametrize("problem, needle", [
    ("k_barrier = 1e-50", "K = 1e-50 underflows float32"),
    ("k_background = 1e40", "K = 1e+40 overflows float32"),
])
def test_float32_permeability_out_of_range_says_so(tmp_path, problem, needle):
    cfg = toml(tmp_path / "cfg.toml", f'[grid]\nnx = 32\nny = 32\n[solver]\ndtype = "float32"\n'
               f'tol = 1e-5\n[problem]\n{problem}\n')
    p = run_cli("forward", cfg, "-o", tmp_path / "out", "-q")
    line = assert_one_line(p, 2, needle, 'solver.dtype = "float64"')
    assert "cfl" not in line


INVERT = "[grid]\nnx = 16\nny = 16\n[output]\nfigures = false\n[inversion]\niterations = 2\n"


def test_model_overflowing_during_inversion_names_dgamma_and_bounds(tmp_path):
    cfg = toml(tmp_path / "cfg.toml", INVERT + "dgamma = 1000\n")
    p = run_cli("invert", cfg, "-o", tmp_path / "out", "-q")
    # a step of 1000 sends log K to +-1000 (which sign depends on the solves' last bits)
    assert_one_line(p, 2, "iteration 1", "flow float64", "inversion.dgamma (now 1000)",
                    "inversion.logK_min/logK_max")


def test_initial_model_overflowing_is_named(tmp_path):
    cfg = toml(tmp_path / "cfg.toml", INVERT + "initial_logK = 800\n")
    assert_one_line(run_cli("invert", cfg, "-o", tmp_path / "a", "-q"), 2,
                    "inversion.initial_logK = 800", "overflow float64")
    with h5py.File(tmp_path / "m0.h5", "w") as f:
        f["logK"] = np.full((16, 16), -800.0)
    cfg = toml(tmp_path / "cfg.toml", INVERT + 'initial_file = "m0.h5"\n')
    assert_one_line(run_cli("invert", cfg, "-o", tmp_path / "b", "-q"), 2,
                    "inversion.initial_file", "underflow float64")


# --------------------------------------------------------------------------- advice, reprs

@pytest.mark.parametrize("dims, advice", [("4,1", "give at most 3 along x"),
                                          ("0,1", "use fewer ranks, or set dims = [2, 2]")])
def test_decomposition_advice_fits_the_case(tmp_path, dims, advice):
    p = run_mpi(4, "forward", "--nx", "3", "--ny", "64", "--dims", dims, "-o", tmp_path / "o",
                "-q")
    line = assert_one_line(p, 2, "4 ranks for 3 cells", advice)
    assert ("asks for them" in line) == (dims == "4,1")


def test_messages_show_no_numpy_scalar_reprs():
    from hpcinv.errors import HpcinvError, plain
    from hpcinv.model.grid import Grid
    messages = []
    for bad in (lambda: Grid((np.int64(2), 5)),
                lambda: Grid((np.float64(4.0), 5)),
                lambda: config_mod.from_dict({"wells": [{"position": [np.float64(0.1)],
                                                         "rate": 1.0}]}),
                lambda: config_mod.from_dict({"parallel": {"dims": np.array([-1, 2])}}),
                lambda: config_mod.from_dict({"observations": {
                    "points": "grid", "grid": {"x": [0, 1, np.int64(0)], "y": [0, 1, 2]}}})):
        with pytest.raises(HpcinvError) as info:
            bad()
        messages.append(str(info.value))
    for m in messages:
        assert "np." not in m and "array(" not in m, m
    assert config_mod.from_dict({"grid": {"nx": np.int64(20)}}).grid.nx == 20   # accepted
    assert plain({"a": (np.int64(1), [np.float32(0.5)])}) == {"a": (1, [0.5])}


def test_memory_check_on_a_gpu_counts_the_ranks_sharing_it():
    """The device branch without a GPU: a stand-in backend with 10 MB free, two ranks on it."""
    from types import SimpleNamespace

    from mpi4py import MPI

    from hpcinv.app.memory_budget import check_memory
    from hpcinv.backend.cupy_backend import CupyBackend
    from hpcinv.errors import ConfigError
    gpu = SimpleNamespace(device_memory=True, free_memory=lambda: 10**7,
                          ranks_per_device=lambda: 2)
    cfg = config_mod.Config()
    check_memory(cfg, (100, 100), MPI.COMM_SELF, gpu, "forward")        # 2 x 0.8 MB: fits
    with pytest.raises(ConfigError, match=r"GPU memory \(2 rank\(s\) on this GPU x .*, "
                                          r"9.54 MiB free; use a smaller grid"):
        check_memory(cfg, (200, 200), MPI.COMM_SELF, gpu, "inversion", adjoint_memory=6)
    rpd = CupyBackend.ranks_per_device             # node-local rank r uses device r mod n
    uncounted = {"device_sharing": None}           # (counted by PCI bus id: test_gpu_sharing)
    assert rpd(SimpleNamespace(device_id=1, local_size=5, devices=2, **uncounted)) == 2
    assert rpd(SimpleNamespace(device_id=0, local_size=5, devices=2, **uncounted)) == 3
    assert rpd(SimpleNamespace(device_id=0, local_size=1, devices=4, **uncounted)) == 1
