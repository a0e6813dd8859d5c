"""The progress line of an inversion (issue 13): ETA from the time per iteration, excluding the
one-off setup before iteration 0; a restart estimates from the run's average at first."""
from hpcinv.app.run import Reporter


def lines(recs, total):
    out = []
    r = Reporter(say=lambda text, **kw: out.append(text))
    for k, wall in recs:
        r.iteration({"iteration": k, "wall_time": wall, "misfit_ratio": 1.0, "max_dlogK": 0.1,
                     "forward_iterations": 1, "adjoint_iterations": 1, "note": ""}, total)
    return out


def eta(line):
    text = line.split("ETA")[1].strip()
    return None if text.startswith("-") else float(text.split()[0])


def test_eta_excludes_the_setup_before_iteration_0():
    # 40 s of setup and first gradient, then 2 s per iteration
    out = lines([(0, 40.0), (1, 42.0), (2, 44.0)], total=50)
    assert eta(out[0]) is None and "nan" not in out[0]
    assert eta(out[1]) == 49 * 2.0 and eta(out[2]) == 48 * 2.0


def test_eta_after_a_restart():
    # restarted at iteration 20 after 100 s: the first line uses the run's average, then the
    # iterations this process timed
    out = lines([(21, 105.0), (22, 108.0)], total=30)
    assert eta(out[0]) == 105.0 / 21 * 9
    assert eta(out[1]) == 3.0 * 8
