#!/usr/bin/env python
"""GPU acceptance: what a first run on a GPU node must show, in at most 8 minutes on one GPU.

Steps (each reported PASS, FAIL or SKIP in a table, and in ``OUT/acceptance.json``):

* ``info``: ``hpcinv info --backend cupy`` (the backend must be ``cupy``; its
  ``cuda_aware_mpi`` line decides whether the CUDA-aware step runs);
* ``selftest-1``: ``hpcinv selftest --full --backend cupy`` on one rank;
* ``selftest-2-staged`` and ``selftest-2-cuda-aware``: the same on two ranks sharing the GPU
  with ``HPCINV_CUDA_AWARE=0`` and ``=1`` (the latter only where the MPI is CUDA-aware);
* ``bitwise-*``: a forward, a gradient and 3 gradient-descent steps, 2D and 3D, run by the CLI
  with ``--backend host`` and ``--backend cupy`` into two directories; every HDF5 dataset of
  both must be bitwise equal (float64; the wall times in the checkpoint's history excepted);
* ``memcheck``: ``compute-sanitizer --tool memcheck`` on a tiny forward (SKIP where it is not
  installed);
* ``teff-*``: ``benchmarks/teff.py`` for 2D and 3D, float64 and float32: T_eff, T_copy and
  their ratio (reported; the step fails only if the benchmark does);
* ``launch``: ``benchmarks/launches.py --only launch``: host cost of one kernel launch.

Usage (on a GPU node; the MPI launcher from ``HPCINV_ACCEPTANCE_LAUNCHER``, default
``mpiexec -n {n}``)::

    bash benchmarks/gpu_acceptance.sh [OUT]            # OUT: default acceptance-<date>
    python benchmarks/gpu_acceptance.py --out OUT [--quick] [--only bitwise,teff]

``HPCINV_ACCEPTANCE_BACKEND=host`` replaces the GPU backend by the host backend (a dry run of
the script on any machine: the bitwise steps then compare two host runs; ``memcheck`` and the
CUDA-aware step are skipped). ``--quick`` uses tiny sizes. Exit status 1 if any required step
failed, else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Datasets that differ between two identical runs (wall times) and are not compared.
IGNORED_DATASETS = frozenset({"history_jsonl"})

#: Grid sizes per mode: the bitwise runs, the tiny sanitizer forward, the T_eff grids.
SIZES = {
    "full": {"bitwise2d": (127, 63), "bitwise3d": (31, 15, 15), "memcheck": (15, 7),
             "teff2d": "4096x4096", "teff3d": "256x256x256", "teff_repeats": 5},
    "quick": {"bitwise2d": (31, 15), "bitwise3d": (15, 7, 7), "memcheck": (15, 7),
              "teff2d": "64x64", "teff3d": "16x16x16", "teff_repeats": 2},
}


@dataclass
class Result:
    """One row of the table."""
    step: str
    required: bool
    status: str = "SKIP"          # PASS, FAIL or SKIP
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- HDF5 comparison

def h5_datasets(path: Path) -> dict:
    """``{name: numpy array}`` of every dataset in an HDF5 file."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
    return out


def compare_h5(a: Path, b: Path, ignore=IGNORED_DATASETS) -> tuple[int, list[str]]:
    """``(datasets compared, differences)`` of two HDF5 files: a dataset missing from one,
    another dtype or shape, or other bytes (bitwise: NaNs with equal bits are equal, -0 and
    +0 differ) is a difference, described with its largest absolute deviation."""
    import numpy as np
    da, db = h5_datasets(a), h5_datasets(b)
    diffs, n = [], 0
    for name in sorted(set(da) | set(db)):
        if name.split("/")[-1] in ignore:
            continue
        if name not in da or name not in db:
            diffs.append(f"{a.name}:{name} only in {'the first' if name in da else 'the second'}")
            continue
        x, y = np.asarray(da[name]), np.asarray(db[name])
        n += 1
        if x.dtype != y.dtype or x.shape != y.shape:
            diffs.append(f"{a.name}:{name} {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
        elif x.tobytes() != y.tobytes():
            where = "" if x.dtype.kind not in "fc" else \
                f", max |diff| {float(np.nanmax(np.abs(x - y))):.3e}"
            diffs.append(f"{a.name}:{name} differs{where}")
    return n, diffs


def compare_dirs(a: Path, b: Path) -> tuple[int, list[str]]:
    """Every ``*.h5`` file of two run directories compared (:func:`compare_h5`)."""
    names = sorted({p.name for p in a.glob("*.h5")} | {p.name for p in b.glob("*.h5")})
    total, diffs = 0, []
    if not names:
        return 0, [f"no HDF5 files in {a} or {b}"]
    for name in names:
        if not (a / name).exists() or not (b / name).exists():
            diffs.append(f"{name} missing from {a if not (a / name).exists() else b}")
            continue
        n, d = compare_h5(a / name, b / name)
        total, diffs = total + n, diffs + d
    return total, diffs


# --------------------------------------------------------------------------- running steps

class Runner:
    """Runs commands within the time budget and collects the table's rows."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.t0 = out, budget, time.monotonic()
        self.results: list[Result] = []
        self.log = out / "log"
        self.log.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def run(self, name: str, cmd: list[str], env=None, timeout: float = 300.0):
        """``(returncode, stdout, stderr)``; stdout and stderr also go to ``OUT/log/NAME.*``.
        Return code 124 where the step ran past its timeout or the budget."""
        limit = max(1.0, min(timeout, self.left()))
        full_env = dict(os.environ, **(env or {}))
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=full_env,
                               timeout=limit, cwd=self.out)
            rc, so, se = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as exc:
            rc = 124
            so = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            se = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) \
                + f"\ntimed out after {limit:.0f} s"
        (self.log / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
        (self.log / f"{name}.out").write_text(so)
        (self.log / f"{name}.err").write_text(se)
        return rc, so, se

    def step(self, name: str, required: bool, fn):
        """Run ``fn() -> (status, detail, data)`` as one row; an exception is a FAIL."""
        res = Result(name, required)
        t = time.monotonic()
        if self.left() < 5:
            res.status, res.detail = ("FAIL" if required else "SKIP"), "time budget spent"
        else:
            try:
                res.status, res.detail, res.data = fn()
            except Exception as exc:          # noqa: BLE001 - reported in the table
                res.status, res.detail = "FAIL", f"{type(exc).__name__}: {exc}"
        res.seconds = time.monotonic() - t
        self.results.append(res)
        print(f"[{res.status}] {name} ({res.seconds:.1f} s) {res.detail}", file=sys.stderr,
              flush=True)
        return res


def last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else ""


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def launcher(n: int) -> list[str]:
    """The MPI launcher for ``n`` ranks: ``HPCINV_ACCEPTANCE_LAUNCHER`` (``{n}`` replaced),
    else ``mpiexec -n n`` (the one beside this Python first)."""
    env = os.environ.get("HPCINV_ACCEPTANCE_LAUNCHER", "").strip()
    if env:
        return shlex.split(env.replace("{n}", str(n)))
    beside = Path(sys.executable).parent / "mpiexec"
    return [str(beside) if beside.exists() else "mpiexec", "-n", str(n)]


# --------------------------------------------------------------------------- the steps

def plan(args, backend: str, runner: Runner) -> list[tuple[str, bool, object]]:
    """``[(name, required, fn)]`` of the steps to run."""
    sizes = SIZES["quick" if args.quick else "full"]
    hpcinv = [sys.executable, "-m", "hpcinv"]
    state = {"cuda_aware": False}
    quick = ["--quick"] if args.quick else []

    def info():
        rc, so, se = runner.run("info", hpcinv + ["info", "--backend", backend], timeout=120)
        fields = dict(l.split(None, 1) for l in so.splitlines() if len(l.split(None, 1)) == 2)
        state["cuda_aware"] = fields.get("cuda_aware_mpi", "").strip() == "True"
        got = fields.get("backend", "?").strip()
        if rc != 0 or got != backend:
            return "FAIL", f"rc {rc}, backend {got}: {last_line(se)}", fields
        return "PASS", f"backend {got}, cuda_aware_mpi {state['cuda_aware']}", \
            {k: fields.get(k, "").strip() for k in ("cupy", "mpi_library", "cuda_aware_mpi")}

    def selftest(ranks: int, cuda_aware: str | None):
        def fn():
            if cuda_aware == "1" and not state["cuda_aware"] and backend != "host":
                return "SKIP", "MPI is not CUDA-aware (hpcinv info: cuda_aware_mpi False)", {}
            cmd = hpcinv + ["selftest", "--full", *quick, "--backend", backend, "--json"]
            if ranks > 1:
                cmd = launcher(ranks) + cmd + ["--allow-shared-device"]
            env = {} if cuda_aware is None else {"HPCINV_CUDA_AWARE": cuda_aware}
            name = f"selftest-{ranks}" + ("" if cuda_aware is None else f"-{cuda_aware}")
            rc, so, se = runner.run(name, cmd, env=env, timeout=150)
            rows = json_lines(so)
            data = rows[-1] if rows else {}
            failed = [c.get("name", "?") for c in data.get("checks", [])
                      if isinstance(c, dict) and c.get("status") == "FAIL"]
            if rc != 0 or data.get("ok") is False:
                return "FAIL", f"rc {rc}" + (f", failed: {', '.join(failed)}" if failed else
                                             f": {last_line(se)}"), {"failed": failed}
            return "PASS", f"{len(data.get('checks', []))} checks", {"failed": failed}
        return fn

    def bitwise(kind: str, ndim: int):
        shape = sizes[f"bitwise{ndim}d"]
        problem = f"geothermal{ndim}d"

        def fn():
            base = runner.out / "bitwise" / f"{kind}{ndim}d"
            labels = ("host", backend if backend != "host" else "host-again")
            for label, bk in zip(labels, ("host", backend)):
                d = base / label
                if d.exists():
                    shutil.rmtree(d)
                cmd = hpcinv + cli_args(kind, problem, shape, bk, d)
                rc, so, se = runner.run(f"bitwise-{kind}{ndim}d-{label}", cmd, timeout=180)
                if rc != 0:
                    return "FAIL", f"{bk} run rc {rc}: {last_line(se)}", {}
            a, b = (base / label for label in labels)
            n, diffs = compare_dirs(a, b)
            if diffs:
                return "FAIL", f"{len(diffs)} of {n} datasets differ: {diffs[0]}", \
                    {"differences": diffs}
            return "PASS", f"{n} datasets bitwise equal", {"datasets": n}
        return fn

    def cli_args(kind, problem, shape, bk, d):
        grid = [f"--n{ax}={n}" for ax, n in zip("xyz", shape)]
        common = ["--backend", bk, "-o", str(d), "-q", *grid]
        if kind == "forward":
            return ["forward", "--problem", problem, *common]
        if kind == "gradient":
            return ["gradient", "--problem", problem, *common]
        cfg = runner.out / f"invert_{problem}.toml"
        cfg.write_text(f'[problem]\nname = "{problem}"\n')
        return ["invert", str(cfg), "--iterations", "3", "--method", "gd", *common]

    def memcheck():
        tool = shutil.which("compute-sanitizer")
        if backend != "cupy":
            return "SKIP", "needs the cupy backend", {}
        if tool is None:
            return "SKIP", "compute-sanitizer not installed", {}
        nx, ny = sizes["memcheck"]
        d = runner.out / "memcheck"
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", "99", *hpcinv, "forward",
               "--backend", "cupy", f"--nx={nx}", f"--ny={ny}", "-o", str(d), "-q",
               "--overwrite"]
        rc, so, se = runner.run("memcheck", cmd, timeout=240)
        summary = [l for l in (so + se).splitlines() if "ERROR SUMMARY" in l]
        if rc != 0:
            return "FAIL", f"rc {rc}: {summary[-1] if summary else last_line(se)}", {}
        return "PASS", summary[-1].strip() if summary else "no errors", {}

    def teff(ndim: int, dtype: str):
        def fn():
            cmd = [sys.executable, str(HERE / "teff.py"), "--backend", backend, "--sizes",
                   sizes[f"teff{ndim}d"], "--dtype", dtype, "--no-numpy", "--repeats",
                   str(sizes["teff_repeats"])]
            if args.quick:
                cmd += ["--warmup", "1", "--sample-time", "0.05", "--threads", "1"]
            rc, so, se = runner.run(f"teff-{ndim}d-{dtype}", cmd, timeout=150)
            recs = [r for r in json_lines(so) if r.get("benchmark") == "teff"]
            if rc != 0 or not recs:
                return "FAIL", f"rc {rc}: {last_line(se)}", {}
            r = recs[-1]
            keep = {k: r.get(k) for k in ("size", "dtype", "device", "t_iter", "T_eff_GBs",
                                          "T_copy_GBs", "ratio_Teff_Tcopy")}
            return "PASS", (f"T_eff {r['T_eff_GBs']:.1f} GB/s, T_copy {r['T_copy_GBs']:.1f} "
                            f"GB/s, ratio {r['ratio_Teff_Tcopy']:.2f}"), keep
        return fn

    def launch():
        cmd = [sys.executable, str(HERE / "launches.py"), "--only", "launch", "--backend",
               backend, "--repeats", "3"]
        rc, so, se = runner.run("launch", cmd, timeout=120)
        recs = [r for r in json_lines(so) if r.get("bench") == "launch"]
        if rc != 0 or not recs:
            return "FAIL", f"rc {rc}: {last_line(se)}", {}
        r = recs[-1]
        return "PASS", f"{r['us_per_launch']} us per launch ({r['backend']})", \
            {"us_per_launch": r["us_per_launch"]}

    steps = [("info", True, info), ("selftest-1", True, selftest(1, None))]
    steps += [(f"bitwise-{kind}-{nd}d", True, bitwise(kind, nd))
              for kind in ("forward", "gradient", "gd3") for nd in (2, 3)]
    steps += [("selftest-2-staged", True, selftest(2, "0")),
              ("selftest-2-cuda-aware", True, selftest(2, "1"))]
    steps += [("memcheck", backend == "cupy" and shutil.which("compute-sanitizer") is not None,
               memcheck)]
    steps += [(f"teff-{nd}d-{dt}", True, teff(nd, dt)) for nd in (2, 3)
              for dt in ("float64", "float32")]
    steps += [("launch", True, launch)]
    return steps


def table(results: list[Result]) -> str:
    """The results as a fixed-width text table."""
    rows = [("step", "required", "status", "seconds", "detail")]
    rows += [(r.step, "yes" if r.required else "no", r.status, f"{r.seconds:.1f}",
              r.detail[:110]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
             for row in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def exit_status(results: list[Result]) -> int:
    """1 if a required step failed, else 0."""
    return int(any(r.required and r.status == "FAIL" for r in results))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output directory (default acceptance-DATE)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a dry run)")
    p.add_argument("--only", default="",
                   help="comma-separated step name prefixes to run (default: all)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all steps")
    args = p.parse_args(argv)
    backend = os.environ.get("HPCINV_ACCEPTANCE_BACKEND", "cupy").strip() or "cupy"
    out = Path(args.out or f"acceptance-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, args.budget)
    only = [s for s in args.only.split(",") if s]
    for name, required, fn in plan(args, backend, runner):
        if only and not any(name.startswith(o) for o in only):
            continue
        runner.step(name, required, fn)
    code = exit_status(runner.results)
    report = {"backend": backend, "quick": args.quick, "exit_status": code,
              "seconds": round(time.monotonic() - runner.t0, 1),
              "steps": [r.__dict__ for r in runner.results]}
    (out / "acceptance.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(runner.results))
    print(f"\n{'PASS' if code == 0 else 'FAIL'}: backend {backend}, "
          f"{report['seconds']} s; JSON in {out / 'acceptance.json'}, logs in {runner.log}")
    return code


if __name__ == "__main__":
    sys.exit(main())
