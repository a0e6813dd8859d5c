"""PETSc plumbing for :mod:`hpcinv.solvers.petsc`: importing petsc4py safely, the KSP
parameters, the global numbering of hpcinv's blocks on a DMDA, and small helpers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..parallel import split_extent
from .apt import PTParams

_PETSC = None


def petsc_available() -> bool:
    """True when petsc4py imports (the optional ``petsc`` extra is installed)."""
    try:
        import_petsc()
        return True
    except ImportError:
        return False


def import_petsc():
    """``petsc4py.PETSc``, initialised on first use with ``-no_signal_handler``: PETSc's signal
    handlers would otherwise replace Python's (the inversion driver's SIGTERM checkpoint).
    Options from ``PETSC_OPTIONS`` are read as usual. Raises ``ImportError`` with the install
    hint when petsc4py is missing."""
    global _PETSC
    if _PETSC is not None:
        return _PETSC
    try:
        import petsc4py
    except ImportError as exc:
        raise ImportError("the PETSc solver needs petsc4py: pip install 'hpcinv[petsc]' "
                          "(builds PETSc from source, see docs/petsc.md)") from exc
    try:
        petsc4py.init(["hpcinv", "-no_signal_handler"])    # no-op if already initialised
    except Exception:   # pragma: no cover - already imported/initialised elsewhere
        pass
    from petsc4py import PETSc
    _PETSC = PETSc
    return PETSc


NORMS = ("max", "l2")
#: Extra KSP rounds when hpcinv's residual misses tol after the KSP converged (see solve).
POLISH_ROUNDS = 3


@dataclass
class PetscParams:
    """Parameters of the PETSc solve.

    Attributes:
        tol: the APT criterion ``max|div q - Qf| / max|Qf| < tol`` (``norm="max"``), or the
            relative unpreconditioned 2-norm (``norm="l2"``).
        maxiter: Krylov iteration budget (``None``: 10000).
        ksp_type, pc_type: PETSc KSP and PC types (default CG + GAMG).
        norm: ``"max"`` (the APT criterion, see the module doc) or ``"l2"``.
        options: further PETSc options without the leading ``-`` and prefix, e.g.
            ``{"pc_gamg_threshold": 0.02, "ksp_monitor": None}`` (``None``: a flag).
        prefix: options prefix of the KSP.
    """
    tol: float = 1e-8
    maxiter: int | None = None
    ksp_type: str = "cg"
    pc_type: str = "gamg"
    norm: str = "max"
    options: dict = field(default_factory=dict)
    prefix: str = "hpcinv_"

    def validate(self, section: str = "solver"):
        if not (0 < self.tol < 1):
            raise ConfigError(f"{section}.tol must be in (0, 1), got {self.tol}")
        if self.maxiter is not None and self.maxiter < 1:
            raise ConfigError(f"{section}.maxiter must be >= 1, got {self.maxiter}")
        if self.norm not in NORMS:
            raise ConfigError(f"{section}.petsc norm must be one of {', '.join(NORMS)}, "
                              f"got {self.norm!r}")

    @classmethod
    def from_pt(cls, pt: PTParams, base: "PetscParams | None" = None) -> "PetscParams":
        """Tolerance (and an explicit iteration budget) of APT parameters, with the Krylov
        settings of ``base``: lets code written for APT (``AdjointGradient``) drive this
        solver."""
        base = base if base is not None else cls()
        return cls(pt.tol, base.maxiter, base.ksp_type, base.pc_type, base.norm,
                   dict(base.options), base.prefix)


def global_ids(decomp) -> np.ndarray:
    """PETSc global index of every cell of the padded local block (``-1`` outside the domain).

    Rank ``r``'s block holds the contiguous indices ``start_r .. start_r + size_r - 1``, ranks
    in communicator order, cells in C order within a block (the DMDA ordering with reversed
    axes, see the module doc)."""
    nd, dims, shape = decomp.ndim, decomp.dims, decomp.global_shape
    sizes = [np.array([split_extent(n, p, c)[0] for c in range(p)]) for n, p in zip(shape, dims)]
    offs = [np.array([split_extent(n, p, c)[1] for c in range(p)]) for n, p in zip(shape, dims)]
    block = sizes[0]
    for a in range(1, nd):
        block = np.multiply.outer(block, sizes[a])
    flat = block.ravel()          # row-major, last axis fastest = Cartesian rank order
    starts = np.concatenate([[0], np.cumsum(flat)[:-1]]).reshape(dims)
    coord, local, valid = [], [], []
    for a in range(nd):
        g = np.arange(decomp.padded_shape[a]) - 1 + decomp.offset[a]
        ok = (g >= 0) & (g < shape[a])
        gc = np.clip(g, 0, shape[a] - 1)
        c = np.searchsorted(offs[a], gc, side="right") - 1
        coord.append(c)
        local.append(gc - offs[a][c])
        valid.append(ok)
    mesh = np.ix_(*[np.arange(decomp.padded_shape[a]) for a in range(nd)])
    C = [coord[a][mesh[a]] for a in range(nd)]
    L = [local[a][mesh[a]] for a in range(nd)]
    ids = starts[tuple(C)].astype(np.int64)
    stride = np.ones(1, dtype=np.int64)
    for a in reversed(range(nd)):
        ids = ids + L[a] * stride
        stride = stride * sizes[a][C[a]]
    ok = valid[0][mesh[0]]
    for a in range(1, nd):
        ok = ok & valid[a][mesh[a]]
    return np.where(ok, ids, -1)


_OWN_OPTIONS: set = set()


def _shifted(own, axis: int, sgn: int):
    """The owned-cell slices moved by ``sgn`` cells along ``axis``."""
    sl = list(own)
    s = own[axis]
    sl[axis] = slice(s.start + sgn, s.stop + sgn)
    return tuple(sl)


def _reason_name(PETSc, reason) -> str:
    for k, v in vars(PETSc.KSP.ConvergedReason).items():
        if not k.startswith("_") and v == reason:
            return k
    return str(reason)
