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


def test_eta_leaves_out_a_kernel_compiled_during_an_iteration():
    """Issue 22: the first run's ETA at iteration 1 counted a kernel compiled in it."""
    out = []
    r = Reporter(say=lambda text, **kw: out.append(text))
    rec = {"misfit_ratio": 1.0, "max_dlogK": 0.1, "forward_iterations": 1,
           "adjoint_iterations": 1}
    r.iteration({**rec, "iteration": 0, "wall_time": 5.0}, 10)
    r.pause(3.0)                                  # compiled during iteration 1 (3 s of it)
    r.iteration({**rec, "iteration": 1, "wall_time": 9.0}, 10)
    assert eta(out[1]) == 9 * 1.0


class _FakeCache:
    """Stands in for the kernel cache's listener calls around two cold kernels."""

    @staticmethod
    def compile_two(listeners):
        for _ in range(2):
            for fn in list(listeners):
                fn("start", 0.0)
            for fn in list(listeners):
                fn("done", 1.25)


def test_compile_notice_lines_and_pause():
    """A cold kernel cache: a line before the first compile, then 'compiling kernels (first
    run, N kernels)' after the set-up; the seconds go to the reporter's pause; a compile after
    the set-up adds no line; with the listener removed on exit."""
    from hpcinv.app.progress import CompileNotice
    from hpcinv.backend import cache
    out = []
    r = Reporter(say=lambda text, **kw: out.append(text))
    with CompileNotice(r) as notice:
        assert notice in cache._compile_listeners
        _FakeCache.compile_two(cache._compile_listeners)
        notice.summary()
        _FakeCache.compile_two(cache._compile_listeners)      # during the iterations
        notice.summary()
    assert notice not in cache._compile_listeners
    assert out[0].startswith("compiling kernels (first run") and out[0].endswith("...")
    assert out[1] == "compiling kernels (first run, 2 kernels): 2.5 s"
    assert len(out) == 2 and r._paused == 5.0


def test_compile_notice_is_silent_with_a_warm_cache_and_quiet():
    from hpcinv.app.progress import CompileNotice
    out = []
    with CompileNotice(Reporter(say=lambda text, **kw: out.append(text))) as notice:
        notice.summary()                                     # nothing compiled
    with CompileNotice(Reporter(say=lambda text, **kw: out.append(text), quiet=True)) as n2:
        from hpcinv.backend import cache
        _FakeCache.compile_two(cache._compile_listeners)
        n2.summary()
    assert out == []


def test_a_cold_kernel_cache_is_announced(tmp_path, monkeypatch):
    """The host backend's cache tells the listener about a kernel it has to compile, and not
    about one it already holds (the real compiler, one small kernel)."""
    import numpy as np
    from hpcinv.backend import cache
    from hpcinv.backend.host_compile import HostKernel
    from hpcinv.backend.kernel import Kernel
    copy = Kernel("issue22_copy", ("dst", "src"), (), "dst[idx] = src[idx];", writes=("dst",),
                  reach=0)
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    calls = []
    remove = cache.add_compile_listener(lambda phase, s: calls.append((phase, s)))
    try:
        HostKernel(copy, 2, np.float64, 1)
        HostKernel(copy, 2, np.float64, 1)                     # cached now
    finally:
        remove()
    assert [c[0] for c in calls] == ["start", "done"] and calls[1][1] > 0
