"""The fields and boundary handling every Darcy solver shares (APT and PETSc).

:class:`DarcyFields` owns the padded local arrays on the backend (``K`` with complete ghosts,
``Qf``, ``Pf`` and ``q`` with their second buffers, the scratch ``R``), the halo exchange of
cell fields, the side masks and fixed-pressure ghosts, the residual scale and the state setters.
A solver adds its iteration (``solve``) and its parameters (``set_params``).
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..backend import Backend, make_backend
from ..errors import PermeabilityRangeError
from ..parallel import HaloExchange
from ..physics.darcy import WALL_BITS
from .apt import PTResult


class StaleStateError(RuntimeError):
    """A borrowed :class:`ForwardState` was read after its solver reused the buffers."""


class ForwardState:
    """A forward solution on this rank's block (backend arrays of the padded local shape).

    What ``solve()`` returns is **borrowed**: ``Pf`` and ``q`` are the solver's own iteration
    buffers, which its next solve (or a request for scratch buffers) reuses. Reading a borrowed
    state after that raises :class:`StaleStateError` instead of returning another solve's
    fields; keep ``state.copy()`` (owned arrays) to hold a solution across solves.

    Attributes:
        Pf: pressure (cell centres), ghosts valid.
        q: fluxes ``[qx, qy(, qz)]``; ``q[a]`` at padded index ``j`` along ``a`` is the face
           between cells ``j-1`` and ``j``.
        result: iteration count, residual, convergence and history.
    """

    def __init__(self, Pf, q, result: PTResult, owner=None):
        self._Pf, self._q, self.result = Pf, list(q), result
        self._owner = owner
        self._generation = owner.generation if owner is not None else None

    @property
    def borrowed(self) -> bool:
        """True while the arrays are the solver's buffers (see the class doc)."""
        return self._owner is not None

    def _check(self):
        if self._owner is not None and self._owner.generation != self._generation:
            raise StaleStateError(
                "this ForwardState was borrowed from its solver, which has solved again since "
                "(its buffers now hold another solution): keep state.copy() instead")

    @property
    def Pf(self):
        self._check()
        return self._Pf

    @property
    def q(self):
        self._check()
        return self._q

    def copy(self, backend=None) -> "ForwardState":
        """An owned copy (new backend arrays), valid whatever the solver does next."""
        self._check()
        bk = backend if backend is not None else self._owner.backend
        return ForwardState(bk.clone(self._Pf), [bk.clone(a) for a in self._q], self.result)


def boundary_bits(decomp, fixed_pressure) -> tuple[int, int]:
    """``(wall, fixed)`` side masks of this rank's block: the physical sides it touches that are
    no-flux and fixed-pressure (``fixed_pressure`` maps ``(axis, side)`` to a pressure)."""
    wall = fixed = 0
    for a in range(decomp.ndim):
        for side, touches in ((0, decomp.at_lower_boundary(a)), (1, decomp.at_upper_boundary(a))):
            if touches:
                if (a, side) in fixed_pressure:
                    fixed |= WALL_BITS[(a, side)]
                else:
                    wall |= WALL_BITS[(a, side)]
    return wall, fixed


def owned_range(a, decomp) -> tuple[float, float]:
    """``(min, max)`` of the owned cells of the padded local host array ``a`` over every rank
    (collective: one reduction)."""
    own = np.asarray(a)[decomp.owned()]
    lo, hi = (float(own.min()), float(own.max())) if own.size else (np.inf, -np.inf)
    buf = np.array([lo, -hi])
    if decomp.comm.Get_size() > 1:
        decomp.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MIN)
    return float(buf[0]), float(-buf[1])


def log_range(dtype) -> tuple[float, float]:
    """The ``log K`` whose ``K = exp(log K)`` are normal numbers of ``dtype``."""
    fi = np.finfo(dtype)
    return float(np.log(fi.tiny)), float(np.log(fi.max))


def check_permeability_range(K, dtype, decomp):
    """Raise :class:`~hpcinv.errors.PermeabilityRangeError` (on every rank) unless every owned
    K is a normal number of ``dtype``: a smaller K underflows to 0 or a subnormal (the solve
    then divides by it), a larger one overflows to inf. Collective."""
    fi, name = np.finfo(dtype), np.dtype(dtype).name
    tiny, big = float(fi.tiny), float(fi.max)       # compared as Python floats: no cast
    lo, hi = owned_range(K, decomp)
    if lo < tiny:
        raise PermeabilityRangeError(
            f"permeability K = {lo:.3g} underflows {name} (smallest normal {tiny:.3g})"
            f"{'; use float64 fields' if name == 'float32' else ''} or raise the smallest K",
            lo, hi, name)
    if hi > big:
        raise PermeabilityRangeError(
            f"permeability K = {hi:.3g} overflows {name} (largest {big:.3g})"
            f"{'; use float64 fields' if name == 'float32' else ''} or lower the largest K",
            lo, hi, name, overflow=True)


class DarcyFields:
    """Fields, ghosts and boundary values of a Darcy problem on this rank's block.

    Args:
        problem: a :class:`~hpcinv.model.problems.Problem` (validated here, collectively).
        backend: a :class:`~hpcinv.backend.Backend` (default: ``make_backend("auto")``).
        dtype: field dtype, ``float64`` (default) or ``float32``.
        cuda_aware: force CUDA-aware MPI on or off for the halo exchange (``None``: detect).
    """

    def __init__(self, problem, backend: Backend | None = None, dtype=np.float64,
                 cuda_aware: bool | None = None):
        problem.validate()
        self.problem = problem
        grid = problem.grid
        self.grid, self.decomp = grid, grid.decomp
        self.backend = bk = backend if backend is not None else make_backend("auto")
        self.dtype = np.dtype(dtype)
        nd, shape = grid.ndim, self.decomp.padded_shape
        check_permeability_range(problem.K, self.dtype, self.decomp)
        self.halo = HaloExchange(self.decomp, bk, self.dtype, cuda_aware=cuda_aware)
        self.K = bk.upload(problem.K, dtype=self.dtype)
        self._complete_ghosts(self.K)
        self.Qf = bk.upload(problem.Qf, dtype=self.dtype)
        # Ping-pong buffers: (Pf, q) of parity 0 and 1; the current state is _cur.
        self._P = [bk.zeros(shape, self.dtype), bk.zeros(shape, self.dtype)]
        self._Q = [[bk.zeros(shape, self.dtype) for _ in range(nd)] for _ in range(2)]
        self._cur = 0
        self.R = bk.zeros(shape, self.dtype)
        self.inv_d = tuple(1.0 / d for d in grid.spacing)
        self.last = tuple(self.decomp.local_shape)      # last owned padded index per axis
        self.wall, self.fixed = boundary_bits(self.decomp, problem.fixed_pressure)
        self.homogeneous = False
        self.cold = True
        self.generation = 0       # advanced when the iteration buffers are reused
        self._apply_boundary_pressure()
        self._set_scale()

    def next_generation(self):
        """The iteration buffers are about to be reused: states borrowed so far go stale."""
        self.generation += 1

    def scratch(self) -> dict:
        """The solver's iteration buffers, lent as scratch until its next solve: ``cells``
        (two cell arrays) and ``faces`` (two lists of ``ndim`` face arrays), contents
        undefined. Borrowed states of the last solve go stale (the buffers are theirs)."""
        self.next_generation()
        return {"cells": (self.R, self.Pf_new), "faces": (self.q_new, self.q)}

    # The current state and the other ping-pong buffer (swapped by each APT step).
    Pf = property(lambda self: self._P[self._cur])
    Pf_new = property(lambda self: self._P[1 - self._cur])
    q = property(lambda self: self._Q[self._cur])
    q_new = property(lambda self: self._Q[1 - self._cur])

    @property
    def geometry(self) -> dict:
        """Kernel arguments of the grid geometry: ``inv_d`` (1/m per axis), ``nl`` (last owned
        padded index per axis), ``wall`` and ``fixed`` (side bits)."""
        return {"inv_d": self.inv_d, "nl": self.last, "wall": self.wall, "fixed": self.fixed}

    def _set_scale(self):
        qmax = self.decomp.comm.allreduce(self.backend.max_abs(self.Qf), op=MPI.MAX)
        self.scale = qmax if qmax > 0 else 1.0

    def set_source(self, Qf):
        """Replace the source term (padded local array, 1/time); the adjoint solve uses this
        with ``Qf = dJ/dPf`` (the operator is symmetric, see ``docs/theory.md``)."""
        self.backend.copy(self.Qf, Qf)
        self._set_scale()

    def set_permeability(self, K):
        """Replace K (padded local array, owned cells read); ghosts are refreshed."""
        self.backend.copy(self.K, K)
        self._complete_ghosts(self.K)

    def set_state(self, Pf=None, q=None, homogeneous: bool = False):
        """Start the next solve from given fields (warm start); ``None`` resets to zero.

        ``homogeneous``: fixed-pressure sides hold 0 instead of their value (adjoint solves).
        """
        bk = self.backend
        self.cold = Pf is None and q is None
        if Pf is None:
            bk.fill(self.Pf, 0)
        else:
            bk.copy(self.Pf, Pf)
            self.halo.exchange(self.Pf)
        self.homogeneous = homogeneous
        self._apply_boundary_pressure()
        for a in range(self.grid.ndim):
            if q is None:
                bk.fill(self.q[a], 0)
            else:
                bk.copy(self.q[a], q[a])

    def _complete_ghosts(self, a):
        """Neighbours' values in the ghost layers, wall ghosts mirrored (for Kmax_loc)."""
        self.halo.exchange(a)
        nd = self.grid.ndim
        for ax in range(nd):
            def idx(i):
                return tuple(i if b == ax else slice(None) for b in range(nd))
            if self.decomp.at_lower_boundary(ax):
                self.backend.copy(a, a, region=idx(0), src_region=idx(1))
            if self.decomp.at_upper_boundary(ax):
                self.backend.copy(a, a, region=idx(-1), src_region=idx(-2))

    def _apply_boundary_pressure(self):
        """Fixed-pressure sides: the boundary pressure (0 if ``homogeneous``, as the adjoint
        needs) in the ghost layer of both Pf buffers. Kernels and halo exchanges never write
        ghost layers on physical sides, so this holds for the whole solve."""
        nd = self.grid.ndim
        for (axis, side), value in self.problem.fixed_pressure.items():
            if not (self.decomp.at_upper_boundary(axis) if side else
                    self.decomp.at_lower_boundary(axis)):
                continue
            idx = tuple((-1 if side else 0) if b == axis else slice(None) for b in range(nd))
            for P in self._P:
                self.backend.fill(P, 0.0 if self.homogeneous else value, region=idx)
