"""The SLURM job scripts in jobs/: they parse, and their bodies run locally on 2 CPU ranks
through the launcher override (HPCINV_LAUNCHER) on tiny problems, including the inversion's
SIGTERM -> checkpoint -> requeue -> restart cycle under a simulated SLURM (fake srun, scontrol
and scancel on PATH)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in
                 [*JOBS.glob("*.sbatch"), *JOBS.glob("*.sh"), *JOBS.glob("env/*.sh")])
BASH = shutil.which("bash")
_here = Path(sys.executable).with_name("mpiexec")
MPIEXEC = str(_here) if _here.exists() else shutil.which("mpiexec")

needs_bash = pytest.mark.skipif(BASH is None, reason="no bash")
needs_mpi = pytest.mark.skipif(BASH is None or MPIEXEC is None, reason="no bash or mpiexec")

TINY = "[grid]\nnx = 31\nny = 15\n[inversion]\niterations = {it}\ncheckpoint_every = 0\n" \
       "[output]\nfigures = false\n"


def base_env(**extra) -> dict:
    """The test's environment without any SLURM or HPCINV setting, plus 2 local host ranks."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "HPCINV_", "SRUN_", "SBATCH_"))}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", HPCINV_PYTHON=sys.executable,
               HPCINV_BACKEND="host", HPCINV_LAUNCHER=f"{MPIEXEC} -n 2")
    env.update({k: str(v) for k, v in extra.items()})
    return {k: v for k, v in env.items() if v != ""}        # "" removes a variable


def run_script(script, *args, env, cwd, timeout=120):
    return subprocess.run([BASH, str(JOBS / script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def history(run) -> list:
    return [json.loads(s) for s in (Path(run) / "history.jsonl").read_text().splitlines() if s]


def fake_slurm(tmp_path) -> tuple[Path, Path]:
    """A bin directory with srun (-> mpiexec -n NTASKS), scontrol and scancel that log their
    arguments; returns (bin dir, log file). Like the real srun --mpi=pmi2, the fake reports a
    step that ended in ``MPI_Abort`` as 137 (SIGKILL), whatever code the abort carried."""
    bindir, log = tmp_path / "fakebin", tmp_path / "slurm-calls.log"
    bindir.mkdir()
    (bindir / "srun").write_text(f"""#!/usr/bin/env bash
echo "srun $*" >> "{log}"
n=1
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in --ntasks=*) n=${{1#--ntasks=}} ;; esac
    shift
done
err=$(mktemp)
rc=0
"{MPIEXEC}" -n "$n" "$@" 2> "$err" || rc=$?
cat "$err" >&2
if grep -q "MPI_Abort" "$err"; then rc=137; fi
rm -f "$err"
exit $rc
""")
    for name in ("scontrol", "scancel"):
        (bindir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
    for p in bindir.iterdir():
        p.chmod(0o755)
    return bindir, log


# The host kernels compiled by earlier runs (a job would otherwise get a fresh per-job cache).
KERNEL_CACHE = os.environ.get("HPCINV_CACHE_DIR", str(Path.home() / ".cache" / "hpcinv"))


def slurm_env(bindir, **extra) -> dict:
    extra.setdefault("HPCINV_CACHE_DIR", KERNEL_CACHE)
    extra.setdefault("HPCINV_LAUNCHER", "")
    return base_env(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242",
                    SLURM_SUBMIT_DIR=ROOT, SLURM_CPUS_PER_TASK=1, **extra)


def rank_pids(marker: str) -> list[int]:
    """PIDs of the Python ranks whose command line contains ``marker`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0] == sys.executable and "hpcinv" in argv and marker in argv:
            pids.append(int(d.name))
    return pids


def start_and_wait_for(script, args, env, cwd, run, lines=3, timeout=120):
    """Start a job script in the background; return it once history.jsonl has ``lines`` lines."""
    proc = subprocess.Popen([BASH, str(JOBS / script), *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hist, deadline = Path(run) / "history.jsonl", time.time() + timeout
    while time.time() < deadline:
        if hist.exists() and len(hist.read_text().splitlines()) >= lines:
            return proc
        if proc.poll() is not None:
            pytest.fail(f"{script} ended early ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{script}: no progress in {timeout} s")


# --------------------------------------------------------------------------- static checks

@needs_bash
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
    proc = subprocess.run([BASH, "-n", str(ROOT / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_job_script_documents_the_launcher_override():
    for p in JOBS.glob("*.sbatch"):
        text = p.read_text()
        assert "HPCINV_LAUNCHER" in text and "#SBATCH --nodes" in text, p.name
        assert os.access(p, os.X_OK), p.name
    inv = (JOBS / "invert.sbatch").read_text()
    for line in ("#SBATCH --signal=TERM@300", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert line in inv


@needs_bash
def test_without_slurm_or_launcher_a_script_says_what_to_do(tmp_path):
    for script in ("forward.sbatch", "invert.sbatch", "weak_scaling.sbatch"):
        p = run_script(script, env=base_env(HPCINV_LAUNCHER=""), cwd=tmp_path)
        assert p.returncode == 2 and "HPCINV_LAUNCHER" in p.stderr, (script, p.stderr)
    p = run_script("forward.sbatch", env=base_env(HPCINV_MPI_ENV="bogus"), cwd=tmp_path)
    assert p.returncode == 2 and "HPCINV_MPI_ENV" in p.stderr


@needs_bash
@pytest.mark.parametrize("name, gpu_vars", [
    ("cray-mpich", {"MPICH_GPU_SUPPORT_ENABLED": "1"}),
    ("openmpi", {"OMPI_MCA_pml": "ucx", "UCX_TLS": "rc,sm,cuda_copy,cuda_ipc,gdr_copy"}),
    ("mvapich", {"MV2_USE_CUDA": "1"})])
def test_mpi_environment_files(name, gpu_vars):
    def sourced(backend, **extra):
        env = base_env(HPCINV_BACKEND=backend, **extra)
        p = subprocess.run([BASH, "-c", f'set -euo pipefail; source "{JOBS}/env/{name}.sh"; env'],
                           env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    got = sourced("cupy")
    for k, v in gpu_vars.items():
        assert got.get(k) == v, (name, k, got.get(k))
    # detection decides (issue 19, finding 4): never forced on by the file; the user's choice,
    # and the user's own library switches, are kept
    assert "HPCINV_CUDA_AWARE" not in got, (name, got["HPCINV_CUDA_AWARE"])
    for user in ("0", "1"):
        assert sourced("cupy", HPCINV_CUDA_AWARE=user)["HPCINV_CUDA_AWARE"] == user
    mine = sourced("cupy", **dict.fromkeys(gpu_vars, "x"))
    assert all(mine[k] == "x" for k in gpu_vars), (name, mine)
    host = sourced("host")
    # CPU runs: no GPU support switched on (Cray MPICH would abort in MPI_Init without GTL)
    for k in ("MPICH_GPU_SUPPORT_ENABLED", "MV2_USE_CUDA", "UCX_TLS", "HPCINV_CUDA_AWARE"):
        assert k not in host, (name, k)


@needs_bash
def test_gpu_bind_leaves_cpu_runs_alone():
    p = subprocess.run([BASH, str(JOBS / "gpu_bind.sh"), BASH, "-c",
                        'echo "${CUDA_VISIBLE_DEVICES-unset}"'],
                       env=base_env(SLURM_LOCALID=1, GPU_LIST="0,1", HPCINV_BACKEND="host"),
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == os.environ.get("CUDA_VISIBLE_DEVICES",
                                                                    "unset")


LAUNCH_VARS = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_LOCAL", "PALS_", "MV2_", "HYDRA_")

# (launcher, environment of one rank, expected CUDA_VISIBLE_DEVICES with 4 GPUs visible).
# Under mpirun/Hydra inside an allocation each rank inherits SLURM_LOCALID (0 from the batch
# shell, or 0 of the srun step that started the per-node daemons): the launcher's own
# variable must win, and a bare SLURM_LOCALID outside an srun task must not be used.
GPU_BIND_CASES = [
    ("srun", dict(SLURM_STEP_ID=0, SLURM_PROCID=5, SLURM_LOCALID=1), "1"),
    ("srun --mpi=pmi2", dict(SLURM_STEP_ID=3, SLURM_PROCID=5, SLURM_LOCALID=1, PMI_RANK=5,
                             PMI_SIZE=8), "1"),
    ("srun --mpi=pmix", dict(SLURM_STEP_ID=0, SLURM_PROCID=6, SLURM_LOCALID=2, PMIX_RANK=6), "2"),
    ("srun, old SLURM_STEPID", dict(SLURM_STEPID=0, SLURM_PROCID=3, SLURM_LOCALID=3), "3"),
    ("Open MPI mpirun, batch node", dict(SLURM_LOCALID=0, SLURM_PROCID=0, SLURM_NODEID=0,
                                         OMPI_COMM_WORLD_LOCAL_RANK=3, OMPI_COMM_WORLD_RANK=3),
     "3"),
    ("Open MPI mpirun, daemon started by srun", dict(
        SLURM_STEP_ID=0, SLURM_PROCID=1, SLURM_LOCALID=0, OMPI_COMM_WORLD_LOCAL_RANK=2,
        OMPI_COMM_WORLD_RANK=6), "2"),
    ("Hydra mpiexec, batch node", dict(SLURM_LOCALID=0, SLURM_PROCID=0, MPI_LOCALRANKID=3,
                                       PMI_RANK=3, PMI_SIZE=8), "3"),
    ("Hydra, proxies started by srun", dict(SLURM_STEP_ID=0, SLURM_PROCID=1, SLURM_LOCALID=0,
                                            MPI_LOCALRANKID=2, PMI_LOCAL_RANK=2, PMI_RANK=6),
     "2"),
    ("Hydra via srun, PMI_LOCAL_RANK only", dict(SLURM_STEP_ID=0, SLURM_PROCID=1,
                                                 SLURM_LOCALID=0, PMI_LOCAL_RANK=1, PMI_RANK=5),
     "1"),
    ("Cray PALS", dict(PALS_LOCAL_RANKID=3, PALS_RANKID=7, PMI_RANK=7, SLURM_LOCALID=0), "3"),
    ("MVAPICH mpirun_rsh", dict(MV2_COMM_WORLD_LOCAL_RANK=1, MV2_COMM_WORLD_RANK=5,
                                SLURM_LOCALID=0, SLURM_PROCID=0), "1"),
    ("PMIx launcher", dict(PMIX_LOCAL_RANK=2, PMIX_RANK=2), "2"),
    # No usable local rank: CUDA_VISIBLE_DEVICES stays as it was (hpcinv then picks
    # node-local rank mod visible GPUs itself).
    ("Hydra via srun without local rank", dict(SLURM_STEP_ID=0, SLURM_PROCID=1,
                                               SLURM_LOCALID=1, PMI_RANK=6), "0,1,2,3"),
    ("batch shell (no step)", dict(SLURM_JOB_ID=7, SLURM_LOCALID=1, SLURM_PROCID=0), "0,1,2,3"),
    ("batch step id", dict(SLURM_STEP_ID=4294967291, SLURM_LOCALID=1, SLURM_PROCID=0),
     "0,1,2,3"),
    ("no launcher", dict(), "0,1,2,3"),
]


def gpu_bind(env_vars: dict, **extra):
    env = {k: v for k, v in base_env(**extra).items() if not k.startswith(LAUNCH_VARS)}
    env.pop("HPCINV_BACKEND")
    env.update({k: str(v) for k, v in env_vars.items()})
    return subprocess.run([BASH, str(JOBS / "gpu_bind.sh"), BASH, "-c",
                           'echo "${CUDA_VISIBLE_DEVICES-unset}"'],
                          env=env, capture_output=True, text=True)


@needs_bash
@pytest.mark.parametrize("launcher, env_vars, expected", GPU_BIND_CASES,
                         ids=[c[0] for c in GPU_BIND_CASES])
def test_gpu_bind_takes_the_launchers_local_rank(launcher, env_vars, expected):
    p = gpu_bind(env_vars, CUDA_VISIBLE_DEVICES="0,1,2,3", HPCINV_GPU_BIND_VERBOSE=1)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == expected, (launcher, p.stderr)
    if expected == "0,1,2,3":
        assert "no node-local rank from the launcher" in p.stderr
    else:
        assert f"local rank {expected} (" in p.stderr


@needs_bash
def test_gpu_bind_uses_gpu_list_and_warns_only_when_slurm_localid_was_ignored():
    p = gpu_bind(dict(OMPI_COMM_WORLD_LOCAL_RANK=5), GPU_LIST="3,2,1,0")
    assert p.stdout.strip() == "2" and p.stderr == ""          # 5 mod 4 -> entry 1
    p = gpu_bind(dict(SLURM_LOCALID=0), CUDA_VISIBLE_DEVICES="0,1")
    assert p.stdout.strip() == "0,1" and "SLURM_LOCALID=0 not used" in p.stderr
    p = gpu_bind({}, CUDA_VISIBLE_DEVICES="0,1")
    assert p.stdout.strip() == "0,1" and p.stderr == ""


@needs_bash
def test_submit_scaling_dry_run():
    env = base_env(HPCINV_LAUNCHER="", HPCINV_SUBMIT_DRY_RUN=1)
    p = subprocess.run([BASH, str(JOBS / "submit_scaling.sh"), "strong", "1", "4", "--",
                        "--account=abc", "---", "--3d"], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2
    for n, line in zip((1, 4), lines):
        assert line.startswith(f"sbatch --nodes={n} ") and "--account=abc" in line
        assert line.split()[-2].endswith("jobs/strong_scaling.sbatch") and line.endswith("--3d")


# --------------------------------------------------------------------------- local runs

@needs_mpi
def test_forward_runs_locally(tmp_path):
    out = tmp_path / "fwd"
    p = run_script("forward.sbatch", ROOT / "examples" / "forward2d.toml", cwd=tmp_path,
                   env=base_env(HPCINV_OUTPUT=out, HPCINV_ARGS="--nx 31 --ny 15 -q",
                                HPCINV_MPI_ENV="openmpi"))
    assert p.returncode == 0, p.stdout + p.stderr
    with h5py.File(out / "fields.h5") as f:
        assert f["Pf"].shape == (31, 15)
        assert bool(f.attrs["converged"])
    assert "31x15 cells on 2 rank(s)" in p.stdout
    info = (out / "info.txt").read_text()
    assert "ranks              2" in info and '"backend": "host"' in info
    assert "mpi env:  openmpi" in p.stdout


@needs_mpi
def test_invert_runs_locally_then_continues_from_its_checkpoint(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(it=3))
    run = tmp_path / "inv"
    env = base_env(HPCINV_OUTPUT=run, HPCINV_CONFIG=cfg, HPCINV_ARGS="-q")
    p = run_script("invert.sbatch", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "(new run of" in p.stdout and "--restart" not in p.stderr
    assert (run / "model_final.h5").exists() and len(history(run)) == 4
    # The same command again: the checkpoint is found, the run continues with --restart.
    p = run_script("invert.sbatch", "--iterations", 5, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "checkpoint found: restart" in p.stdout
    assert f"hpcinv invert --restart {run}" in p.stderr
    h = history(run)
    assert [r["iteration"] for r in h] == list(range(6))
    with h5py.File(run / "model_final.h5") as f:
        assert f["logK"].shape == (31, 15)
    assert (run / "info.txt").read_text().count("== invert.sbatch") == 2


@needs_mpi
def test_invert_sigterm_to_the_batch_shell_checkpoints_and_stops(tmp_path):
    """sbatch --signal=B:TERM@N (or a local Ctrl-C-less stop): the shell relays SIGTERM to the
    launcher, the ranks checkpoint and exit 3; not under SLURM nothing is requeued."""
    cfg = tmp_path / "long.toml"
    cfg.write_text(TINY.format(it=500))
    run = tmp_path / "inv"
    env = base_env(HPCINV_OUTPUT=run, HPCINV_CONFIG=cfg, HPCINV_ARGS="-q")
    proc = start_and_wait_for("invert.sbatch", [], env, tmp_path, run)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert "batch shell got SIGTERM" in out and "not under SLURM" in out
    with h5py.File(run / "checkpoint.h5") as f:
        k = int(f.attrs["iteration"])
    assert k == len(history(run)) - 1 and not (run / "model_final.h5").exists()
    p = run_script("invert.sbatch", env={**env, "HPCINV_ARGS": f"-q --iterations {k + 1}"},
                   cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "checkpoint found: restart" in p.stdout and (run / "model_final.h5").exists()
    assert [r["iteration"] for r in history(run)] == list(range(k + 2))


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_invert_under_slurm_requeues_on_sigterm_and_restarts(tmp_path):
    """The production path: srun launches the ranks, --signal=TERM@300 makes slurmstepd send
    SIGTERM to them (emulated: the test signals the rank processes), hpcinv checkpoints and
    exits 3, the script runs scontrol requeue; the requeued job restarts from the checkpoint."""
    bindir, log = fake_slurm(tmp_path)
    cfg = tmp_path / "long.toml"
    cfg.write_text(TINY.format(it=500))
    run = tmp_path / "invert-4242"
    env = slurm_env(bindir, SLURM_NTASKS=2, HPCINV_OUTPUT=run, HPCINV_ARGS="-q")
    proc = start_and_wait_for("invert.sbatch", [cfg], env, tmp_path, run)
    pids = rank_pids(str(run))
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    calls = log.read_text()
    assert "srun --ntasks=2 --cpus-per-task=1 --cpu-bind=cores" in calls
    assert "scontrol requeue 4242" in calls
    assert (run / "checkpoint.h5").exists() and not (run / "model_final.h5").exists()
    k = len(history(run)) - 1
    # The requeued job: same job id (so the same run directory), SLURM_RESTART_COUNT set.
    env.update(SLURM_RESTART_COUNT="1", HPCINV_ARGS=f"-q --iterations {k + 2}")
    p = run_script("invert.sbatch", cfg, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "checkpoint found: restart" in p.stdout and "(requeued 1x)" in p.stdout
    assert [r["iteration"] for r in history(run)] == list(range(k + 3))
    assert (run / "model_final.h5").exists()
    assert log.read_text().count("scontrol") == 1


def _records(path):
    return [json.loads(s) for s in Path(path).read_text().splitlines() if s]


BENCH = "--iters 3 --warmup 1 --repeats 1 --overlap on --no-adjoint"


@needs_mpi
def test_weak_scaling_runs_locally(tmp_path):
    """Through submit_scaling.sh with a {n} launcher (ranks 1), then the script itself with the
    plain 2-rank launcher: one JSON file, a plot from both."""
    out = tmp_path / "scaling"
    env = base_env(HPCINV_OUTPUT=out, HPCINV_LAUNCHER=f"{MPIEXEC} -n {{n}}", HPCINV_ARGS=BENCH)
    p = subprocess.run([BASH, str(JOBS / "submit_scaling.sh"), "weak", "1", "---", "--local",
                        "32x16"], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_script("weak_scaling.sbatch", "--local", "32x16", cwd=tmp_path,
                   env=base_env(HPCINV_OUTPUT=out, HPCINV_ARGS=BENCH))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ranks              2" in (out / "info-local.txt").read_text()
    recs = _records(out / "weak.jsonl")
    assert sorted(r["ranks"] for r in recs) == [1, 2]
    assert all(r["kind"] == "weak" and list(r["local_size"]) == [32, 16] for r in recs)
    assert {tuple(r["global_size"]) for r in recs} == {(32, 16), (64, 16)}
    if (ROOT / "benchmarks" / "plot_scaling.py").exists():
        assert (out / "weak.png").stat().st_size > 1000


@needs_mpi
def test_strong_scaling_runs_under_slurm_over_node_counts(tmp_path):
    """HPCINV_NODES inside one allocation: one srun step per node count (fake srun)."""
    bindir, log = fake_slurm(tmp_path)
    out = tmp_path / "scaling"
    env = slurm_env(bindir, SLURM_JOB_NUM_NODES=2, SLURM_NTASKS=2, SLURM_NTASKS_PER_NODE=1,
                    HPCINV_NODES="1 2 4", HPCINV_OUTPUT=out, HPCINV_ARGS=BENCH)
    p = run_script("strong_scaling.sbatch", "--size", "32x16", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "skipping 4 nodes" in p.stderr
    calls = [c for c in log.read_text().splitlines() if c.startswith("srun")]
    assert len(calls) == 3                                  # info, then 1 and 2 nodes
    assert "--ntasks=2" in calls[0] and "--nodes=2" in calls[0] and "hpcinv info" in calls[0]
    assert "--ntasks=1" in calls[1] and "--nodes=1" in calls[1]
    assert "--ntasks=2" in calls[2] and "--nodes=2" in calls[2]
    assert "ranks              2" in (out / "info-4242.txt").read_text()
    recs = _records(out / "strong.jsonl")
    assert sorted(r["ranks"] for r in recs) == [1, 2]
    assert all(list(r["global_size"]) == [32, 16] for r in recs)
    if (ROOT / "benchmarks" / "plot_scaling.py").exists():
        assert (out / "strong.png").stat().st_size > 1000


# --------------------------------------------------------------------------- job environment

def sourced_common(env: dict, script: str = ":") -> dict:
    """Source jobs/common.sh as a job script does, run ``script``, return the environment
    (plus LAUNCH as one string)."""
    body = (f'set -euo pipefail; JOB_NAME=test; REPO="{ROOT}"; source "$REPO/jobs/common.sh"; '
            f'{script}; env; echo "LAUNCH=${{LAUNCH[*]-}}"')
    p = subprocess.run([BASH, "-c", body], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    got["_stderr"] = p.stderr
    return got


@needs_bash
def test_srun_launch_binds_threads_only_through_cpu_bind(tmp_path):
    """No unconditional OMP_PROC_BIND=close/OMP_PLACES=cores from the batch shell: each rank's
    wrapper decides from its own CPU mask."""
    env = base_env(HPCINV_LAUNCHER="", SLURM_JOB_ID=7, SLURM_NTASKS=4, SLURM_CPUS_PER_TASK=8,
                   HPCINV_CACHE_DIR=tmp_path / "k", CUPY_CACHE_DIR=tmp_path / "c")
    got = sourced_common(env, "hpcinv_launcher")
    assert "OMP_PROC_BIND" not in got and "OMP_PLACES" not in got
    assert got["OMP_NUM_THREADS"] == "1"                  # base_env's; else SLURM_CPUS_PER_TASK
    launch = got["LAUNCH"].split()
    assert launch[:4] == ["srun", "--ntasks=4", "--cpus-per-task=8", "--cpu-bind=cores"]
    assert launch[-2:] == [f"{JOBS}/cpu_bind.sh", f"{JOBS}/gpu_bind.sh"]
    got = sourced_common({**env, "HPCINV_CPU_BIND": "0", "HPCINV_GPU_BIND": "0"},
                         "hpcinv_launcher")
    assert got["LAUNCH"].split()[-1] == "--cpu-bind=cores"
    del env["OMP_NUM_THREADS"]
    assert sourced_common(env, "hpcinv_launcher")["OMP_NUM_THREADS"] == "8"


def cpu_bind(**env_vars):
    env = {k: v for k, v in base_env().items()
           if not k.startswith(LAUNCH_VARS + ("OMP_PROC_BIND", "OMP_PLACES"))}
    env.update(HPCINV_CPU_BIND_VERBOSE="1", **{k: str(v) for k, v in env_vars.items()})
    env = {k: v for k, v in env.items() if v != ""}
    p = subprocess.run([BASH, str(JOBS / "cpu_bind.sh"), BASH, "-c",
                        'echo "${OMP_PROC_BIND-unset} ${OMP_PLACES-unset}"'],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip(), p.stderr


@needs_bash
@pytest.mark.parametrize("mask, per_task, extra, expected", [
    (8, 8, {}, "close cores"),                              # srun --cpu-bind=cores: own set
    (4, 8, {}, "close cores"),
    (32, 8, {}, "unset unset"),        # the whole job's (or node's) CPUs: shared by the ranks
    (8, "", {}, "unset unset"),        # no SLURM: cannot tell
    (8, 8, {"OMP_PROC_BIND": "spread"}, "spread cores"),    # the user's values stay
    (8, 8, {"HPCINV_CPU_BIND": "0"}, "unset unset"),
    (32, 8, {"HPCINV_CPU_BIND": "1"}, "close cores"),
    (8, "", {"HPCINV_CPUS_PER_TASK": "8"}, "close cores"),  # e.g. mpirun --map-by ...:pe=8
])
def test_cpu_bind_binds_only_a_rank_with_its_own_cpus(mask, per_task, extra, expected):
    out, err = cpu_bind(HPCINV_AFFINITY_CPUS=mask, SLURM_CPUS_PER_TASK=per_task, **extra)
    assert out == expected, err


@needs_bash
def test_cpu_bind_measures_the_mask_and_warns_about_too_many_threads():
    out, err = cpu_bind(SLURM_CPUS_PER_TASK=1, OMP_NUM_THREADS=4)
    n = len(os.sched_getaffinity(0))
    assert (out == "close cores") == (n <= 1), (n, err)
    assert f"{n} CPU(s) in the mask" in err                  # nproc ignored OMP_NUM_THREADS
    assert ("OMP_NUM_THREADS=4 but this rank may use only" in err) == (n < 4)
    taskset = shutil.which("taskset")
    if taskset:
        p = subprocess.run([taskset, "-c", str(min(os.sched_getaffinity(0))), BASH,
                            str(JOBS / "cpu_bind.sh"), BASH, "-c", 'echo "$OMP_PROC_BIND"'],
                           env={**base_env(), "SLURM_CPUS_PER_TASK": "1",
                                "OMP_NUM_THREADS": "2"}, capture_output=True, text=True)
        assert p.stdout.strip() == "close" and "may use only 1 CPU(s)" in p.stderr


@needs_bash
def test_kernel_caches_per_job_or_scratch(tmp_path):
    env = base_env(HPCINV_LAUNCHER="", SLURM_JOB_ID=77, TMPDIR=tmp_path, SCRATCH="",
                   CUPY_CACHE_DIR="", USER="me")
    # No scratch: a per-job directory under TMPDIR, removed when the job script ends.
    got = sourced_common(env, 'test -d "$HPCINV_CACHE_DIR" && test -d "$CUPY_CACHE_DIR"')
    assert got["HPCINV_CACHE_DIR"] == f"{tmp_path}/hpcinv-cache-me-77/hpcinv"
    assert got["CUPY_CACHE_DIR"] == f"{tmp_path}/hpcinv-cache-me-77/cupy"
    assert not (tmp_path / "hpcinv-cache-me-77").exists()
    # Left by an earlier attempt of the requeued job (issue 22): removed as well.
    (tmp_path / "hpcinv-cache-me-77" / "hpcinv").mkdir(parents=True)
    sourced_common(env)
    assert not (tmp_path / "hpcinv-cache-me-77").exists()
    # $SCRATCH: kept between jobs, one per CPU model.
    got = sourced_common({**env, "SCRATCH": str(tmp_path / "scratch")})
    base = Path(got["HPCINV_CACHE_DIR"]).parent
    assert base.parent == tmp_path / "scratch" / "hpcinv-cache" and len(base.name) == 8
    assert got["CUPY_CACHE_DIR"] == f"{base}/cupy" and (base / "hpcinv").is_dir()
    # HPCINV_CACHE_ROOT before $SCRATCH; values the user set are kept.
    got = sourced_common({**env, "SCRATCH": "/nonexistent", "HPCINV_CACHE_ROOT": str(tmp_path),
                          "HPCINV_CACHE_DIR": "/mine"})
    assert got["HPCINV_CACHE_DIR"] == "/mine"
    assert got["CUPY_CACHE_DIR"].startswith(f"{tmp_path}/hpcinv-cache/")
    # Not under SLURM: nothing changes.
    got = sourced_common(base_env(TMPDIR=tmp_path, CUPY_CACHE_DIR=""))
    assert "CUPY_CACHE_DIR" not in got and "HPCINV_CACHE_DIR" not in got


@needs_bash
def test_gpus_per_node_0_runs_the_host_backend():
    env = base_env(HPCINV_LAUNCHER="", HPCINV_BACKEND="", SLURM_JOB_ID=5,
                   SLURM_GPUS_PER_NODE=0, HPCINV_MPI_ENV="cray")
    got = sourced_common(env)
    assert got["HPCINV_BACKEND"] == "host" and "--gpus-per-node=0" in got["_stderr"]
    assert "MPICH_GPU_SUPPORT_ENABLED" not in got          # no GPU support on CPU nodes
    got = sourced_common({**env, "SLURM_GPUS_PER_NODE": "4"})
    assert "HPCINV_BACKEND" not in got and got["MPICH_GPU_SUPPORT_ENABLED"] == "1"
    got = sourced_common({**env, "HPCINV_BACKEND": "cupy"})       # an explicit choice wins
    assert got["HPCINV_BACKEND"] == "cupy"


# --------------------------------------------------------------------------- launcher status

def fake_launcher(tmp_path, status: str) -> str:
    """A launcher running the real mpiexec -n 2 that forwards SIGTERM and then exits with
    ``status`` whatever the ranks did (Debian's mpiexec.mpich exits 0 after a forwarded
    SIGTERM although the ranks exit 3)."""
    path = tmp_path / f"launcher-{status}"
    path.write_text(f"""#!/usr/bin/env bash
"{MPIEXEC}" -n 2 "$@" &
pid=$!
trap 'kill -TERM $pid' TERM
wait $pid || true
wait $pid || true
exit {status}
""")
    path.chmod(0o755)
    return str(path)


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_invert_requeues_when_the_launcher_hides_status_3(tmp_path):
    bindir, log = fake_slurm(tmp_path)
    cfg = tmp_path / "long.toml"
    cfg.write_text(TINY.format(it=500))
    run = tmp_path / "invert-4242"
    env = slurm_env(bindir, HPCINV_OUTPUT=run, HPCINV_ARGS="-q",
                    HPCINV_LAUNCHER=fake_launcher(tmp_path, 0))
    proc = start_and_wait_for("invert.sbatch", [cfg], env, tmp_path, run)
    pids = rank_pids(str(run))
    assert len(pids) == 2, pids
    for pid in pids:                              # --signal=TERM@N: SIGTERM to the ranks
        os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "launcher exit status 0" in out and "stopped by SIGTERM" in out
    assert "scontrol requeue 4242" in log.read_text()
    assert (run / "checkpoint.h5").exists() and not (run / "model_final.h5").exists()


@needs_mpi
def test_results_decide_not_the_launchers_status(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(it=2))
    # A launcher that reports 0 but runs nothing: no results -> failed.
    env = base_env(HPCINV_OUTPUT=tmp_path / "inv0", HPCINV_CONFIG=cfg, HPCINV_LAUNCHER="true")
    p = run_script("invert.sbatch", env=env, cwd=tmp_path)
    assert p.returncode == 1 and "counted as failed" in p.stderr, p.stdout + p.stderr
    p = run_script("forward.sbatch", env={**env, "HPCINV_OUTPUT": str(tmp_path / "f0")},
                   cwd=tmp_path)
    assert p.returncode == 1 and "no " in p.stderr and "fields.h5 written" in p.stderr
    # A launcher that reports 5 after the inversion finished: finished (status 0, a warning).
    env.update(HPCINV_OUTPUT=str(tmp_path / "inv5"), HPCINV_ARGS="-q",
               HPCINV_LAUNCHER=fake_launcher(tmp_path, 5))
    p = run_script("invert.sbatch", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "launcher returned 5 although the inversion finished" in p.stderr
    assert (tmp_path / "inv5" / "model_final.h5").exists()


# --------------------------------------------------------------------------- srun-proof stops

SIGTERM_AT = ROOT / "tests" / "sigterm_at.py"


def python_that_signals(tmp_path, at: str, ranks: str = "all") -> dict:
    """HPCINV_PYTHON running tests/sigterm_at.py: the ranks send themselves SIGTERM ``at`` a
    phase of hpcinv invert (see there)."""
    path = tmp_path / "python-sigterm"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SIGTERM_AT}" "$@"\n')
    path.chmod(0o755)
    return dict(HPCINV_PYTHON=path, HPCINV_TEST_SIGTERM_AT=at, HPCINV_TEST_SIGTERM_RANKS=ranks)


def stop_env(tmp_path, launcher: str, **extra):
    """(environment, slurm-call log) for invert.sbatch under the fake srun or plain mpiexec."""
    if launcher == "srun":
        bindir, log = fake_slurm(tmp_path)
        return slurm_env(bindir, SLURM_NTASKS=2, **extra), log
    return base_env(**extra), None


@needs_mpi
@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_sigterm_in_the_final_evaluation_stops_every_rank_with_3(tmp_path, launcher):
    """Issue 22: SIGTERM after the last checkpoint, before model_final.h5. Every rank exits 3 on
    its own (srun would report an MPI_Abort as 137); the job stops (local) or requeues (srun),
    and the requeued attempt finishes from the checkpoint."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(it=2))
    run = tmp_path / "invert-4242"
    env, log = stop_env(tmp_path, launcher, HPCINV_OUTPUT=run, HPCINV_ARGS="-q",
                        **python_that_signals(tmp_path, "finish"))
    p = run_script("invert.sbatch", cfg, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert "launcher exit status 3" in out and "MPI_Abort" not in out, out
    assert "interrupted by SIGTERM" in out and (run / ".hpcinv-stop.json").exists()
    assert (run / "checkpoint.h5").exists() and not (run / "model_final.h5").exists()
    if launcher == "mpiexec":
        assert p.returncode == 3 and "not under SLURM" in out, out
        return
    assert p.returncode == 0 and "scontrol requeue 4242" in log.read_text(), out
    env.update(SLURM_RESTART_COUNT="1", HPCINV_TEST_SIGTERM_AT="")
    p = run_script("invert.sbatch", cfg, env=env, cwd=tmp_path)
    assert p.returncode == 0 and "inversion finished" in p.stdout, p.stdout + p.stderr
    assert [r["iteration"] for r in history(run)] == [0, 1, 2]


@needs_mpi
def test_sigterm_in_start_up_under_srun_requeues(tmp_path):
    """SIGTERM while the run is assembled (no checkpoint yet): status 3 from every rank, the
    run directory's stop record makes the script requeue (the next attempt starts again)."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(it=2))
    run = tmp_path / "invert-4242"
    env, log = stop_env(tmp_path, "srun", HPCINV_OUTPUT=run, HPCINV_ARGS="-q",
                        **python_that_signals(tmp_path, "build"))
    p = run_script("invert.sbatch", cfg, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "launcher exit status 3" in out, out
    assert "before its first checkpoint" in out and "scontrol requeue 4242" in log.read_text()
    assert (run / ".hpcinv-stop.json").exists() and not (run / "checkpoint.h5").exists()


@needs_mpi
def test_a_rank_that_never_answers_aborts_and_the_run_directory_decides(tmp_path):
    """Only rank 1 gets the signal; rank 0 goes on into a collective of the final evaluation.
    Rank 1 gives up after HPCINV_STOP_WAIT and aborts (srun: 137); the script still requeues,
    from the new checkpoint and the stop record, not from the launcher's status."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(it=2))
    run = tmp_path / "invert-4242"
    env, log = stop_env(tmp_path, "srun", HPCINV_OUTPUT=run, HPCINV_ARGS="-q",
                        HPCINV_STOP_WAIT=1, **python_that_signals(tmp_path, "finish", "1"))
    p = run_script("invert.sbatch", cfg, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert "launcher exit status 137" in out and "rank 0 did not answer" in out, out
    assert p.returncode == 0 and "scontrol requeue 4242" in log.read_text(), out


@needs_mpi
def test_a_scaling_step_run_as_separate_1_rank_copies_fails(tmp_path):
    """Issue 22: srun without the PMI the MPI needs starts N 1-rank copies; the "2-rank" step
    wrote 1-rank records and the job ended COMPLETED. The benchmark refuses (rank check), and
    with the check off the script refuses records whose MPI size is not the step's."""
    bindir, log = fake_slurm(tmp_path)
    (bindir / "srun").write_text("""#!/usr/bin/env bash
n=1
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in --ntasks=*) n=${1#--ntasks=} ;; esac
    shift
done
for ((i = 0; i < n; i++)); do
    SLURM_STEP_ID=0 SLURM_PROCID=$i SLURM_STEP_NUM_TASKS=$n "$@" &
done
rc=0
for ((i = 0; i < n; i++)); do wait -n || rc=$?; done
exit $rc
""")
    out = tmp_path / "scaling"
    env = slurm_env(bindir, SLURM_JOB_NUM_NODES=1, SLURM_NTASKS=2, SLURM_NTASKS_PER_NODE=2,
                    HPCINV_SINGLE_RANK=0, HPCINV_OUTPUT=out, HPCINV_ARGS=BENCH)
    p = run_script("strong_scaling.sbatch", "--size", "32x16", env=env, cwd=tmp_path)
    assert p.returncode != 0 and "MPI did not start as 2 ranks" in p.stderr, p.stderr
    p = run_script("strong_scaling.sbatch", "--size", "32x16", cwd=tmp_path,
                   env={**env, "HPCINV_RANK_CHECK": "0"})
    assert p.returncode != 0 and "MPI size other than its 2 rank(s)" in p.stderr, p.stderr


# --------------------------------------------------------------------- continuation command

SHOW_JOB_2205 = """JobId=4242 JobName=big-inv
   Priority=1 Nice=0 Account=proj42 QOS=long
   RunTime=00:00:10 TimeLimit=12:00:00 TimeMin=N/A
   Partition=gpu AllocNode:Sid=login1:123
   NumNodes=8 NumCPUs=256 NumTasks=32 CPUs/Task=8 ReqB:S:C:T=0:0:*:*
   TRES=cpu=256,mem=400G,node=8,billing=256,gres/gpu=32
   Socks/Node=* NtasksPerN:B:S:C=4:0:*:* CoreSpec=*
   MinCPUsNode=32 MinMemoryNode=0 MinTmpDiskNode=0
   Features=a100&ib DelayBoot=00:00:00
   Command=/home/alice/hpcinv/jobs/invert.sbatch run.toml
   TresPerNode={tres}
"""


def continuation(tmp_path, show_job: str | None, **env) -> str:
    """What jobs/continuation.sh prints for run directory runs/x, script S and arguments
    'my run.toml' --iterations 500, with a fake scontrol printing ``show_job`` (None: none)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "scontrol").unlink(missing_ok=True)
    if show_job is not None:
        (bindir / "show.txt").write_text(show_job)
        (bindir / "scontrol").write_text(f'#!/bin/sh\ncat "{bindir}/show.txt"\n')
        (bindir / "scontrol").chmod(0o755)
    script = ('set -euo pipefail\nunder_slurm() { [[ -n "${SLURM_JOB_ID:-}" ]]; }\n'
              f'source "{JOBS}/continuation.sh"\n'
              "continuation_command runs/x S 'my run.toml' --iterations 500\n")
    p = subprocess.run([BASH, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env=base_env(PATH=f"{bindir}{os.pathsep}/usr/bin:/bin",
                                    SLURM_JOB_ID=4242, HPCINV_LAUNCHER="", HPCINV_PYTHON="",
                                    HPCINV_BACKEND="", **env))
    assert p.returncode == 0, p.stderr
    return p.stdout


@needs_bash
@pytest.mark.parametrize("tres", ["gres:gpu:4", "gres/gpu:4", "gpu:4"])
def test_continuation_repeats_the_jobs_options(tmp_path, tres):
    """Issue 22: the continuation command had none of the job's options (a new job would run
    on the script's defaults: 2 nodes, 4 GPUs per node, 2 hours). TRES formats of Slurm 20.11
    (gpu:4), 22.05 (gres:gpu:4) and 23.02+ (gres/gpu:4)."""
    out = continuation(tmp_path, SHOW_JOB_2205.format(tres=tres), HPCINV_ARGS="-q --json")
    first, *rest = out.splitlines()
    assert first == (f"HPCINV_OUTPUT={tmp_path}/runs/x HPCINV_ARGS=-q\\ --json "
                     "sbatch --job-name=big-inv --nodes=8 --ntasks=32 --ntasks-per-node=4 "
                     "--cpus-per-task=8 --gpus-per-node=4 --partition=gpu --account=proj42 "
                     "--qos=long --time=12:00:00 --constraint=a100\\&ib "
                     "S my\\ run.toml --iterations 500"), out
    assert rest == [], out


@needs_bash
def test_continuation_of_a_cpu_job_and_without_scontrol(tmp_path):
    """A job without GPUs gets --gpus-per-node=0 (the script asks for 4); a typed GPU and
    another generic resource are kept. Without scontrol the job's environment gives what it
    has, and the rest is named."""
    show = SHOW_JOB_2205.format(tres="").replace(",gres/gpu=32", "")
    out = continuation(tmp_path, show.replace("TresPerNode=\n", ""))
    assert " --gpus-per-node=0 " in out and "not recovered" not in out, out
    out = continuation(tmp_path, SHOW_JOB_2205.format(tres="gres/gpu:a100:4,gres/nvme:1"))
    assert " --gpus-per-node=a100:4 --gres=nvme:1 " in out, out
    out = continuation(tmp_path, None, SLURM_JOB_NUM_NODES=3, SLURM_NTASKS_PER_NODE="4(x3)",
                       SLURM_CPUS_PER_TASK=8, SLURM_GPUS_PER_NODE=4)
    first, second = out.splitlines()
    assert " sbatch --nodes=3 --ntasks-per-node=4 --cpus-per-task=8 --gpus-per-node=4 S " \
        in first, out
    assert second.startswith("(not recovered from scontrol show job or the job's environment:"
                             " --constraint --reservation --time;"), out


def scontrol_that(bindir: Path, log: Path, on_requeue: str) -> None:
    """Replace the fake scontrol: ``show job`` prints SHOW_JOB_2205 (GPUs gres:gpu:4),
    ``requeue`` runs the shell text ``on_requeue`` (after logging the call)."""
    (bindir / "show.txt").write_text(SHOW_JOB_2205.format(tres="gres:gpu:4"))
    (bindir / "scontrol").write_text(f"""#!/usr/bin/env bash
echo "scontrol $*" >> "{log}"
if [[ $1 == show ]]; then cat "{bindir}/show.txt"; fi
if [[ $1 == requeue ]]; then {on_requeue}; fi
""")


def stopped_job(tmp_path, on_requeue: str):
    """(config, run directory, environment, slurm-call log) of an invert.sbatch job under the
    fake SLURM whose ranks get SIGTERM during start-up (so it asks for a requeue at once)."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(it=2))
    run = tmp_path / "invert-4242"
    bindir, log = fake_slurm(tmp_path)
    scontrol_that(bindir, log, on_requeue)
    env = slurm_env(bindir, SLURM_NTASKS=2, HPCINV_OUTPUT=run, HPCINV_ARGS="-q",
                    **python_that_signals(tmp_path, "build"))
    return cfg, run, env, log


@needs_mpi
def test_a_refused_requeue_prints_the_continuation_with_the_jobs_options(tmp_path):
    """Issue 22: the continuation command repeats the job's sbatch options and arguments."""
    cfg, run, env, _ = stopped_job(tmp_path, "exit 1")
    p = run_script("invert.sbatch", cfg, "--iterations", 7, env=env, cwd=tmp_path)
    assert p.returncode == 3, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    i = lines.index("invert.sbatch: requeue refused (site policy?). Continue with:")
    assert lines[i + 1].startswith(f"HPCINV_OUTPUT={run} HPCINV_ARGS=-q "), p.stderr
    assert lines[i + 1].endswith(
        " sbatch --job-name=big-inv --nodes=8 --ntasks=32 --ntasks-per-node=4 --cpus-per-task=8"
        " --gpus-per-node=4 --partition=gpu --account=proj42 --qos=long --time=12:00:00"
        f" --constraint=a100\\&ib {JOBS}/invert.sbatch {cfg} --iterations 7"), p.stderr


@needs_mpi
def test_sigterm_to_the_batch_shell_during_the_requeue(tmp_path):
    """Issue 22: SLURM answers scontrol requeue by signalling the job, the batch shell too. The
    TERM handler ran in the middle of 'if ! scontrol requeue' and returned the status it found
    there (1), so errexit ended the script with 1 from inside the handler (bash < 5.3 then logs
    'pop_var_context: head of shell_variables not a function context'). Now: the requeue
    completes, the script exits 0, and stderr carries no shell noise."""
    cfg, run, env, log = stopped_job(tmp_path, "kill -TERM $PPID; sleep 0.3")
    p = run_script("invert.sbatch", cfg, env=env, cwd=tmp_path)
    assert "batch shell got SIGTERM" in p.stderr and "scontrol requeue 4242" in log.read_text()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pop_var_context" not in p.stderr and "continue with" not in p.stderr.lower()
