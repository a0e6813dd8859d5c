#!/usr/bin/env python
"""Memory and time of reverse-mode AD through the APT loop against hpcinv's adjoint gradient.

Problem: ``geothermal2d`` at each ``--sizes`` grid; observations at the workshop's 8 x 8 points
recorded from the true model (barrier K = 1e-6); the gradient ``dJ/dlogK`` of the demeaned
misfit ``J = min_c 1/2 sum_k (d_k - c)^2`` (1/2 pressure^2) is taken at the initial model
K = 1 everywhere (logK = 0). Four methods, each (method, size) in its own subprocess:

* ``adjoint``: ``hpcinv.gradient`` (forward APT solve + adjoint APT solve + transpose kernels,
  tol 1e-8, default ``PTParams``; N = its forward iteration count).
* ``jax-scan``: ``jax.value_and_grad`` (float64) through a JAX re-implementation of the same
  fused APT step (``hpcinv/physics/darcy.py``), ``lax.scan`` over exactly N iterations from
  zero. Reverse mode stores the step's residuals for every iteration.
* ``jax-ckpt-body``: the same with ``jax.checkpoint`` around the scan body (stores the carry
  ``(Pf, qx, qy)`` per iteration, recomputes the step).
* ``jax-nested``: sqrt(N) checkpointing: an outer scan over ``N // B`` blocks, ``B =
  ceil(sqrt(N))``, whose body is a checkpointed inner scan of B steps (plus one checkpointed
  scan of the ``N mod B`` remaining steps): ``N // B + B`` carries stored, one extra forward.

Per case (units: seconds, bytes):

* time of one gradient: median and fastest of ``--repeats`` calls after a first one; JAX
  compile time (``jit(...).lower(x).compile()``) separately. hpcinv runs on the host backend
  with ``--threads`` OpenMP threads; XLA uses its own CPU thread pool (all cores);
* peak memory of one gradient, in a fresh subprocess after imports, setup and compilation:
  ``VmHWM`` after resetting the kernel's peak counter (``/proc/self/clear_refs``), minus
  ``VmRSS`` before (``ru_maxrss`` minus that RSS where the reset is not allowed). Children run
  with ``MALLOC_MMAP_THRESHOLD_=65536`` so that arrays freed during the setup are returned to
  the OS and not silently reused, which would hide the gradient's own allocations;
* XLA's static estimate (``memory_analysis()``: arguments + outputs + temporaries - aliases),
  available without running;
* analytic storage: ``scan``, ``ckpt-body``: N x carry cells x 8 (carry ``(Pf, qx, qy)``);
  ``nested``: (N // B + B) x carry cells x 8; ``adjoint``: 12 padded cell fields (the
  solver's 9, the forward pressure, the gradient, the log K copy), independent of N;
* against the adjoint: ``||g - g_adj||_2 / ||g_adj||_2`` over the cells and
  ``|J - J_adj| / J_adj``. AD differentiates the N-step iteration exactly, the adjoint the
  converged solution to ``--tol``: they differ by the solver tolerance, not by round-off;
* each JAX case checks its pressure after 10 steps (far from convergence, where a different
  scheme shows) and after N steps against ``hpcinv.forward`` (relative 2-norm; same
  arithmetic, so ~1e-16).

A JAX case whose XLA estimate exceeds ``--mem-limit-gb`` (or 80 % of ``MemAvailable``) is
compiled but not run.

Commands (the numbers in docs/performance.md; default sizes 127x63,255x127,511x255, results
to benchmarks/results/ad_vs_adjoint.json, a table on stdout, progress on stderr)::

    python benchmarks/ad_vs_adjoint.py --threads 1 --repeats 5
    python benchmarks/ad_vs_adjoint.py --sizes 1023x511 --threads 1 --repeats 1 --json /tmp/x.json
    python benchmarks/ad_vs_adjoint.py --check                 # ~3 s self-test, exit 1 on failure

``--check``: 31x15 in one process; exits 1 unless the JAX forward matches hpcinv to 1e-12 and
both AD gradients (scan, nested) match the adjoint to 1e-6 (relative). Serial (one rank).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import log, machine, parse_sizes, reset_peak, status_kib, timed  # noqa: E402

import hpcinv  # noqa: E402
from hpcinv import problems  # noqa: E402
from hpcinv.backend import make_backend  # noqa: E402
from hpcinv.inverse import Observations  # noqa: E402
from hpcinv.model.geothermal import workshop_points  # noqa: E402
from hpcinv.solvers import PTParams, pt_coefficients  # noqa: E402

METHODS = ("adjoint", "jax-scan", "jax-ckpt-body", "jax-nested")
EARLY = 10      # the forward is also compared after this many steps, far from convergence
GB = 1e9


def import_jax():
    """``(jax, jax.numpy)`` with float64 enabled; a one-line exit when JAX is missing."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise SystemExit("error: this benchmark needs JAX: pip install hpcinv[jax]") from None
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


# --- memory of this process (KiB, Linux /proc) ------------------------------------------------
def meminfo_kib(field: str):
    """A field of ``/proc/meminfo`` (KiB), e.g. ``MemAvailable``."""
    with open("/proc/meminfo") as f:
        return next((int(l.split()[1]) for l in f if l.startswith(field + ":")), None)


def measure_peak(fn):
    """``(fn(), peak bytes, method)``: peak resident memory of one call above the RSS before."""
    gc.collect()
    reset = reset_peak()
    rss0 = status_kib("VmRSS")
    out = fn()
    peak = status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, (peak - rss0) * 1024, "VmHWM - VmRSS" if reset else "ru_maxrss - VmRSS"


# --- setup ---------------------------------------------------------------------------------
def observations(shape, values=None, backend=None):
    """Workshop observations on a ``shape`` grid; recorded from the true model when ``values``
    is None."""
    if values is None:
        true = problems.geothermal2d(shape)
        obs = Observations(true.grid, workshop_points(2))
        bk = backend if backend is not None else make_backend("auto")
        obs.record(hpcinv.forward(true, bk).Pf, bk)
        return obs
    return Observations(problems.geothermal2d(shape).grid, workshop_points(2), values)


def initial_model(shape):
    """The model the gradient is taken at: K = 1 everywhere."""
    return problems.geothermal2d(shape, k_barrier=1.0)


def adjoint_reference(shape, tol=1e-8, repeats=0, threads=None):
    """hpcinv's adjoint gradient (host backend with ``threads``, default all usable cores;
    forward and adjoint ``PTParams(tol=tol)``) and the forward pressure after its N iterations
    (owned cells): a dict of arrays and figures, with the peak memory of the gradient;
    ``repeats > 0`` adds its timing."""
    bk = make_backend("host", threads=threads)
    obs = observations(shape, backend=bk)
    model = initial_model(shape)
    own = model.grid.decomp.owned()
    params = PTParams(tol=tol)
    hpcinv.gradient(initial_model((15, 7)), observations((15, 7), backend=bk), backend=bk)
    grad = lambda: hpcinv.gradient(model, obs, backend=bk, params=params,  # noqa: E731
                                   adjoint_params=params)
    (J, g, info), peak, how = measure_peak(grad)
    rec = {"J": J, "g": bk.to_host(g, region=own), "N": info["forward_iterations"],
           "adjoint_iterations": info["adjoint_iterations"], "values": obs.values,
           "Pf": bk.to_host(hpcinv.forward(model, bk, params).Pf, region=own),
           "Pf_early": bk.to_host(hpcinv.forward(model, bk, PTParams(maxiter=EARLY)).Pf,
                                  region=own),
           "peak_bytes": peak, "peak_method": how,
           "analytic_bytes": 12 * math.prod(n + 2 for n in shape) * 8}
    if repeats:
        rec.update(timing(grad, repeats))
    return rec


def timing(call, repeats) -> dict:
    """Seconds per ``call()``: median and fastest of ``repeats`` calls, and the samples."""
    t = [timed(call, 1, MPI.COMM_SELF, lambda: None) for _ in range(repeats)]
    return {"t_grad_s": statistics.median(t), "t_grad_min_s": min(t), "t_samples": t}


# --- the APT loop in JAX -------------------------------------------------------------------
def jax_apt(model, obs, jax, jnp):
    """``(run, loss, carry_cells)`` for the problem (2D, no-flux on every side).

    ``run(logK, N, mode) -> (Pf, qx, qy)`` after N fused APT steps from zero; ``logK``, ``Pf``:
    ``(nx, ny)`` cells; ``qx``: ``(nx - 1, ny)`` and ``qy``: ``(nx, ny - 1)`` interior faces
    (wall fluxes are 0). ``mode``: ``"scan"``, ``"ckpt-body"`` or ``"nested"``.
    ``loss(logK, N, mode) -> J``. The arithmetic is the kernel's, in the kernel's order.
    """
    grid = model.grid
    nx, ny = grid.shape
    p = PTParams().resolved(grid.shape)
    damp, beta = pt_coefficients(grid.spacing, grid.lengths, p.cfl, p.re)
    inv_dx, inv_dy = (1.0 / d for d in grid.spacing)
    Qf = jnp.asarray(model.Qf[grid.decomp.owned()])
    ix, iy = (jnp.asarray(obs.cells[:, 0, a]) for a in range(2))       # nearest-cell rule
    values, sigma = jnp.asarray(obs.values), jnp.asarray(obs.sigma)
    W = 1.0 / sigma**2
    wall_x, wall_y = ((1, 1), (0, 0)), ((0, 0), (1, 1))

    def coefficients(logK):
        """Loop invariants: face K (arithmetic means) and beta / Kmax_loc (wall ghosts
        mirrored, as ``DarcyFields._complete_ghosts``)."""
        K = jnp.exp(logK)
        Kp = jnp.pad(K, 1, mode="edge")
        Kmax = K
        for nb in (Kp[:-2, 1:-1], Kp[2:, 1:-1], Kp[1:-1, :-2], Kp[1:-1, 2:]):
            Kmax = jnp.maximum(Kmax, nb)
        return 0.5 * (K[:-1, :] + K[1:, :]), 0.5 * (K[:, :-1] + K[:, 1:]), beta / Kmax

    def step(coef, carry):
        Kfx, Kfy, bK = coef
        P, qx, qy = carry
        qx = qx - (qx + Kfx * (P[1:, :] - P[:-1, :]) * inv_dx) * damp
        qy = qy - (qy + Kfy * (P[:, 1:] - P[:, :-1]) * inv_dy) * damp
        qxp, qyp = jnp.pad(qx, wall_x), jnp.pad(qy, wall_y)
        div = (qxp[1:, :] - qxp[:-1, :]) * inv_dx + (qyp[:, 1:] - qyp[:, :-1]) * inv_dy
        return P - (div - Qf) * bK, qx, qy

    def steps(coef, carry, n, checkpoint=False):
        """``n`` steps with ``lax.scan`` (``checkpoint``: of a rematerialised body)."""
        body = lambda c, _: (step(coef, c), None)  # noqa: E731
        return jax.lax.scan(jax.checkpoint(body) if checkpoint else body, carry, None,
                            length=n)[0]

    def run(logK, N, mode="scan"):
        coef = coefficients(logK)
        carry = (jnp.zeros((nx, ny)), jnp.zeros((nx - 1, ny)), jnp.zeros((nx, ny - 1)))
        if mode != "nested":
            return steps(coef, carry, N, checkpoint=mode == "ckpt-body")
        B = math.isqrt(N - 1) + 1                                       # ceil(sqrt(N))
        nblocks, rest = divmod(N, B)
        block = jax.checkpoint(lambda c, _: (steps(coef, c, B), None))
        carry = jax.lax.scan(block, carry, None, length=nblocks)[0]
        return jax.checkpoint(lambda c: steps(coef, c, rest))(carry) if rest else carry

    def loss(logK, N, mode="scan"):
        d = run(logK, N, mode)[0][ix, iy] - values
        d = d - jnp.sum(W * d) / jnp.sum(W)                             # demeaned misfit
        r = d / sigma
        return 0.5 * (r @ r)

    carry_cells = nx * ny + (nx - 1) * ny + nx * (ny - 1)
    return run, loss, carry_cells


def stored_carries(mode: str, N: int) -> int:
    """Carries ``(Pf, qx, qy)`` the reverse pass keeps (the analytic memory model)."""
    if mode == "nested":
        B = math.isqrt(N - 1) + 1
        return N // B + B
    return N


def rel(a, b) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def jax_case(method, shape, ref, repeats, limit_bytes):
    """One JAX method at one size against the adjoint reference ``ref`` (see
    :func:`adjoint_reference`); returns the record."""
    jax, jnp = import_jax()
    mode, N = method[len("jax-"):], int(ref["N"])
    model = initial_model(shape)
    run, loss, carry_cells = jax_apt(model, observations(shape, ref["values"]), jax, jnp)
    x = jnp.asarray(np.log(model.K[model.grid.decomp.owned()]))        # logK = 0
    fwd = jax.jit(lambda v, n: run(v, n)[0], static_argnums=1)
    rec = {"forward_rel_diff": rel(fwd(x, N), ref["Pf"]),
           "forward_rel_diff_early": rel(fwd(x, EARLY), ref["Pf_early"]),
           "analytic_bytes": stored_carries(mode, N) * carry_cells * 8}
    t0 = time.perf_counter()
    fn = jax.jit(jax.value_and_grad(lambda v: loss(v, N, mode))).lower(x).compile()
    rec["t_compile_s"] = time.perf_counter() - t0
    ma = fn.memory_analysis()
    xla = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias",
                                                             "temp", "generated_code")}
    xla["total"] = xla["argument"] + xla["output"] + xla["temp"] - xla["alias"]
    rec["xla"] = xla
    if xla["total"] > limit_bytes:
        rec["status"] = f"not run: est. {xla['total'] / GB:.1f} GB > limit {limit_bytes / GB:.1f}"
        return rec
    call = lambda: jax.block_until_ready(fn(x))  # noqa: E731
    (J, g), rec["peak_bytes"], rec["peak_method"] = measure_peak(call)
    rec.update(timing(call, repeats))
    rec.update(status="ok", J=float(J),
               g_rel_diff=rel(g, ref["g"]), J_rel_diff=abs(float(J) - ref["J"]) / ref["J"])
    return rec


# --- driver --------------------------------------------------------------------------------
def child(args):
    """``--case METHOD --size NXxNY``: one measurement, one JSON line on stdout."""
    shape = parse_sizes(args.size)[0]
    if args.case == "adjoint":
        ref = adjoint_reference(shape, args.tol, args.repeats, args.threads or None)
        np.savez(args.ref, **{k: ref[k] for k in ("J", "g", "N", "values", "Pf", "Pf_early")})
        rec = {k: v for k, v in ref.items() if not isinstance(v, np.ndarray)}
        rec.update(status="ok", g_rel_diff=0.0, J_rel_diff=0.0)
    else:
        ref = dict(np.load(args.ref))
        ref["J"] = float(ref["J"])
        avail = (meminfo_kib("MemAvailable") or 0) * 1024
        limit = min(args.mem_limit_gb * GB, 0.8 * avail) if avail else args.mem_limit_gb * GB
        rec = jax_case(args.case, shape, ref, args.repeats, limit)
        rec["N"] = int(ref["N"])
    print(json.dumps({"method": args.case, "size": list(shape), **rec,
                      "loadavg": os.getloadavg()}), flush=True)


def run_child(method, shape, ref_file, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", method, "--size",
           "x".join(map(str, shape)), "--ref", ref_file, "--repeats", str(args.repeats),
           "--mem-limit-gb", str(args.mem_limit_gb), "--tol", str(args.tol),
           "--threads", str(args.threads)]
    log(f"ad_vs_adjoint: {'x'.join(map(str, shape))} {method}")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed arrays leave the RSS
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        return {"method": method, "size": list(shape),
                "status": f"failed (rc {out.returncode}): {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_bytes(b):
    if b is None:
        return "-"
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
    return f"{b / 2**20:.{0 if b >= 10 * 2**20 else 1}f} MiB"


def table(records) -> str:
    head = ("| grid | iterations | method | time / gradient (fastest) | compile | peak RSS | "
            "XLA estimate | analytic | rel. grad diff | rel. J diff |")
    rows = [head, "|" + "---|" * 10]
    for r in records:
        size = "x".join(map(str, r["size"]))
        its = f"{r.get('N', '-')}" + (f" + {r['adjoint_iterations']}" if r["method"] == "adjoint"
                                       and "adjoint_iterations" in r else "")
        t = f"{r['t_grad_s']:.3g} s ({r['t_grad_min_s']:.3g})" if "t_grad_s" in r else r["status"]
        comp = f"{r['t_compile_s']:.3g} s" if "t_compile_s" in r else "-"
        xla = fmt_bytes(r["xla"]["total"]) if "xla" in r else "-"
        diff = (f"{r['g_rel_diff']:.1e}", f"{r['J_rel_diff']:.1e}") if "g_rel_diff" in r and \
            r["method"] != "adjoint" else ("-", "-")
        rows.append(f"| {size} | {its} | {r['method']} | {t} | {comp} | "
                    f"{fmt_bytes(r.get('peak_bytes'))} | {xla} | "
                    f"{fmt_bytes(r.get('analytic_bytes'))} | {diff[0]} | {diff[1]} |")
    checks = [f"{'x'.join(map(str, r['size']))} {r['method']}: {r['forward_rel_diff_early']:.1e}"
              f", {r['forward_rel_diff']:.1e}" for r in records if "forward_rel_diff" in r]
    return "\n".join(rows) + f"\n\nJAX forward vs hpcinv forward after {EARLY} and N steps " \
        "(rel. 2-norm): " + "; ".join(checks)


def check(args) -> int:
    """Fast self-test on 31x15 (in process): forward to 1e-12, AD gradients to 1e-6. The solves
    use tol 1e-11: the AD gradient is exact for the N-step iteration, the adjoint's for the
    converged solution, so they differ by the solver tolerance (~1e-6 at tol 1e-8 here)."""
    t0 = time.perf_counter()
    shape = (31, 15)
    ref = adjoint_reference(shape, tol=1e-11)
    ok = True
    for method in ("jax-scan", "jax-nested"):
        r = jax_case(method, shape, ref, 1, math.inf)
        fwd = max(r["forward_rel_diff"], r["forward_rel_diff_early"])
        good = fwd <= 1e-12 and r["g_rel_diff"] <= 1e-6
        ok &= good
        print(f"{method}: N = {ref['N']}, forward rel. diff after {EARLY} and N steps "
              f"{fwd:.1e} (<= 1e-12), gradient rel. diff {r['g_rel_diff']:.1e} (<= 1e-6), "
              f"J rel. diff {r['J_rel_diff']:.1e}: {'ok' if good else 'FAIL'}")
    print(f"check {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="127x63,255x127,511x255", help="NXxNY,... (geothermal2d)")
    p.add_argument("--methods", default=",".join(METHODS), help="adjoint always runs (reference)")
    p.add_argument("--repeats", type=int, default=3, help="timed gradients per case (median)")
    p.add_argument("--mem-limit-gb", type=float, default=16.0,
                   help="do not run a JAX case whose XLA estimate exceeds this (GB = 1e9 B)")
    p.add_argument("--tol", type=float, default=1e-8,
                   help="tolerance of hpcinv's forward and adjoint solves (N follows from it)")
    p.add_argument("--threads", type=int, default=0,
                   help="hpcinv host threads (0: usable cores); XLA keeps its own thread pool")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "ad_vs_adjoint.json"),
                   help="results file (default benchmarks/results/ad_vs_adjoint.json)")
    p.add_argument("--check", action="store_true", help="31x15 self-test, exit 1 on failure")
    p.add_argument("--case", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--ref", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import_jax()
    if MPI.COMM_WORLD.Get_size() > 1:
        raise SystemExit("error: ad_vs_adjoint.py is serial (run it without mpiexec)")
    if args.check:
        return check(args)
    if args.case:
        return child(args)
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        raise SystemExit(f"error: unknown --methods {sorted(set(methods) - set(METHODS))}; "
                         f"choose from {', '.join(METHODS)}")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in parse_sizes(args.sizes):
            ref_file = os.path.join(tmp, f"ref_{'x'.join(map(str, shape))}.npz")
            for method in ["adjoint"] + [m for m in methods if m != "adjoint"]:
                records.append(run_child(method, shape, ref_file, args))
                if records[-1]["status"] != "ok" and method == "adjoint":
                    break
    import jax
    out = {"benchmark": "ad_vs_adjoint", "problem": "geothermal2d",
           "command": " ".join(["python benchmarks/ad_vs_adjoint.py", *sys.argv[1:]]),
           "tol": args.tol, "repeats": args.repeats, "threads": args.threads or "auto",
           "mem_limit_gb": args.mem_limit_gb,
           "jax": jax.__version__, "machine": machine(), "cases": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
