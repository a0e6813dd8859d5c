"""The command line: ``hpcinv forward`` output, ``hpcinv info``, and one-line errors (exit 2).

Most cases run the CLI as a separate process (``python -m hpcinv``), because "no traceback,
one line on stderr, exit status 2" is a property of the real process. Grids are tiny so the
whole module takes a few seconds. Multi-rank cases launch ``mpiexec`` as a subprocess from
this (serial) pytest run; they are skipped, with the reason, where no ``mpiexec`` exists.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinv import config as config_mod
from hpcinv.app.resolve import resolved
from hpcinv.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL_2D = ["--nx", "31", "--ny", "17"]
SMALL_3D = ["--problem", "geothermal3d", "--nx", "13", "--ny", "11", "--nz", "9"]


def _clean_env(**extra) -> dict:
    """The environment for a child process: no MPI/PMI variables inherited from a launcher."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPI_LOCAL"))}
    env.setdefault("HPCINV_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_cli(*args, env=None, timeout=120, cwd=ROOT):
    """Run ``python -m hpcinv ARGS`` and return the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", "hpcinv", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else _clean_env())


class _Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_main(capsys, *args):
    """Run ``hpcinv.app.cli.main(ARGS)`` in this process; same result object as :func:`run_cli`."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return _Proc(code, out.out, out.err)


def mpiexec() -> str | None:
    """The ``mpiexec`` beside this Python (the mpich wheel's), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def run_mpi(n: int, *args, timeout=180):
    exe = mpiexec()
    if exe is None:
        pytest.skip("no mpiexec found (pip install mpich, or load the cluster's MPI)")
    return subprocess.run([exe, "-n", str(n), sys.executable, "-m", "hpcinv", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=_clean_env())


def assert_one_line_error(proc, *needles):
    """Exit status 2, exactly one stderr line ``hpcinv: error: ...``, no traceback."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpcinv: error: "), err
    for n in needles:
        if isinstance(n, re.Pattern):
            assert n.search(lines[0]), (n.pattern, lines[0])
        else:
            assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def read_fields(path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:          # the fields (not the xdmf/ views)
        return {k: f[k][...] for k in f if isinstance(f[k], h5py.Dataset)}, dict(f.attrs)


# --------------------------------------------------------------------------- forward output

def test_forward_2d_writes_global_fields_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["forward", *SMALL_2D, "--tol", "1e-6", "--output", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "converged after" in stdout

    data, attrs = read_fields(out / "fields.h5")
    nx, ny = 31, 17
    assert data["Pf"].shape == (nx, ny)
    assert data["K"].shape == (nx, ny)
    assert data["qx"].shape == (nx + 1, ny)
    assert data["qy"].shape == (nx, ny + 1)
    assert "qz" not in data
    assert int(attrs["iterations"]) > 0
    assert 0 <= float(attrs["residual"]) < 1e-6
    assert bool(attrs["converged"])
    for name, arr in data.items():
        assert np.all(np.isfinite(arr)), name
    # no-flux walls: the boundary faces carry exactly zero flux
    assert np.all(data["qx"][[0, -1], :] == 0) and np.all(data["qy"][:, [0, -1]] == 0)
    # K: background 1 with the low-permeability barrier
    assert data["K"].max() == 1.0 and data["K"].min() == pytest.approx(1e-6)

    # the exact config used (every default resolved, issue 13) reloads to the same config
    reloaded = config_mod.load(out / "config.toml")
    expected = resolved(config_mod.from_dict({"grid": {"nx": nx, "ny": ny}, "solver": {
        "tol": 1e-6}, "output": {"dir": str(out)}}))
    assert reloaded == expected
    assert reloaded.solver.cfl == 0.95 / np.sqrt(2) and reloaded.solver.maxiter == 1000 * nx
    # and running from that file reproduces the fields bitwise
    out2 = tmp_path / "rerun"
    assert main(["forward", str(out / "config.toml"), "-q", "--output", str(out2)]) == 0
    data2, attrs2 = read_fields(out2 / "fields.h5")
    assert int(attrs2["iterations"]) == int(attrs["iterations"])
    for k in data:
        assert np.array_equal(data[k], data2[k]), k


def test_forward_3d_shapes(tmp_path):
    out = tmp_path / "run3d"
    assert main(["forward", *SMALL_3D, "--tol", "1e-6", "-q", "-o", str(out)]) == 0
    data, attrs = read_fields(out / "fields.h5")
    nx, ny, nz = 13, 11, 9
    assert data["Pf"].shape == (nx, ny, nz)
    assert data["K"].shape == (nx, ny, nz)
    assert data["qx"].shape == (nx + 1, ny, nz)
    assert data["qy"].shape == (nx, ny + 1, nz)
    assert data["qz"].shape == (nx, ny, nz + 1)
    assert int(attrs["iterations"]) > 0 and float(attrs["residual"]) < 1e-6
    cfg = config_mod.load(out / "config.toml")
    assert cfg.problem.name == "geothermal3d"
    assert (cfg.grid.nx, cfg.grid.ny, cfg.grid.nz) == (nx, ny, nz)


def test_forward_from_config_file_with_cli_overrides(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[problem]\nname = "geothermal2d"\n[grid]\nnx = 99\nny = 99\n'
                   '[solver]\ntol = 1e-5\nncheck = 50\nfirst_check = 50\n[output]\n'
                   'dir = "ignored"\n')
    out = tmp_path / "o"
    assert main(["forward", str(cfg), "--nx", "15", "--ny", "9", "-q", "-o", str(out)]) == 0
    data, attrs = read_fields(out / "fields.h5")
    assert data["Pf"].shape == (15, 9)
    assert int(attrs["iterations"]) % 50 == 0
    used = config_mod.load(out / "config.toml")
    assert (used.grid.nx, used.grid.ny, used.solver.ncheck, used.solver.first_check) == (
        15, 9, 50, 50)
    assert used.output.dir == str(out)


def test_forward_not_converged_exits_1_but_writes(tmp_path):
    out = tmp_path / "short"
    proc = run_cli("forward", *SMALL_2D, "--maxiter", "20", "--ncheck", "10", "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "NOT converged" in proc.stdout
    assert "warning" in proc.stderr and "maxiter" in proc.stderr
    _, attrs = read_fields(out / "fields.h5")
    assert int(attrs["iterations"]) == 20 and not bool(attrs["converged"])


def test_python_dash_m_and_console_script_agree(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    proc = run_cli("forward", *SMALL_2D, "--tol", "1e-5", "-q", "-o", a)
    assert proc.returncode == 0, proc.stderr
    exe = shutil.which("hpcinv")
    if exe is None:
        pytest.skip("the hpcinv console script is not on PATH (package not pip-installed)")
    proc = subprocess.run([exe, "forward", *SMALL_2D, "--tol", "1e-5", "-q", "-o", str(b)],
                          capture_output=True, text=True, timeout=120, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    da, _ = read_fields(a / "fields.h5")
    db, _ = read_fields(b / "fields.h5")
    assert all(np.array_equal(da[k], db[k]) for k in da)


# --------------------------------------------------------------------------- several ranks

@pytest.mark.parametrize("nranks, args", [(2, SMALL_2D), (3, SMALL_3D)],
                         ids=["2d-2ranks", "3d-3ranks-uneven"])
def test_mpiexec_forward_is_bitwise_identical_to_one_rank(tmp_path, nranks, args):
    one, many = tmp_path / "one", tmp_path / "many"
    proc = run_cli("forward", *args, "--tol", "1e-7", "-q", "-o", one)
    assert proc.returncode == 0, proc.stderr
    proc = run_mpi(nranks, "forward", *args, "--tol", "1e-7", "-o", many)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # only rank 0 prints: one header line, one summary line
    assert proc.stdout.count("hpcinv forward:") == 1, proc.stdout
    assert proc.stdout.count("converged after") == 1, proc.stdout
    d1, a1 = read_fields(one / "fields.h5")
    dn, an = read_fields(many / "fields.h5")
    assert "ranks" not in an and "ranks" not in a1   # content independent of the rank count
    assert int(an["iterations"]) == int(a1["iterations"])
    assert float(an["residual"]) == float(a1["residual"])
    assert sorted(d1) == sorted(dn)
    for k in d1:
        assert np.array_equal(d1[k], dn[k]), k


def test_more_ranks_than_cells_is_a_one_line_error(tmp_path):
    proc = run_mpi(4, "forward", "--nx", "3", "--ny", "3", "--dims", "4,1", "-o", tmp_path)
    assert_one_line_error(proc, "more ranks than cells", "4 ranks", "3 cells")


def test_dims_not_matching_ranks_under_mpiexec(tmp_path):
    proc = run_mpi(2, "forward", *SMALL_2D, "--dims", "3,1", "-o", tmp_path)
    assert_one_line_error(proc, "dims", "2 MPI rank")


# --------------------------------------------------------------------------- bad input

def _toml(tmp_path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def test_unknown_config_key_names_closest(tmp_path):
    p = _toml(tmp_path, "[problem]\nk_barier = 1e-3\n")
    line = assert_one_line_error(run_cli("forward", p, "-o", tmp_path), "unknown key",
                                 "problem.k_barier")
    assert "did you mean 'k_barrier'" in line


def test_unknown_config_section_names_closest(tmp_path, capsys):
    p = _toml(tmp_path, "[solvr]\ntol = 1e-6\n")
    line = assert_one_line_error(run_main(capsys, "forward", p, "-o", tmp_path),
                                 "unknown section")
    assert "did you mean 'solver'" in line


@pytest.mark.parametrize("args, needles", [
    (["--nx", "2"], ["nx", ">= 3"]),
    (["--problem", "geothermal3d", "--nx", "5", "--ny", "5", "--nz", "1"], ["nz", ">= 3"]),
    (["--dims", "2,2"], ["dims", "multiply to 4", "1 MPI rank"]),
    (["--dims", "2,x"], ["--dims"]),
    (["--problem", "geothermal2"], ["unknown problem", "did you mean 'geothermal2d'"]),
    (["--backend", "gpu"], ["unknown backend"]),
    (["--cfl", "1.5"], ["cfl"]),
    (["--tol", "0"], ["tol"]),
    (["--nz", "5"], ["nz", "2D"]),
], ids=["nx<3", "nz<3", "dims-product", "dims-syntax", "problem-typo", "backend-name",
        "cfl-range", "tol-range", "nz-for-2d"])
def test_bad_cli_arguments(tmp_path, capsys, args, needles):
    assert_one_line_error(run_main(capsys, "forward", *args, "-o", tmp_path / "x"), *needles)
    assert not (tmp_path / "x" / "fields.h5").exists()


@pytest.mark.parametrize("value, needle", [("nan", "nan"), ("-1.0", "-1"), ("0.0", "0"),
                                           ("inf", "inf")])
def test_bad_permeability(tmp_path, capsys, value, needle):
    p = _toml(tmp_path, f"[problem]\nk_barrier = {value}\n")
    assert_one_line_error(run_main(capsys, "forward", p, "-o", tmp_path), "k_barrier", "> 0",
                          needle)


def test_bad_permeability_is_an_error_in_a_real_process(tmp_path):
    p = _toml(tmp_path, "[problem]\nk_background = nan\n")
    assert_one_line_error(run_cli("forward", p, "-o", tmp_path), "k_background", "nan")


def test_missing_and_invalid_config_file(tmp_path, capsys):
    assert_one_line_error(run_main(capsys, "forward", tmp_path / "nope.toml", "-o", tmp_path),
                          "not found")
    p = _toml(tmp_path, "[solver\ntol = 1\n")
    assert_one_line_error(run_main(capsys, "forward", p, "-o", tmp_path), "invalid TOML")


def test_cupy_backend_without_device(tmp_path):
    from hpcinv.backend import cupy_available
    if cupy_available():
        pytest.skip("this machine has a usable GPU: the cupy backend is not an error here")
    assert_one_line_error(run_cli("forward", *SMALL_2D, "--backend", "cupy", "-o", tmp_path),
                          "cupy")


def test_no_cxx_compiler(tmp_path):
    proc = run_cli("forward", *SMALL_2D, "--backend", "host", "-o", tmp_path,
                   env=_clean_env(CXX="/nonexistent/c++"))
    assert_one_line_error(proc, "no C++ compiler", "/nonexistent/c++", "CXX")


def test_divergence_names_iteration_and_suggests_smaller_cfl(tmp_path):
    proc = run_cli("forward", "--problem", "geothermal3d", "--nx", "15", "--ny", "15",
                   "--nz", "15", "--cfl", "1.0", "--re", "30", "-o", tmp_path)
    line = assert_one_line_error(proc, "diverged", re.compile(r"iteration \d+"), "smaller",
                                 "cfl")
    assert not (tmp_path / "fields.h5").exists(), line


def test_errors_in_process_return_2(tmp_path, capsys):
    """``main()`` itself returns 2 (no exception escapes) and prints one line."""
    assert main(["forward", "--nx", "1", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcinv: error: ") and err.count("\n") == 1


# --------------------------------------------------------------------------- info

def test_info():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    for key in ("hpcinv", "mpi_library", "mpi_standard", "cuda_aware_mpi", "cuda_aware_reason",
                "backend_cuda_aware", "backend_cuda_aware_reason", "ranks", "dims"):
        assert key in lines, out
    from mpi4py import MPI
    assert MPI.Get_library_version().strip().splitlines()[0] in lines["mpi_library"]
    assert '"backend"' in out and '"rank": 0' in out


def test_info_cuda_aware_override():
    proc = run_cli("info", env=_clean_env(HPCINV_CUDA_AWARE="1"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^cuda_aware_mpi\s+True$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^cuda_aware_reason\s+HPCINV_CUDA_AWARE$", proc.stdout, re.M)
    proc = run_cli("info", env=_clean_env(HPCINV_CUDA_AWARE="0"))
    assert re.search(r"^cuda_aware_mpi\s+False$", proc.stdout, re.M), proc.stdout
    assert_one_line_error(run_cli("info", env=_clean_env(HPCINV_CUDA_AWARE="yes")),
                          "HPCINV_CUDA_AWARE")


def test_info_reports_the_backends_decision():
    """``backend_cuda_aware``: what the halo exchanges of this backend do (host memory is
    always handed to MPI directly; the stream checker's device-like memory follows
    HPCINV_CUDA_AWARE)."""
    proc = run_cli("info", "--backend", "host", env=_clean_env(HPCINV_STREAM_CHECK="0"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^backend_cuda_aware\s+True$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^backend_cuda_aware_reason\s+host memory", proc.stdout, re.M)
    proc = run_cli("info", "--backend", "host",
                   env=_clean_env(HPCINV_STREAM_CHECK="1", HPCINV_CUDA_AWARE="0"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^backend_cuda_aware\s+False$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^backend_cuda_aware_reason\s+HPCINV_CUDA_AWARE$", proc.stdout, re.M)


def test_config_cuda_aware_goes_to_the_backend():
    """``parallel.cuda_aware`` is the backend's one decision (every halo exchange follows
    it), not a solver option."""
    from hpcinv.app.assembly import backend_of, solver_options
    cfg = config_mod.Config()
    cfg.parallel.backend = "host"
    cfg.parallel.cuda_aware = False
    config_mod.validate_config(cfg)
    assert "cuda_aware" not in solver_options(cfg)
    bk = backend_of(cfg)
    if bk.device_memory:              # the stream checker: device-like memory
        assert bk.cuda_aware is False and "parallel.cuda_aware" in bk.cuda_aware_reason
    else:                             # host memory is always handed to MPI directly
        assert bk.cuda_aware is True


def test_info_in_process(capsys):
    proc = run_main(capsys, "info")
    assert proc.returncode == 0
    assert "mpi_library" in proc.stdout and "cuda_aware_mpi" in proc.stdout


def test_info_under_mpiexec():
    proc = run_mpi(2, "info")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^ranks\s+2$", proc.stdout, re.M), proc.stdout
    assert proc.stdout.count('"rank": ') == 2


# --------------------------------------------------------------------------- scripts, README

SCRIPTS = ["tests/run_all.sh", "tests/run_slow.sh", "tests/stages.sh", ".ci/run", "jobs/forward.sbatch", "jobs/gpu_bind.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse(script):
    path = ROOT / script
    assert path.exists(), script
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_commands():
    text = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[mpich]" && hpcinv demo --output runs/demo' in text
    assert 'pip install -e ".[dev,mpich,cuda13]" && bash tests/run_all.sh' in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tests/run_all.sh" in ci and "bash tests/run_slow.sh" in ci   # nothing lost


def test_gpu_bind_picks_device_from_local_rank():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = str(ROOT / "jobs" / "gpu_bind.sh")
    show = [bash, "-c", 'echo "${CUDA_VISIBLE_DEVICES-unset}"']
    cases = [({"SLURM_LOCALID": "3", "SLURM_STEP_ID": "0", "SLURM_PROCID": "7",
               "GPU_LIST": "0,1,2,3"}, "3"),                 # an srun task
             ({"SLURM_LOCALID": "0", "PMI_LOCAL_RANK": "1", "GPU_LIST": "0,1"}, "1"),  # Hydra
             ({"OMPI_COMM_WORLD_LOCAL_RANK": "5", "HPCINV_GPUS_PER_NODE": "4"}, "1"),
             ({"MPI_LOCALRANKID": "1", "CUDA_VISIBLE_DEVICES": "4,5"}, "5"),
             ({"PMI_LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "7"}, "7"),
             ({"SLURM_LOCALID": "1", "GPU_LIST": "0,1", "HPCINV_GPU_BIND": "0"}, "unset"),
             ({"GPU_LIST": "0,1"}, "unset")]
    base = {k: v for k, v in _clean_env().items()
            if k not in ("SLURM_LOCALID", "CUDA_VISIBLE_DEVICES", "GPU_LIST",
                         "HPCINV_GPUS_PER_NODE", "HPCINV_GPU_BIND")}
    for extra, want in cases:
        env = {**base, **extra}
        proc = subprocess.run([bash, script, *show], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == want, (extra, proc.stdout)


def test_restart_elsewhere_is_refused(tmp_path):
    """``--restart A -o B`` used to continue B's checkpoint with A's config: now one line."""
    proc = run_cli("invert", "--restart", tmp_path / "a", "-o", tmp_path / "b", "-q")
    assert_one_line_error(proc, "--restart", "own directory", "copy")


def test_empty_output_dir_is_refused(tmp_path):
    cfg = tmp_path / "empty.toml"
    cfg.write_text('[output]\ndir = ""\n')
    proc = run_cli("forward", cfg, "--nx", "15", "--ny", "7", "-q", cwd=tmp_path)
    assert_one_line_error(proc, "output.dir", "empty")
    assert not (tmp_path / "fields.h5").exists() and not (tmp_path / "config.toml").exists()


# --------------------------------------------------------------------------- issue 22: newcomers

def _tiny_inversion(tmp_path, iterations=2, figures=False):
    path = tmp_path / "tiny.toml"
    path.write_text(f"[grid]\nnx = 31\nny = 17\n[inversion]\niterations = {iterations}\n"
                    f"[output]\nfigures = {str(figures).lower()}\n")
    return path


def test_json_progress_is_json_only(tmp_path, capsys):
    """``--json``: every stdout line is a JSON object with an ``event`` (the header and the end
    were plain text lines in the stream before)."""
    import json
    proc = run_main(capsys, "invert", _tiny_inversion(tmp_path), "--json", "-o", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events if e["event"] != "compile"]   # a cold kernel cache
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    assert kinds.count("iteration") == 3 and "final" in kinds, kinds
    start = next(e for e in events if e["event"] == "start")
    assert start["shape"] == [31, 17] and events[-1]["iteration"] == 2
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [0, 1, 2]


def test_invert_without_config_names_demo(tmp_path, capsys):
    """``hpcinv invert`` alone used to run the 50-iteration demo into runs/invert."""
    out = tmp_path / "never"
    assert_one_line_error(run_main(capsys, "invert", "-o", out, "--nx", "31", "--ny", "17"),
                          "CONFIG", "hpcinv demo")
    assert not out.exists()
    # the demo itself still runs without a file
    proc = run_main(capsys, "demo", "--nx", "31", "--ny", "17", "--iterations", "1", "-o",
                    tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr
    head = [ln for ln in proc.stdout.splitlines() if not ln.startswith("compiling kernels")]
    assert head[0].startswith("hpcinv demo: geothermal2d 31x17"), proc.stdout
    assert (tmp_path / "demo" / "model_final.h5").exists()


@pytest.mark.parametrize("args, needle", [
    (["forward", "--nx", "abc"], "argument --nx: invalid int value: 'abc'"),
    (["invert", "x.toml", "--iterations", "1.5"], "--iterations"),
    (["frob"], "invalid choice: 'frob'"),
    ([], "required: command"),
    (["forward", "--no-such-option"], "unrecognized arguments: --no-such-option"),
], ids=["int", "sub-int", "command", "none", "unknown-option"])
def test_argparse_errors_are_one_line(capsys, args, needle):
    line = assert_one_line_error(run_main(capsys, *args), needle, "--help")
    assert "usage:" not in line


def test_argparse_error_in_a_real_process():
    assert_one_line_error(run_cli("forward", "--nx", "abc"), "--nx", "hpcinv forward --help")


def test_info_says_which_cuda_aware_value_decides(capsys):
    """``cuda_aware_mpi False`` next to ``backend_cuda_aware True``: one line says which one
    the halo exchanges follow and why the other does not matter."""
    proc = run_main(capsys, "info", "--backend", "host")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("halo_buffers"))
    assert "backend_cuda_aware decides" in line and "cuda_aware_mpi" in line, line


def test_gradient_header_first_and_progress_lines_labelled(tmp_path, capsys):
    """The synthetic-data solve printed an unlabelled ``forward iter`` line before the
    header."""
    proc = run_main(capsys, "gradient", *SMALL_2D, "-o", tmp_path / "g")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("hpcinv gradient: geothermal2d 31x17"), lines
    solves = [ln for ln in lines if " iter " in ln]
    assert solves and solves[0].startswith("synthetic observations (true model): forward")
    assert all(ln.startswith(("synthetic observations", "gradient at logK = 0")) for ln in solves)


def test_restart_of_a_finished_run_without_checkpoints_is_refused(tmp_path, capsys):
    """It printed "no checkpoint yet (interrupted before the first one)" and recomputed from
    iteration 0, replacing the results."""
    run = tmp_path / "r"
    assert run_main(capsys, "invert", _tiny_inversion(tmp_path), "-q", "-o", run).returncode == 0
    for p in run.glob("checkpoint*.h5"):
        p.unlink()
    before = (run / "model_final.h5").read_bytes(), (run / "history.jsonl").read_text()
    line = assert_one_line_error(run_main(capsys, "invert", "--restart", run, "-q"),
                                 "finished", "iteration 2", "no checkpoint left",
                                 "config.toml -o NEWDIR")
    assert "interrupted" not in line
    assert ((run / "model_final.h5").read_bytes(), (run / "history.jsonl").read_text()) == before
