"""PETSc (petsc4py) solver of the same discrete Darcy problem: a peer and an alternative to APT.

The operator is assembled from the discretisation in ``docs/theory.md`` (not from the APT
kernels): with ``Kf = (K_l + K_r) / 2`` on the face between cells ``l`` and ``r`` along axis
``a`` (spacing ``d_a``), ``A P = div q = -div(Kf grad P)``::

    (A P)[c] = sum_a sum_{faces f of c along a, active} Kf[f] (P[c] - P[nb(c, f)]) / d_a**2
             + sum_{fixed-pressure sides of c} 2 K[c] P[c] / d_a**2

and ``A P = Qf + b`` with ``b[c] = sum_{fixed sides} 2 K[c] Pb / d_a**2`` (0 in the homogeneous
adjoint mode); no-flux walls contribute nothing. ``A`` is symmetric positive (semi)definite, so
the default Krylov method is CG, preconditioned by PETSc's algebraic multigrid GAMG. With no
fixed-pressure side ``A`` is singular (the constants are its null space): the constant null
space is attached (to ``A`` and as its transpose null space, so PETSc projects the right-hand
side), and after the solve the solution is shifted to the APT gauge
``sum(Kmax_loc * Pf) = 0`` (``docs/theory.md``, "The gauge").

Decomposition: a PETSc DMDA with exactly hpcinv's split. hpcinv's Cartesian communicator ranks
blocks row-major over the process coordinates with the *last* axis fastest, and stores arrays in
C order (last axis fastest); a DMDA ranks blocks and stores vectors with its *x* axis fastest.
So the DMDA axes are hpcinv's axes reversed (DMDA x = hpcinv's last axis), with hpcinv's process
grid (reversed) and explicit ownership ranges from :func:`~hpcinv.parallel.split_extent`: the
DMDA block of rank ``r`` is then hpcinv's block of rank ``r``, and the local part of a PETSc
vector reshaped to ``decomp.local_shape`` is hpcinv's owned block, without any transpose. The
constructor checks this (ownership ranges and vector layout) and raises if it ever fails.

Tolerance: APT stops when ``max|RPf| / max|Qf| < tol`` with ``RPf = div q - Qf``, i.e. on the
max-norm of the unpreconditioned residual ``r = Qf + b - A P = -RPf``. With ``norm="max"`` (the
default) the KSP runs with the unpreconditioned norm and a convergence test that applies this
same criterion: the 2-norm that CG provides bounds the max-norm from above, so
``|r|_2 <= tol max|Qf|`` is accepted at once, and once ``|r|_2 <= tol max|Qf| sqrt(N)`` (the
max-norm can only then be below the threshold) the true residual is built and its max-norm
tested (one extra matrix-vector product, for the last few iterations only). With
``norm="l2"`` PETSc's own test is used on the unpreconditioned 2-norm, relative to ``|b|_2``
(``rtol = tol``). Either way the result reports the APT-style residual ``max|RPf| / max|Qf|``,
computed after the solve by hpcinv's own residual kernels from the fluxes ``q`` (which are
derived from ``Pf`` by the flux kernel: zero on walls, the half-cell flux on fixed sides).

PETSc options: the KSP uses the options prefix ``hpcinv_`` (``PetscParams.prefix``), so
``PETSC_OPTIONS="-hpcinv_ksp_monitor -hpcinv_pc_gamg_threshold 0.02"`` or
``PetscParams(options={"pc_gamg_threshold": 0.02})`` reach it; options given on the command
line / in ``PETSC_OPTIONS`` win over ``PetscParams``.
"""
from __future__ import annotations

import math
import time
import numpy as np
from mpi4py import MPI

from ..backend import Backend
from ..errors import ConfigError, SolverDivergedError
from ..parallel import split_extent
from ..physics.residuals import flux_residual_kernel, pressure_residual_kernel
from .apt import PTParams, PTResult
from .fields import DarcyFields, ForwardState
from .petsc_setup import (_OWN_OPTIONS, POLISH_ROUNDS, PetscParams, _reason_name, _shifted,
                          global_ids, import_petsc)

class PetscDarcySolver(DarcyFields):
    """KSP solver (CG + GAMG by default) of the discrete Darcy problem on a PETSc DMDA with
    hpcinv's decomposition; the same public interface as :class:`~hpcinv.solvers.DarcySolver`.

    Args:
        problem: a :class:`~hpcinv.model.problems.Problem`.
        backend: hpcinv backend of the fields and of the flux/residual kernels (default auto);
            PETSc itself runs on the host (GPU arrays are copied).
        params: :class:`PetscParams`, or :class:`PTParams` (its ``tol`` is used).
        overlap, cuda_aware: accepted for interface compatibility (``cuda_aware`` is passed to
            the halo exchange of ``Pf``).
        dtype: dtype of the fields (PETSc computes in float64).

    After :meth:`solve`, ``timings`` holds ``assemble``, ``setup`` (preconditioner) and ``solve``
    seconds of that call (0 where nothing had to be redone), and ``ksp_reason`` PETSc's
    converged reason. ``result.residual`` is the APT-style ``max|div q - Qf| / max|Qf|``;
    ``result.history`` holds ``(iteration, |r|_2 / max|Qf|)`` as the KSP saw it (``norm="max"``).
    """

    method = "petsc"

    def __init__(self, problem, backend: Backend | None = None, params=None,
                 overlap: bool = True, dtype=np.float64, cuda_aware: bool | None = None):
        PETSc = import_petsc()
        self.PETSc = PETSc
        if np.dtype(PETSc.ScalarType) != np.float64:
            raise ImportError(f"the PETSc build uses scalars of type {PETSc.ScalarType}; hpcinv "
                              f"needs real double precision")
        super().__init__(problem, backend, dtype, cuda_aware)
        nd, bk = self.grid.ndim, self.backend
        self._flux = bk.kernel(flux_residual_kernel(nd), nd, self.dtype)
        self._presid = bk.kernel(pressure_residual_kernel(nd), nd, self.dtype)
        self._bound = {}            # flux/residual kernels bound by name (see _residual_kernels)
        self.gauge_free = problem.gauge_free
        self.timings = {"assemble": 0.0, "setup": 0.0, "solve": 0.0}
        self.ksp_reason = None
        self._create_petsc_objects()
        self.set_params(params if params is not None else PetscParams())
        self._dirty = True          # matrix values need (re)assembly
        self._pc_dirty = True       # preconditioner needs (re)setup

    # --- PETSc objects ------------------------------------------------------------------
    def _create_petsc_objects(self):
        PETSc, d = self.PETSc, self.decomp
        nd = d.ndim
        rev = list(reversed(range(nd)))
        ranges = [[split_extent(d.global_shape[a], d.dims[a], c)[0] for c in range(d.dims[a])]
                  for a in rev]
        self.da = PETSc.DMDA().create(
            dim=nd, dof=1, sizes=[d.global_shape[a] for a in rev],
            proc_sizes=[d.dims[a] for a in rev], ownership_ranges=ranges,
            stencil_type=PETSc.DMDA.StencilType.STAR, stencil_width=1, comm=d.comm)
        # The DMDA block of this rank must be hpcinv's block of this rank.
        got = [tuple(r) for r in self.da.getRanges()]
        want = [(d.offset[a], d.offset[a] + d.local_shape[a]) for a in rev]
        if got != want:
            raise RuntimeError(f"PETSc DMDA block {got} differs from hpcinv's {want} on rank "
                               f"{d.rank}: the rank orderings do not match")
        self.gid = global_ids(d)
        own = d.owned()
        rows = self.gid[own].ravel()
        self.x = self.da.createGlobalVec()
        self.b = self.x.duplicate()
        self.r = self.x.duplicate()
        start, end = self.x.getOwnershipRange()
        if rows.size and (start != rows[0] or end != rows[-1] + 1):
            raise RuntimeError(f"PETSc vector ownership ({start}, {end}) differs from hpcinv's "
                               f"block ({rows[0]}, {rows[-1] + 1}) on rank {d.rank}")
        self.nglobal = int(np.prod(d.global_shape))
        # Sparsity pattern: the diagonal, then per axis the lower and upper neighbours.
        I, J, self._nbmask = [rows], [rows], []
        for a in range(nd):
            for sgn in (-1, 1):
                sl = _shifted(own, a, sgn)
                nb = self.gid[sl].ravel()
                m = nb >= 0
                self._nbmask.append((a, sgn, sl, m))
                I.append(rows[m])
                J.append(nb[m])
        idx = PETSc.IntType
        self.A = PETSc.Mat().create(comm=d.comm)
        self.A.setSizes(((rows.size, self.nglobal), (rows.size, self.nglobal)))
        self.A.setType(PETSc.Mat.Type.AIJ)
        self.A.setPreallocationCOO(np.concatenate(I).astype(idx), np.concatenate(J).astype(idx))
        self.A.setOption(PETSc.Mat.Option.SYMMETRIC, True)
        self.A.setOption(PETSc.Mat.Option.SPD, not self.gauge_free)
        if self.gauge_free:
            self.nullspace = PETSc.NullSpace().create(constant=True, comm=d.comm)
            self.A.setNullSpace(self.nullspace)
            self.A.setTransposeNullSpace(self.nullspace)
        self.ksp = PETSc.KSP().create(comm=d.comm)
        self.ksp.setOperators(self.A)

    def _configure_ksp(self):
        PETSc, p = self.PETSc, self.params
        ksp = self.ksp
        ksp.setOptionsPrefix(p.prefix)
        ksp.setType(p.ksp_type)
        ksp.getPC().setType(p.pc_type)
        opts = PETSc.Options()
        added = []
        for k, v in p.options.items():
            key = p.prefix + str(k).lstrip("-")
            if opts.hasName(key) and key not in _OWN_OPTIONS:
                continue                  # set on the command line / PETSC_OPTIONS: it wins
            opts[key] = "" if v is None else (("true" if v else "false") if isinstance(v, bool)
                                              else v)
            _OWN_OPTIONS.add(key)
            added.append(key)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        maxit = p.maxiter if p.maxiter is not None else 10000
        if p.norm == "l2":
            ksp.setTolerances(rtol=p.tol, atol=0.0, max_it=maxit)
        else:
            ksp.setTolerances(rtol=0.0, atol=0.0, max_it=maxit)
        ksp.setFromOptions()
        for key in added:
            opts.delValue(key)
            _OWN_OPTIONS.discard(key)
        if p.norm == "max":
            ksp.setConvergenceTest(self._converged)
        elif getattr(self, "_custom_test", False):
            ksp.setConvergenceTest(None)          # back to PETSc's default test
        self._custom_test = p.norm == "max"
        self._maxit = ksp.getTolerances()[3]

    def _converged(self, ksp, its, rnorm):
        """The APT criterion ``max|r| <= tol max|Qf|`` (see the module doc)."""
        R = self.PETSc.KSP.ConvergedReason
        self._history.append((int(its), float(rnorm)))
        thr = self._threshold
        if not math.isfinite(rnorm):
            return R.DIVERGED_NANORINF
        if rnorm <= thr:
            return R.CONVERGED_ATOL
        if rnorm <= thr * math.sqrt(self.nglobal):
            r = ksp.buildResidual(self.r)
            if r.norm(self.PETSc.NormType.INFINITY) <= thr:
                return R.CONVERGED_ATOL
        if its >= self._maxit:
            return R.DIVERGED_MAX_IT
        return R.CONVERGED_ITERATING

    # --- the DarcySolver interface ----------------------------------------------------------
    def set_params(self, params):
        """:class:`PetscParams`, or :class:`PTParams` (APT parameters: their ``tol`` is taken,
        the Krylov settings kept), used from the next solve on."""
        if isinstance(params, PTParams):
            params.validate()
            params = PetscParams.from_pt(params, getattr(self, "petsc_params", None))
        if not isinstance(params, PetscParams):
            raise ConfigError(f"PetscDarcySolver params must be PetscParams or PTParams, got "
                              f"{type(params).__name__}")
        params.validate()
        old = getattr(self, "petsc_params", None)
        self.params = self.petsc_params = params
        if old is None or (old.ksp_type, old.pc_type, old.norm, old.options, old.prefix,
                           old.maxiter) != (params.ksp_type, params.pc_type, params.norm,
                                            params.options, params.prefix, params.maxiter):
            self._configure_ksp()
            self._pc_dirty = True
        elif params.norm == "l2":
            self.ksp.setTolerances(rtol=params.tol)

    def set_permeability(self, K):
        """Replace K (padded local array, owned cells read): the matrix is reassembled and the
        preconditioner rebuilt at the next solve."""
        super().set_permeability(K)
        self._dirty = self._pc_dirty = True

    def set_state(self, Pf=None, q=None, homogeneous: bool = False):
        """Initial guess of the next solve (``Pf``; ``q`` is derived from ``Pf`` and ignored);
        ``None`` starts from zero. ``homogeneous``: fixed-pressure sides hold 0 (adjoint)."""
        self.cold = Pf is None
        if Pf is None:
            self.backend.fill(self.Pf, 0)
        else:
            self.backend.copy(self.Pf, Pf)
        self.homogeneous = homogeneous
        self._apply_boundary_pressure()

    def solve(self, progress=None) -> ForwardState:
        """Solve ``A Pf = Qf + b`` by the KSP; returns the state with fluxes and the APT-style
        residual ``max|div q - Qf| / max|Qf|``. The state is borrowed (see
        :class:`~hpcinv.solvers.fields.ForwardState`)."""
        self.next_generation()
        PETSc, d, bk = self.PETSc, self.decomp, self.backend
        own = d.owned()
        t0 = time.perf_counter()
        t_asm = t_setup = 0.0
        if self._dirty:
            self._assemble()
            self._dirty = False
            t_asm = time.perf_counter() - t0
        if self._pc_dirty:
            t1 = time.perf_counter()
            self.ksp.setOperators(self.A)
            self.ksp.setUp()
            self._pc_dirty = False
            t_setup = time.perf_counter() - t1
        t2 = time.perf_counter()
        rhs = np.asarray(bk.to_host(self.Qf, region=own), dtype=np.float64)
        if not self.homogeneous and self._bK is not None:
            rhs = rhs + self._bK
        self.b.setArray(rhs.ravel())
        if self.cold:
            self.x.set(0.0)
        else:
            self.x.setArray(np.asarray(bk.to_host(self.Pf, region=own),
                                       dtype=np.float64).ravel())
        self.ksp.setInitialGuessNonzero(not self.cold)
        self._threshold = self.params.tol * self.scale
        self._history = []
        its = 0
        for attempt in range(POLISH_ROUNDS + 1):
            self.ksp.solve(self.b, self.x)
            reason = self.ksp.getConvergedReason()
            its += self.ksp.getIterationNumber()
            P = self.x.getArray(readonly=True).reshape(d.local_shape)
            if self.gauge_free:
                P = P - self._gauge_shift(P)
            bk.copy(self.Pf, P, region=own, src_region=(slice(None),) * d.ndim)
            self.halo.exchange(self.Pf)
            self._apply_boundary_pressure()
            err = self._fluxes_and_residual()
            # The KSP tested PETSc's residual b - A x; the reported one comes from hpcinv's
            # kernels. Near the rounding floor they can differ by a few ulps of the operator:
            # if the KSP stopped but hpcinv's residual is not yet below tol, continue from x
            # with a tighter threshold (rarely needed; only for tol close to rounding).
            if (err < self.params.tol or reason <= 0 or self.params.norm != "max"
                    or not math.isfinite(err)):
                break
            self._threshold *= 0.25
            self.ksp.setInitialGuessNonzero(True)
        self.ksp_reason = int(reason)
        t3 = time.perf_counter()
        self.timings = {"assemble": t_asm, "setup": t_setup, "solve": t3 - t2,
                        "total": t3 - t0}
        self.cold = True   # the next solve starts from zero unless set_state says otherwise
        bad = (reason < 0 and reason != PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT)
        what = "adjoint" if self.homogeneous else "forward"
        if bad or not math.isfinite(err):
            raise SolverDivergedError(f"PETSc {what} solve failed: KSP reason {int(reason)} "
                                      f"({_reason_name(PETSc, reason)}) after {its} iterations, "
                                      f"scaled residual {err:.3e}")
        history = [(i, r / self.scale) for i, r in self._history]
        if progress is not None:
            progress(its, err, t3 - t0, what)
        res = PTResult(its, err, err < self.params.tol, history, t3 - t0)
        return ForwardState(self.Pf, self.q, res, owner=self)

    # --- internals --------------------------------------------------------------------------
    def _assemble(self):
        """Matrix values (pattern fixed at construction) and the fixed-pressure part ``b(K)``
        of the right-hand side, from the current K."""
        d = self.decomp
        own = d.owned()
        K = np.asarray(self.backend.to_host(self.K), dtype=np.float64)
        Kc = K[own]
        diag = np.zeros(Kc.shape)
        off = []
        for a, sgn, sl, m in self._nbmask:
            t = 0.5 * (Kc + K[sl]) / self.grid.spacing[a] ** 2
            mm = m.reshape(Kc.shape)
            diag += np.where(mm, t, 0.0)
            off.append(-t.ravel()[m])
        bK = np.zeros(Kc.shape) if self.problem.fixed_pressure else None
        for (a, side), Pb in self.problem.fixed_pressure.items():
            if not (d.at_upper_boundary(a) if side else d.at_lower_boundary(a)):
                continue
            layer = tuple((-1 if side else 0) if b == a else slice(None) for b in range(d.ndim))
            w = 2.0 * Kc[layer] / self.grid.spacing[a] ** 2
            diag[layer] += w
            bK[layer] += w * Pb
        self._bK = bK
        self.A.setValuesCOO(np.concatenate([diag.ravel()] + off))
        self.A.assemble()

    def _gauge_shift(self, P):
        """The constant ``c`` making ``sum(Kmax_loc * (P - c)) = 0`` (one MPI SUM)."""
        d = self.decomp
        K = np.asarray(self.backend.to_host(self.K), dtype=np.float64)   # ghosts complete
        own = d.owned()
        kmax = K[own].copy()
        for a in range(d.ndim):
            for sgn in (-1, 1):
                np.maximum(kmax, K[_shifted(own, a, sgn)], out=kmax)
        s = d.comm.allreduce(np.array([np.sum(kmax * P), np.sum(kmax)]), op=MPI.SUM)
        return s[0] / s[1]

    def _fluxes_and_residual(self) -> float:
        """``q = -Kf grad Pf`` on every face of the owned cells (hpcinv's flux kernel with
        ``q = 0``: walls 0, half-cell flux on fixed sides), ``R = div q - Qf``; returns
        ``max|R| / max|Qf|``."""
        bk = self.backend
        box = ((1,) * len(self.last), tuple(n + 1 for n in self.last))
        flux, presid = self._residual_kernels()
        for qa in self.q_new:
            bk.fill(qa, 0)
        bk.launch(flux, box)                                      # q <- Kf grad P
        for qa in self.q:
            bk.elementwise(lambda xp, a: -a, qa, out=qa)          # q <- -Kf grad P
        bk.launch(presid, box)
        return self.decomp.comm.allreduce(bk.max_abs(self.R), op=MPI.MAX) / self.scale

    def _residual_kernels(self):
        """The flux kernel (``q = 0`` read from ``q_new``, ``Kf grad Pf`` written to ``q``) and
        the pressure residual kernel (``R = div q - Qf``), bound by name once per buffer set."""
        key = (id(self.Pf), id(self.q[0]))
        if key not in self._bound:
            self._bound[key] = (
                self._flux.bind(Pf=self.Pf, K=self.K, q=self.q_new, Rq=self.q, **self.geometry),
                self._presid.bind(q=self.q, Qf=self.Qf, RPf=self.R, **self.geometry))
        return self._bound[key]

    def describe(self) -> dict:
        """KSP and PC types and the PETSc version (for benchmark records)."""
        PETSc = self.PETSc
        return {"method": "petsc", "ksp_type": self.ksp.getType(),
                "pc_type": self.ksp.getPC().getType(), "norm": self.params.norm,
                "petsc_version": ".".join(str(v) for v in PETSc.Sys.getVersion())}

    def destroy(self):
        """Free the PETSc objects now (they are otherwise freed by garbage collection)."""
        for name in ("ksp", "A", "x", "b", "r", "da"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.destroy()
