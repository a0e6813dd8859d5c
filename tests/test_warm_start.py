"""Warm-start strategies (inverse/warm_start.py): the choice from the config keys, the one
exclusion check, the memory each reports, and switching them off on a live objective."""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.errors import ConfigError
from hpcinv.inverse import AdjointGradient, Observations
from hpcinv.inverse.warm_start import (AdjointStart, ForwardStart, PreviousSolution,
                                       RescaledAdjointStart, SubspaceAdjointStart,
                                       SubspaceForwardStart, warm_starts)
from hpcinv.model.geothermal import workshop_points
from hpcinv.model.problems import geothermal2d
from hpcinv.solvers import DarcySolver, PTParams


def test_choice_and_memory_fields():
    fs, ad = warm_starts(True, adjoint_memory=6, forward_memory=3)
    assert type(fs) is SubspaceForwardStart and type(ad) is SubspaceAdjointStart
    assert ad.memory_fields(2) == 6 * 2           # 6, the newest the kept one: P, 2 float32 q
    assert fs.memory_fields(2, f64=2) == 4 * 3    # the kept one and 3 more; float32 solver: 3
    assert fs.off().memory_fields(2) == ad.off().memory_fields(2) == 0
    fs, ad = warm_starts(True)
    assert type(fs) is PreviousSolution and type(ad) is RescaledAdjointStart
    assert fs.memory_fields(3) == ad.memory_fields(3) == 2.5   # P and 3 float32 q each
    fs, ad = warm_starts(False, adjoint_memory=6, forward_memory=3, prediction=4)
    assert type(fs) is ForwardStart and type(ad) is AdjointStart


def test_the_forward_alternatives_are_refused_before_the_predictor_is_built():
    def build():
        raise AssertionError("the coarse predictor was built")
    with pytest.raises(ConfigError, match="forward_prediction = 4 and inversion.forward_memory "
                                          "= 2 are alternatives"):
        warm_starts(True, 0, forward_memory=2, prediction=4, predictor=build)
    fs, _ = warm_starts(True, 0, forward_memory=0, prediction=4, predictor=lambda: None)
    assert type(fs) is PreviousSolution                   # no coarse grid possible: plain


def test_switched_off_strategies_start_cold(backend):
    true = geothermal2d((31, 15), comm=MPI.COMM_SELF)
    obs = Observations(true.grid, workshop_points(2))
    obs.record(DarcySolver(true.copy(), backend, PTParams(tol=1e-9)).solve().Pf, backend)
    G = AdjointGradient(geothermal2d((31, 15), comm=MPI.COMM_SELF, k_barrier=1.0), obs,
                        backend, PTParams(tol=1e-8), PTParams(tol=1e-8), warm_start=True)
    x = np.zeros(G.decomp.padded_shape)
    _, _, cold = G(x)
    _, _, warm = G(x)                       # the same model again: starts at the solution
    assert warm["forward_iterations"] < cold["forward_iterations"]
    assert G.state() and G.has_adjoint
    G.use_warm_starts(ForwardStart(), AdjointStart())
    _, _, off = G(x)
    assert (off["forward_iterations"], off["adjoint_iterations"]) == \
        (cold["forward_iterations"], cold["adjoint_iterations"])
    assert G.state() == {} and not G.has_adjoint
