"""Checks ``forward-2d/3d``, ``gradient-2d/3d`` and ``descent-2d/3d``: the parallel
computation bitwise equal to rank 0 alone on ``MPI.COMM_SELF``."""
from __future__ import annotations

import math

from .runner import DependencyFailed, Result, _fmt_shape, data_fault


def _make(ndim):
    from ...model import problems
    return problems.geothermal2d if ndim == 2 else problems.geothermal3d


class Chain:
    """The forward -> gradient -> descent computation on one communicator."""

    def __init__(self, ndim, shape, comm, bk, overlap, smoothing_steps):
        from ...solvers import PTParams
        self.ndim, self.shape, self.comm, self.bk = ndim, shape, comm, bk
        self.overlap, self.smoothing_steps = overlap, smoothing_steps
        self.params = PTParams()

    def forward(self):
        from ...inverse import Observations
        from ...model.geothermal import workshop_points
        from ...io import gather_cells, gather_faces
        from ...solvers import DarcySolver
        true = _make(self.ndim)(self.shape, comm=self.comm)
        s = DarcySolver(true, self.bk, self.params, overlap=self.overlap)
        st = s.solve()
        d, th = s.decomp, self.bk.to_host
        out = {"Pf": gather_cells(d, st.Pf, th)}
        for a in range(self.ndim):
            out[f"q{'xyz'[a]}"] = gather_faces(d, st.q[a], a, th)
        self.obs = Observations(true.grid, workshop_points(self.ndim), demean=true.gauge_free)
        self.obs.record(st.Pf, self.bk)
        self.grid_dims = d.dims
        r = st.result
        return out, {"iterations": r.iterations, "residual": r.residual,
                     "converged": r.converged, "overlap": s.overlap}

    def gradient(self):
        from ...inverse import AdjointGradient
        from ...inverse.regularisation import GradientSmoother
        from ...io import gather_cells
        model = _make(self.ndim)(self.shape, comm=self.comm, k_background=1.0, k_barrier=1.0)
        self.G = AdjointGradient(model, self.obs, self.bk, self.params, self.params,
                                 overlap=self.overlap)
        self.S = GradientSmoother(model.grid, self.bk, self.smoothing_steps)
        J, g, info = self.G()
        gs = self.S.apply(g)
        d, th = model.grid.decomp, self.bk.to_host
        self.model = model
        return ({"J": J, "g": gather_cells(d, g, th), "g_smoothed": gather_cells(d, gs, th)},
                info)

    def descent(self, steps):
        import numpy as np
        from ...inverse.optimise import GradientDescent, OptimiserSettings
        from ...io import gather_cells
        opt = GradientDescent(self.G, self.S, OptimiserSettings(method="gd"))
        hist = [opt.start(np.zeros(self.model.grid.decomp.padded_shape))]
        for _ in range(steps):
            hist.append(opt.step())
        x = gather_cells(self.model.grid.decomp, opt.arrays["x"], self.bk.to_host)
        return {"misfit": [h["misfit"] for h in hist], "step": [h["step"] for h in hist],
                "logK": x}, hist


def _perturb(value):
    """One value of a result changed by one ulp-ish step (fault injection)."""
    import numpy as np
    if isinstance(value, list):
        v = list(value)
        v[-1] = float(np.nextafter(v[-1], math.inf))
        return v
    if isinstance(value, np.ndarray):
        v = value.copy()
        flat = v.reshape(-1)
        flat[flat.size // 2] = np.nextafter(flat[flat.size // 2], np.inf)
        return v
    return float(np.nextafter(value, math.inf))


def compare_exact(par: dict, ref: dict) -> list[str]:
    """Names (with the first differing index) of the entries of ``par`` not bitwise equal to
    ``ref``."""
    import numpy as np
    bad = []
    for k, a in par.items():
        b = ref[k]
        if isinstance(a, np.ndarray):
            if a.shape != b.shape or a.dtype != b.dtype:
                bad.append(f"{k} shape/dtype {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
                continue
            diff = a.view(np.uint8).reshape(a.shape + (-1,)) != \
                b.view(np.uint8).reshape(b.shape + (-1,))
            if diff.any():
                idx = tuple(int(i) for i in np.argwhere(diff.any(axis=-1))[0])
                n = int(np.count_nonzero(diff.any(axis=-1)))
                bad.append(f"{k}: {n} value(s) differ, first at {idx}: {a[idx].item()!r} vs "
                           f"{b[idx].item()!r}")
        elif isinstance(a, list):
            if len(a) != len(b) or any(np.float64(x).tobytes() != np.float64(y).tobytes()
                                       for x, y in zip(a, b)):
                i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                where = f" at {i}: {a[i]!r} vs {b[i]!r}" if i is not None else \
                    f" (lengths {len(a)} vs {len(b)})"
                bad.append(f"{k}{where}")
        elif np.float64(a).tobytes() != np.float64(b).tobytes():
            bad.append(f"{k}: {a!r} vs {b!r}")
    return bad


def _against_reference(ctx, name, par, ref_fn, describe) -> Result:
    """Rank 0: compare the gathered parallel result ``par`` with ``ref_fn()`` (COMM_SELF)."""
    comm = ctx["comm"]
    if comm.Get_rank() != 0:
        return Result()
    if ctx["runner"].fault_for(name):
        key = next(iter(par))
        par = dict(par, **{key: _perturb(par[key])})
    ref = ref_fn()
    bad = compare_exact(par, ref)
    if bad:
        return Result("FAIL", f"not bitwise equal to 1 rank: {'; '.join(bad)}")
    return describe()


@data_fault
def check_forward(ctx, ndim) -> Result:
    world, ref = ctx["chains"][ndim]
    par, info = world.forward()
    ctx["done"].add(("forward", ndim))
    name = f"forward-{ndim}d"
    dims = _fmt_shape(world.grid_dims)

    def ref_fn():
        out, rinfo = ref.forward()
        if rinfo["iterations"] != info["iterations"]:
            raise AssertionError(f"{info['iterations']} iterations on {comm_size(ctx)} ranks, "
                                 f"{rinfo['iterations']} on 1")
        return out

    def describe():
        status = "PASS" if info["converged"] else "WARN"
        conv = "" if info["converged"] else " NOT converged,"
        return Result(status, f"{_fmt_shape(world.shape)} on {dims} ranks (overlap "
                      f"{'on' if info['overlap'] else 'off'}): Pf, q bitwise = 1 rank;{conv} "
                      f"{info['iterations']} iterations, residual {info['residual']:.1e}")
    return _against_reference(ctx, name, par, ref_fn, describe)


def comm_size(ctx):
    return ctx["comm"].Get_size()


def _need(ctx, what, ndim):
    if (what, ndim) not in ctx["done"]:
        raise DependencyFailed(f"needs {what}-{ndim}d, which did not complete")


@data_fault
def check_gradient(ctx, ndim) -> Result:
    _need(ctx, "forward", ndim)
    world, ref = ctx["chains"][ndim]
    par, info = world.gradient()
    ctx["done"].add(("gradient", ndim))

    def describe():
        return Result("PASS", f"J = {par['J']:.6e}, dJ/dlogK and its smoothing "
                      f"({world.smoothing_steps} steps) bitwise = 1 rank; forward "
                      f"{info['forward_iterations']}, adjoint {info['adjoint_iterations']} "
                      "iterations")
    return _against_reference(ctx, f"gradient-{ndim}d", par, lambda: _ref_gradient(ref),
                              describe)


def _ref_gradient(ref):
    if not hasattr(ref, "obs"):
        ref.forward()
    return ref.gradient()[0]


@data_fault
def check_descent(ctx, ndim) -> Result:
    _need(ctx, "gradient", ndim)
    world, ref = ctx["chains"][ndim]
    steps = ctx["sizes"].gd_steps
    par, hist = world.descent(steps)

    def ref_fn():
        if not hasattr(ref, "G"):
            _ref_gradient(ref)
        return ref.descent(steps)[0]

    def describe():
        m = par["misfit"]
        rejected = sum(1 for h in hist if "rejected" in h.get("note", ""))
        note = f", {rejected} step(s) rejected" if rejected else ""
        return Result("PASS", f"{steps} steps: J/J0 = {m[-1] / m[0]:.4f}{note}; misfit "
                      "history and logK bitwise = 1 rank")
    return _against_reference(ctx, f"descent-{ndim}d", par, ref_fn, describe)
