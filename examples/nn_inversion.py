#!/usr/bin/env python
"""Invert log K through a neural parameterisation: a coordinate MLP trained with Adam, its
gradient from hpcinv's adjoint (:class:`hpcinv.autodiff.DarcyObservationsTorch`).

The problem, the synthetic observations, the initial model and the PT parameters are those of
``hpcinv demo`` (the default config: ``geothermal2d``, the workshop's 64 points, nearest rule,
demeaned misfit); only the model is different::

    logK(x, y) = logK0 + MLP(x, y, sin(2 pi B (x, y)), cos(2 pi B (x, y)))

with fixed random Fourier frequencies ``B`` and the MLP's last layer initialised to zero, so the
first model is the demo's (``logK0 = 0``) and ``J0`` is the demo's ``J0``. Adam minimises the
misfit ``J`` plus a small damping ``1/2 damping mean((logK - logK0)^2)``: the network's global
basis otherwise puts blotches of +-0.5 in log10 K where the data do not constrain the model
(the demo's gradient smoothing plays this part there). History and progress report ``J``
itself (``misfit``, ``misfit_ratio = J/J0``); the penalty is ``damping_term``. Each iteration is
one forward and one adjoint APT solve (warm-started from the previous ones); the last one is a
forward solve only (the final model's misfit and pressure).

Under MPI every rank evaluates the MLP (same seed, so the same weights everywhere) on the
coordinates of its own cells, passes its block to the layer and computes the loss from the
replicated observations; the weight gradients (each rank's share of the chain rule) are summed
with one allreduce per parameter before ``optimizer.step()``, so the weights stay identical.

Writes a run directory like ``hpcinv invert`` (``config.toml``, ``setup.h5``,
``history.jsonl``, ``model_final.h5`` + ``.xmf``, ``figures/``; ``hpcinv plot DIR`` works on it)
plus ``nn_model.pt`` (the MLP's weights and settings)::

    python examples/nn_inversion.py -o runs/nn
    mpiexec -n 2 python examples/nn_inversion.py -o runs/nn2 --nx 127 --ny 63
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from mpi4py import MPI

from hpcinv import config as config_mod
from hpcinv.app.assembly import build
from hpcinv.app.console import say
from hpcinv.app.run import History, RunDirectory, write_model_file, write_setup_file
from hpcinv.errors import ConfigError, HpcinvError
from hpcinv.model import geothermal, problems

PROG = "nn_inversion"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description="Invert log K of the hpcinv demo "
                                "through a coordinate MLP trained with Adam; gradients from "
                                "hpcinv's adjoint. Writes a run directory like hpcinv invert.")
    p.add_argument("--output", "-o", default="runs/nn", help="run directory (default runs/nn)")
    p.add_argument("--nx", type=int, help="global cells along x (default 255)")
    p.add_argument("--ny", type=int, help="global cells along y (default 127)")
    p.add_argument("--iterations", type=int, default=80, help="Adam iterations (default 80)")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    p.add_argument("--lr-final", type=float, default=0.1,
                   help="cosine schedule: final lr as a fraction of --lr (default 0.1)")
    p.add_argument("--hidden", type=int, default=48, help="width of the 2 hidden layers "
                   "(default 48)")
    p.add_argument("--fourier", type=int, default=32,
                   help="random Fourier frequencies (0: plain coordinates; default 32)")
    p.add_argument("--fourier-scale", type=float, default=3.0,
                   help="std of the frequencies, cycles per unit of the [-1, 1] coordinates "
                   "(default 3)")
    p.add_argument("--damping", type=float, default=1.0,
                   help="weight of the penalty 1/2 damping mean((logK - logK0)^2) added to the "
                   "loss, not to the misfit (default 1; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and frequencies")
    p.add_argument("--backend", help="auto (GPU if available), host, cupy")
    p.add_argument("--threads", type=int, help="host backend threads per rank (default: "
                   "cores / ranks)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output dir")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ the model
def features(grid, n_fourier: int, scale: float, seed: int) -> np.ndarray:
    """MLP inputs of this rank's owned cells, ``(ncells, ndim + 2 n_fourier)`` in C order of
    the owned block: the cell centres mapped to [-1, 1] per axis, then ``sin`` and ``cos`` of
    ``2 pi B c`` for frequencies ``B ~ N(0, scale^2)`` drawn from ``seed`` (same on every
    rank)."""
    own = grid.decomp.owned()
    coords = [np.broadcast_to(c, grid.decomp.padded_shape)[own] for c in grid.mesh()]
    c = np.stack([2.0 * (x - lo) / (hi - lo) - 1.0
                  for x, (lo, hi) in zip(coords, grid.extent)], axis=-1).reshape(-1, grid.ndim)
    if n_fourier <= 0:
        return c
    B = np.random.default_rng(seed).normal(0.0, scale, size=(grid.ndim, n_fourier))
    arg = 2.0 * np.pi * (c @ B)
    return np.concatenate([c, np.sin(arg), np.cos(arg)], axis=1)


def make_mlp(torch, n_in: int, hidden: int, seed: int):
    """``n_in -> hidden -> hidden -> 1`` with tanh; the last layer starts at zero (output 0)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.Tanh(),
                              torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                              torch.nn.Linear(hidden, 1)).to(torch.float64)
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.zero_()
    return net


def allreduce_gradients(net, comm):
    """Sum the weight gradients over the ranks, in place on numpy views of ``p.grad`` (through
    a host copy for GPU tensors)."""
    if comm.size == 1:
        return
    for p in net.parameters():
        if p.grad is None:
            continue
        if p.grad.device.type == "cpu":
            comm.Allreduce(MPI.IN_PLACE, p.grad.numpy())
        else:
            host = p.grad.cpu().numpy()
            comm.Allreduce(MPI.IN_PLACE, host)
            p.grad.copy_(p.grad.new_tensor(host))


def owned_global_mean(comm, values: np.ndarray, mask: np.ndarray) -> float:
    s = comm.allreduce(float(values[mask].sum()), op=MPI.SUM)
    n = comm.allreduce(int(mask.sum()), op=MPI.SUM)
    return s / n if n else math.nan


# ------------------------------------------------------------------------------ the run
def run(args) -> dict:
    from hpcinv.autodiff import DarcyObservationsTorch    # MissingExtraError without torch
    import torch

    comm = MPI.COMM_WORLD
    cfg = config_mod.Config()                             # what `hpcinv demo` starts from
    if args.nx is not None:
        cfg.grid.nx = args.nx
    if args.ny is not None:
        cfg.grid.ny = args.ny
    if args.backend:
        cfg.parallel.backend = args.backend
    if args.threads is not None:
        cfg.parallel.threads = args.threads
    cfg.output.dir = args.output
    cfg.inversion.iterations = args.iterations
    config_mod.validate_config(cfg)
    if cfg.problem.name != "geothermal2d":
        raise ConfigError(f"{PROG} runs geothermal2d, not {cfg.problem.name}")
    if args.iterations < 1 or not args.lr > 0 or args.hidden < 1:
        raise ConfigError("--iterations, --lr and --hidden must be positive")
    if args.fourier < 0 or args.damping < 0 or not 0 <= args.lr_final <= 1:
        raise ConfigError("--fourier and --damping must be >= 0, --lr-final in [0, 1]")
    if comm.size > 1:
        torch.set_num_threads(1)                          # the ranks share the cores

    run_dir = RunDirectory(args.output, comm, overwrite=args.overwrite)

    # The demo's scenario: true model, synthetic observations of its pressure, logK0.
    setup = build(cfg, comm)
    backend, opts, true, obs = setup.backend, setup.solver_options, setup.true, setup.observations
    grid, decomp = setup.grid, setup.decomp
    own = decomp.owned()
    true_logK = np.zeros(decomp.padded_shape)
    true_logK[own] = np.log(true.K[own])
    logK0 = setup.logK0
    write_setup_file(run_dir / "setup.h5", grid, obs, true.wells, true_logK)
    if comm.rank == 0:
        (run_dir / "config.toml").write_text(config_mod.dumps(cfg))

    # The differentiable forward model (its copy of the problem gets each call's model).
    layer = DarcyObservationsTorch(true.copy(), obs, backend=backend,
                                   params=setup.forward_params,
                                   adjoint_params=setup.adjoint_params, warm_start=True, **opts)
    W = 1.0 / obs.sigma**2
    target = obs.values - (np.sum(W * obs.values) / np.sum(W) if obs.demean else 0.0)
    dev = layer.device                                   # where the solver's backend computes
    W_t, target_t = torch.from_numpy(W).to(dev), torch.from_numpy(target).to(dev)
    shape = tuple(decomp.local_shape)
    X = torch.from_numpy(features(grid, args.fourier, args.fourier_scale, args.seed)).to(dev)
    base = torch.from_numpy(np.ascontiguousarray(logK0[own])).to(dev)
    ncells = math.prod(grid.shape)
    net = make_mlp(torch, X.shape[1], args.hidden, args.seed).to(dev)
    nweights = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iterations,
                                                       eta_min=args.lr * args.lr_final)
    say(f"{PROG}: {cfg.problem.name} {'x'.join(map(str, grid.shape))} cells on {decomp.size} "
        f"rank(s), backend {backend.name}, MLP {X.shape[1]}-{args.hidden}-{args.hidden}-1 "
        f"({nweights} weights), Adam lr {args.lr:g} (cosine), damping {args.damping:g}, "
        f"{args.iterations} iterations, {len(obs)} observations -> {run_dir.path}")

    history = History(run_dir / "history.jsonl", comm)
    t0 = time.perf_counter()
    prev, J0, lr_used = None, None, 0.0
    for k in range(args.iterations + 1):
        last = k == args.iterations             # the final model: misfit only, no step
        with torch.set_grad_enabled(not last):
            logK = base + net(X).reshape(shape)
            try:
                d = layer(logK)
            except HpcinvError as exc:       # e.g. K overflowing: the model blew up
                raise ConfigError(f"iteration {k}: {exc} (if the model diverged, lower "
                                  "--lr)") from None
            loss = 0.5 * torch.sum(W_t * (d - target_t) ** 2)
            penalty = 0.5 * args.damping / ncells * torch.sum((logK - base) ** 2)  # my cells
        grad_norm = None
        if not last:
            opt.zero_grad()
            (loss + penalty).backward()
            allreduce_gradients(net, comm)
            grad_norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in net.parameters()))
        J = float(loss.detach())
        damping = comm.allreduce(float(penalty.detach()), op=MPI.SUM)
        J0 = J if J0 is None else J0
        now = logK.detach().cpu().numpy().copy()
        dlogK = 0.0 if prev is None else comm.allreduce(float(np.max(np.abs(now - prev))),
                                                        op=MPI.MAX)
        prev = now
        info = layer.op.info
        rec = {"iteration": k, "misfit": J, "misfit_ratio": J / J0 if J0 else 1.0,
               "max_dlogK": dlogK, "forward_iterations": info["forward_iterations"],
               "adjoint_iterations": 0 if last else info["adjoint_iterations"],
               "damping_term": damping, "lr": lr_used, "grad_norm": grad_norm,
               "evaluations": k + 1, "note": "", "wall_time": time.perf_counter() - t0}
        history.append(rec)
        if not args.quiet:
            el = rec["wall_time"]
            eta = el / k * (args.iterations - k) if k else float("nan")
            say(f"iter {k:4d}/{args.iterations}  J/J0 {rec['misfit_ratio']:.4e}  max|dlogK| "
                f"{dlogK:.3e}  PT {rec['forward_iterations']}+{rec['adjoint_iterations']}  "
                f"lr {lr_used:.2e}  elapsed {el:8.1f} s  ETA {eta:7.1f} s")
        if not math.isfinite(J):
            raise ConfigError(f"misfit became {J} at iteration {k}: lower --lr")
        if not last:
            lr_used = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()

    # Outputs: the final model and the pressure of its (last) forward solve, as hpcinv writes.
    final = np.zeros(decomp.padded_shape)
    final[own] = prev
    write_model_file(run_dir / "model_final.h5", grid, final, layer.op.engine.Pf_forward,
                     {"iteration": args.iterations, "misfit": J}, backend.to_host)
    if comm.rank == 0:
        torch.save({"state_dict": net.state_dict(), "hidden": args.hidden,
                    "fourier": args.fourier, "fourier_scale": args.fourier_scale,
                    "seed": args.seed, "extent": grid.extent}, run_dir / "nn_model.pt")
        from hpcinv.app.plot import plot_run
        plot_run(run_dir.path)
    bounds = geothermal.barrier_bounds(grid.ndim)
    barrier = owned_global_mean(comm, final[own] / np.log(10),
                                problems.box_mask(grid, bounds)[own])
    say(f"done: J/J0 = {rec['misfit_ratio']:.4e} after {args.iterations} iterations "
        f"({rec['wall_time']:.1f} s); barrier mean log10 K = {barrier:.2f} "
        f"(true {math.log10(cfg.problem.k_barrier):g}); results in {run_dir.path}")
    return {**rec, "barrier_mean_log10K": barrier}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except HpcinvError as exc:
        if MPI.COMM_WORLD.rank == 0:
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        if MPI.COMM_WORLD.size > 1:         # an error on one rank must not hang the others
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
