"""Forward warm starts from a subspace of earlier solutions (issue 12, ``forward_memory``).

* the Galerkin mix is exact when the new solution lies in the span of the kept ones (a linear
  test: the source varies, the operator stays; the start is the linear extrapolation and the
  solve converges at its first check);
* ``gram_solve`` is exact and drops dependent columns; a useless subspace, or a mix that would
  raise the energy error (the guard), leaves the plain start;
* the coefficients and the start are bitwise the same on 1 and 2-4 ranks (``mpiexec -n 2|3|4
  python -m pytest --with-mpi tests/test_forward_warm.py``);
* an inversion with it is bitwise the same across a restart, its checkpoint holds the subspace.
"""
from dataclasses import replace

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinv.inverse.forward_warm import ForwardSubspace, gram_solve
from hpcinv.model.problems import geothermal2d
from hpcinv.solvers import DarcySolver, PTParams
from hpcinv.solvers.apt import next_check

SHAPE = (37, 19)
C_TRUE = [0.3, -0.7]


def _block(problem, glob):
    """The padded local array of the global cell array ``glob`` on ``problem``'s decomposition."""
    d = problem.grid.decomp
    local = np.zeros(d.padded_shape)
    local[d.owned()] = glob[tuple(slice(o, o + n) for o, n in zip(d.offset, d.local_shape))]
    return local


def _sources(problem):
    """Three sources: the problem's and two smooth global patterns (replicated definition)."""
    x, y = np.meshgrid(np.linspace(0, 1, SHAPE[0]), np.linspace(0, 1, SHAPE[1]), indexing="ij")
    return [problem.Qf.copy(), _block(problem, np.sin(3 * x) * np.cos(2 * y)),
            _block(problem, np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) * 20))]


def _start(comm, backend, tol=1e-12):
    """A solver, its kept solutions of the sources Q1, Q2 and the plain start (solution of Q0),
    then the start for the source Q0 + sum_i C_TRUE_i (Q_i - Q0). Returns (solver, subspace, c,
    the exact extrapolation of the solutions, the new source)."""
    p = geothermal2d(SHAPE, comm=comm, k_barrier=1e-2)
    p = replace(p.copy(), fixed_pressure={(0, 0): 0.5, (1, 1): -0.25})
    s = DarcySolver(p, backend, PTParams(tol=tol))
    sols = []
    for Q in _sources(p):
        s.set_source(Q)
        s.set_state()
        st = s.solve()
        sols.append((backend.clone(st.Pf), [backend.clone(a) for a in st.q]))
    sub = ForwardSubspace(s, 2)
    for i, (P, q) in enumerate(sols[1:]):
        sub.push(np.array([float(i)]), P, q)
    Q0, Q1, Q2 = _sources(p)
    s.set_source(Q0 + C_TRUE[0] * (Q1 - Q0) + C_TRUE[1] * (Q2 - Q0))
    c = sub.start(*sols[0])
    P0, P1, P2 = (backend.to_host(P) for P, _ in sols)
    return s, sub, c, P0 + C_TRUE[0] * (P1 - P0) + C_TRUE[1] * (P2 - P0)


def test_galerkin_start_is_exact_in_the_span(backend):
    s, sub, c, expected = _start(MPI.COMM_SELF, backend)
    assert np.allclose(c, C_TRUE, rtol=1e-8, atol=1e-9), c
    own = s.decomp.owned()
    P = backend.to_host(s.Pf)
    assert np.allclose(P[own], expected[own], rtol=0, atol=1e-9 * np.max(np.abs(expected)))
    assert sub.counts == {"fits": 1, "used": 1, "guarded": 0}
    s.set_params(PTParams(tol=1e-8))
    assert s.solve().result.iterations == next_check(0, s.params.ncheck)   # at the first check


def test_useless_subspace_keeps_the_plain_start(backend):
    p = geothermal2d(SHAPE, comm=MPI.COMM_SELF, k_barrier=1e-2)
    s = DarcySolver(p, backend, PTParams(tol=1e-6))
    st = s.solve()
    P, q = backend.clone(st.Pf), [backend.clone(a) for a in st.q]
    sub = ForwardSubspace(s, 3)
    assert sub.start(P, q) is None                  # nothing kept
    sub.push(np.array([0.0]), P, q)                 # the same solution: no direction
    assert sub.start(P, q) is None and sub.counts["fits"] == 0
    np.testing.assert_array_equal(backend.to_host(s.Pf), backend.to_host(P))


def test_guard_keeps_the_plain_start_when_the_mix_is_worse(backend, monkeypatch):
    """A mix that raises the energy error (here: forced coefficients far off the Galerkin ones)
    is replaced by the plain start; the Galerkin one passes the same check."""
    s, sub, c, _ = _start(MPI.COMM_SELF, backend, tol=1e-6)
    assert sub.counts["used"] == 1
    P0 = backend.clone(s.Pf)                     # any plain start will do: this one
    q0 = [backend.clone(a) for a in s.q]
    galerkin = sub.coefficients                  # fills r_0, which the guard reads
    monkeypatch.setattr(sub, "coefficients", lambda P, r0, work: galerkin(P, r0, work) and
                        [40.0, -25.0])
    assert sub.start(P0, q0) is None
    assert sub.counts == {"fits": 2, "used": 1, "guarded": 1}
    np.testing.assert_array_equal(backend.to_host(s.Pf), backend.to_host(P0))
    for a, b in zip(s.q, q0):
        np.testing.assert_array_equal(backend.to_host(a), backend.to_host(b))


def test_gram_solve_is_exact_and_drops_dependent_columns():
    rng = np.random.default_rng(0)
    V = rng.standard_normal((30, 3))
    c_true = np.array([0.5, -2.0, 3.0])
    G, b = (V.T @ V).tolist(), (V.T @ (V @ c_true)).tolist()
    assert np.allclose(gram_solve(G, b), c_true, atol=1e-10)
    W = np.column_stack([V, 2 * V[:, 0]])             # a dependent fourth column: dropped
    c = gram_solve((W.T @ W).tolist(), (W.T @ (V @ c_true)).tolist())
    assert c[3] == 0.0 and np.allclose(W @ np.array(c), V @ c_true, atol=1e-9)
    assert gram_solve([[0.0]], [0.0]) == [0.0]


@pytest.mark.mpi(min_size=2)
def test_start_is_bitwise_the_same_on_any_decomposition(backend):
    """c and the start's fields on COMM_WORLD (2-4 ranks, uneven) against one rank."""
    comm = MPI.COMM_WORLD
    s1, _, c1, _ = _start(MPI.COMM_SELF, backend, tol=1e-4)
    sw, _, cw, _ = _start(comm, backend, tol=1e-4)
    assert cw == c1 and any(cw)
    assert len({tuple(c) for c in comm.allgather(cw)}) == 1
    d = sw.decomp
    mine = tuple(slice(o + 1, o + 1 + n) for o, n in zip(d.offset, d.local_shape))
    for a1, aw in zip((s1.Pf, *s1.q), (sw.Pf, *sw.q)):
        np.testing.assert_array_equal(backend.to_host(aw)[d.owned()],
                                      backend.to_host(a1)[mine])


def test_restart_with_forward_memory_is_bitwise(tmp_path):
    """A 4-iteration run continued to 8 is the 8-iteration run (GD, forward_memory 2); the
    checkpoint holds the kept forward solutions."""
    from hpcinv.app.cli import main
    from test_adaptive import _small
    from test_inversion import final, history, run_cli, strip
    r8, r4 = tmp_path / "r8", tmp_path / "r4"
    assert main(["invert", str(_small(tmp_path, 8, forward_memory=2)), "-q", "-o", str(r8)]) == 0
    assert main(["invert", str(_small(tmp_path, 4, forward_memory=2)), "-q", "-o", str(r4)]) == 0
    names = []
    for ck in r4.glob("checkpoint*.h5"):
        with h5py.File(ck) as f:
            f.visit(names.append)
    assert any("forward_basis1_Pf" in n for n in names), names
    p = run_cli("invert", "--restart", r4, "--iterations", 8, "-q")
    assert p.returncode == 0, p.stderr
    assert strip(history(r4)) == strip(history(r8))
    assert np.array_equal(final(r4), final(r8))
