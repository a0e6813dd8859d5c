"""The host kernel cache as a trust boundary (issue 13): a private directory, links never
followed, libraries used only when their SHA-256 matches the manifest written at build time,
and compiler failures reported on one line with the full output in a log file."""
from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hpcinv.backend import make_backend
from hpcinv.backend.cache import load_library, manifest_path, read_verified
from hpcinv.backend.host_compile import compile_library, find_compiler, host_source
from hpcinv.backend.kernel import Kernel
from hpcinv.errors import BackendError

# A tiny kernel: A = v + a value identifying the cell.
MARK = Kernel("test_cache_mark", ("A",), ("v",), "A[idx] = v + (real)(ix * 100 + iy);",
              writes=("A",))
SRC = host_source(MARK, 2, np.float64)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def built(tmp_path, monkeypatch, name="cache") -> Path:
    """Build SRC in a fresh cache ``tmp_path/name`` and return the library's path."""
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(tmp_path / name))
    return compile_library(SRC)


def run_mark() -> np.ndarray:
    bk = make_backend("host", threads=1)
    k = bk.kernel(MARK, 2, np.float64)
    A = np.zeros((3, 4))
    bk.launch(k.bind(A=A, v=0.5), ((0, 0), (3, 4)))
    bk.sync()
    return A


EXPECTED = 0.5 + np.add.outer(100.0 * np.arange(3), np.arange(4.0))


def planted_library(tmp_path, marker: Path) -> bytes:
    """A library exporting the kernel's symbol that, when loaded, creates ``marker``."""
    src = tmp_path / "planted.cpp"
    src.write_text(f"""
#include <cstdio>
__attribute__((constructor)) static void planted() {{
    FILE* f = std::fopen("{marker}", "w"); if (f) {{ std::fputs("ran", f); std::fclose(f); }}
}}
extern "C" void {MARK.name}(double* A, double v, long long ox, long long oy, long long oz,
    long long ex, long long ey, long long ez, long long Ny, long long Nz, int nthreads) {{}}
""")
    out = tmp_path / "planted.so"
    subprocess.run(find_compiler() + ["-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out.read_bytes()


def assert_one_line(exc: BackendError) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg
    return msg


# --- a private directory ----------------------------------------------------------------------
@pytest.mark.parametrize("perm", [0o770, 0o777, 0o757, 0o1777])
def test_group_or_world_writable_cache_dir_refused(tmp_path, monkeypatch, perm):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(perm)
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(root))
    with pytest.raises(BackendError) as err:
        compile_library(SRC)
    msg = assert_one_line(err.value)
    assert "HPCINV_CACHE_DIR" in msg and str(root) in msg and "chmod 700" in msg
    assert "writable by group/others" in msg
    assert not (root / "kernels").exists()          # nothing built or created there


def test_writable_kernels_subdir_refused(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    (root / "kernels").mkdir(parents=True)
    root.chmod(0o700)
    (root / "kernels").chmod(0o777)
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(root))
    with pytest.raises(BackendError) as err:
        compile_library(SRC)
    msg = assert_one_line(err.value)
    assert str(root / "kernels") in msg and "HPCINV_CACHE_DIR" in msg
    assert list((root / "kernels").iterdir()) == []


def test_cache_dir_of_another_user_refused(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(root))
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(BackendError) as err:
        compile_library(SRC)
    msg = assert_one_line(err.value)
    assert "not by you" in msg and "HPCINV_CACHE_DIR" in msg


def test_existing_private_dirs_accepted(tmp_path, monkeypatch):
    """A `mktemp -d` directory (0700, CI) and a 0755 one (older caches under umask 022)."""
    for name, perm in (("ci", 0o700), ("old", 0o755)):
        root = tmp_path / name
        root.mkdir()
        root.chmod(perm)
        monkeypatch.setenv("HPCINV_CACHE_DIR", str(root))
        lib = compile_library(SRC)
        assert lib.parent == root / "kernels" and read_verified(lib) is not None
        assert mode(root) == perm                    # an existing directory is not changed


def test_cache_dirs_created_0700_under_umask_0(tmp_path, monkeypatch):
    root = tmp_path / "a" / "b"
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(root))
    old = os.umask(0)
    try:
        lib = compile_library(SRC)
    finally:
        os.umask(old)
    for d in (tmp_path / "a", root, root / "kernels"):
        assert mode(d) == 0o700, d
    for f in (lib, manifest_path(lib), lib.with_suffix(".lock")):
        assert not mode(f) & 0o077, f


# --- links are never followed -----------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".lock", ".so", ".sha256"])
def test_planted_symlink_does_not_touch_victim(tmp_path, monkeypatch, suffix):
    name = built(tmp_path, monkeypatch, "first").name          # k_<key>.so, same in any cache
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    kernels = tmp_path / "second" / "kernels"
    kernels.mkdir(parents=True, mode=0o700)
    (tmp_path / "second").chmod(0o700)
    planted = kernels / Path(name).with_suffix(suffix).name
    planted.symlink_to(victim)
    lib = built(tmp_path, monkeypatch, "second")
    assert victim.read_text() == "precious\n"
    for p in (lib, manifest_path(lib), lib.with_suffix(".lock")):
        assert not p.is_symlink() and p.is_file()
    assert read_verified(lib) is not None
    np.testing.assert_array_equal(run_mark(), EXPECTED)


# --- only verified libraries are loaded -------------------------------------------------------
@pytest.mark.parametrize("manifest", ["missing", "mismatching"])
def test_planted_library_not_loaded(tmp_path, monkeypatch, manifest):
    marker = tmp_path / "planted-code-ran"
    bad = planted_library(tmp_path, marker)
    lib = built(tmp_path, monkeypatch)
    lib.write_bytes(bad)                         # planted at the exact key
    if manifest == "missing":
        manifest_path(lib).unlink(missing_ok=True)
    A = run_mark()
    assert not marker.exists()                   # the planted code never ran
    np.testing.assert_array_equal(A, EXPECTED)
    assert lib.read_bytes() != bad and read_verified(lib) is not None   # rebuilt, replaced


def test_corrupted_library_rebuilt(tmp_path, monkeypatch):
    lib = built(tmp_path, monkeypatch)
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data[: len(data) * 3 // 4]))          # flipped and truncated
    assert read_verified(lib) is None
    assert compile_library(SRC) == lib
    assert read_verified(lib) is not None
    assert manifest_path(lib).read_text().split()[0] == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert manifest_path(lib).read_text().split()[1] == lib.name   # sha256sum -c format
    np.testing.assert_array_equal(run_mark(), EXPECTED)


def test_load_library_loads_only_verified_bytes(tmp_path, monkeypatch):
    lib = built(tmp_path, monkeypatch)
    handle = load_library(lib)
    assert hasattr(handle, MARK.name)
    marker = tmp_path / "planted-code-ran"
    lib.write_bytes(planted_library(tmp_path, marker))
    with pytest.raises(BackendError) as err:
        load_library(lib)
    assert_one_line(err.value)
    assert not marker.exists()


def test_concurrent_builds_share_one_library(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(tmp_path / "cache"))
    results, errors = [], []

    def build():
        try:
            results.append(compile_library(SRC))
        except Exception as exc:                      # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    kernels = tmp_path / "cache" / "kernels"
    assert sorted(p.suffix for p in kernels.iterdir()) == [".lock", ".sha256", ".so"]
    assert read_verified(results[0]) is not None


# --- compiler failures ------------------------------------------------------------------------
def test_bad_cxxflags_one_line_error_naming_log(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HPCINV_CXXFLAGS", "-fhpcinv-no-such-flag")
    with pytest.raises(BackendError) as err:
        compile_library(SRC)
    msg = assert_one_line(err.value)
    assert "HPCINV_CXXFLAGS" in msg and "hpcinv-no-such-flag" in msg
    log = Path(re.search(r"full output in (\S+\.log)", msg).group(1))
    text = log.read_text()
    assert "hpcinv-no-such-flag" in text and MARK.name in text   # compiler output and source
    assert not mode(log) & 0o077
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))


def test_cli_reports_compiler_failure_on_one_line(tmp_path, monkeypatch, capsys):
    from hpcinv.app.cli import main
    monkeypatch.setenv("HPCINV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HPCINV_CXXFLAGS", "-fhpcinv-no-such-flag")
    code = main(["forward", "--backend", "host", "--nx", "15", "--ny", "9", "-q",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hpcinv: error: host compiler failed") and ".log" in err


FSIZE_LIMITED = """import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from hpcinv.backend.host_compile import compile_library
src = sys.argv[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (len(src) // 2,) * 2)
try:
    compile_library(src)
except OSError as exc:
    print(f"I/O error: {exc}")
"""


def test_an_io_error_in_the_cache_names_the_file(tmp_path):
    """Issue 22: a full disk or a file-size limit printed ``I/O error: [Errno 27] File too
    large`` without saying which file (writes carry no file name)."""
    env = {**os.environ, "HPCINV_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-c", FSIZE_LIMITED, SRC], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "[Errno 27] File too large: " in p.stdout, p.stdout
    assert str(tmp_path / "cache") in p.stdout and "kernel.cpp" in p.stdout, p.stdout
