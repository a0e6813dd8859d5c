"""The host kernel cache: a private directory of compiled libraries, each verified before use.

A cached library is code that the next run loads and executes, so the cache is a trust
boundary (issue 13). The rules, in the order they apply:

1. The cache directory (``$HPCINV_CACHE_DIR``, default ``~/.cache/hpcinv``) and its
   ``kernels/`` subdirectory must be owned by the current user and not writable by group or
   others; otherwise hpcinv stops with a one-line :class:`~hpcinv.errors.BackendError` instead
   of running what someone else may have put there. Missing directories (parents included)
   are created with mode 0700 whatever the umask.
2. Lock files, manifests, logs and temporary files are opened without following symbolic
   links (``O_NOFOLLOW``, or ``O_EXCL`` through :mod:`tempfile`) and are never truncated, so a
   link planted at their path cannot redirect a write to another file.
3. Each ``k_<key>.so`` has a manifest ``k_<key>.sha256`` (``sha256sum`` format) written after
   the library was built. A library is used only if the SHA-256 of its bytes matches; one
   with a missing or different manifest, or not a regular file owned by the user, is rebuilt
   under the lock and replaced atomically (written in a private temporary directory, fsynced,
   renamed into place with ``os.replace``). :func:`load_library` loads the very bytes it
   verified (a sealed in-memory copy), so swapping the file between check and load cannot
   inject code.

The manifest guards against corruption, interrupted writes and files planted without one; it
is not a signature: whoever can write the directory can write both, which is why rule 1 exists.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import BackendError

ENV = "HPCINV_CACHE_DIR"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)   # a FIFO planted at a path must not block open()
_DIGEST = re.compile(r"[0-9a-f]{64}")


def cache_root() -> Path:
    """``$HPCINV_CACHE_DIR`` (unset or empty: ``~/.cache/hpcinv``), as an absolute path."""
    env = os.environ.get(ENV, "")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "hpcinv"
    return Path(os.path.abspath(root))


def kernel_dir() -> Path:
    """The private ``kernels/`` directory of the cache, created (mode 0700) if missing.

    Raises :class:`BackendError` if the cache directory or ``kernels/`` is not owned by the
    current user or is writable by group or others.
    """
    root = cache_root()
    kernels = root / "kernels"
    _make_private_dirs(root)
    _check_private(root, os.stat(root), kernels)             # may be reached through a symlink
    _make_private_dirs(kernels)
    _check_private(kernels, os.lstat(kernels), kernels)      # a real directory, not a link
    return kernels


def _make_private_dirs(path: Path) -> None:
    """Create the missing components of ``path``, each with mode exactly 0700."""
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:      # created concurrently (another rank): checked below
            continue
        except OSError as exc:
            raise BackendError(f"cannot create the kernel cache directory {p}: {exc.strerror}; "
                               f"set {ENV} to a writable directory") from exc
        # the umask may have removed owner bits; set 0700 on the directory just made, not on
        # whatever a symlink swapped in its place would point to
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def _check_private(path: Path, st: os.stat_result, kernels: Path) -> None:
    fix = f"or set {ENV} to a private directory of your own (mode 700)"
    if not stat.S_ISDIR(st.st_mode):
        problem, advice = "not a directory", f"remove it {fix}"
    elif st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
        advice = f"use a directory you own: {fix}"
    elif st.st_mode & 0o022:
        problem = f"writable by group/others (mode {stat.S_IMODE(st.st_mode):o})"
        advice = (f"run chmod 700 {path} and delete {kernels} (others could have written "
                  f"there), {fix}")
    else:
        return
    raise BackendError(f"kernel cache directory {path} ({ENV}) is {problem}: hpcinv will not "
                       f"run libraries that others could have planted; {advice}")


# --- reading files that must be ours ----------------------------------------------------------
def _owned_regular(st: os.stat_result) -> bool:
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & 0o022)


def _read_owned(path: Path, limit: int | None = None) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link) of ours, else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not _owned_regular(os.fstat(f.fileno())):
            return None
        return f.read() if limit is None else f.read(limit)


def manifest_path(lib: Path) -> Path:
    """The manifest of a cached library: ``k_<key>.sha256`` beside ``k_<key>.so``."""
    return lib.with_suffix(".sha256")


def read_verified(lib: Path) -> bytes | None:
    """The bytes of ``lib`` if their SHA-256 matches its manifest, else ``None``."""
    text = _read_owned(manifest_path(lib), limit=4096)
    if text is None:
        return None
    fields = text.decode("ascii", "replace").split()
    if not fields or not _DIGEST.fullmatch(fields[0]):
        return None
    data = _read_owned(lib)
    if data is None or hashlib.sha256(data).hexdigest() != fields[0]:
        return None
    return data


# --- writing ----------------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _naming(path: Path):
    """An ``OSError`` without a file name (a failed write: ``EFBIG``, ``ENOSPC``) names ``path``
    (issue 22: ``I/O error: [Errno 27] File too large`` said nothing of which file)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: a new file (``O_EXCL``), fsynced, renamed over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with _naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def _locked(path: Path):
    """Hold an exclusive ``flock`` on ``path``, created 0600 without following links.

    Anything at ``path`` that is not a regular file of ours with one link (a symlink, a FIFO,
    a hard link to another file) is unlinked, never opened for writing nor truncated.
    """
    flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK  # RDWR: flock over NFS
    for _ in range(5):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if os.path.islink(path) or exc.errno in (errno.ELOOP, errno.EMLINK):
                _unlink(path)
                continue
            raise BackendError(f"cannot open the kernel cache lock {path}: {exc.strerror}; "
                               f"set {ENV} to a writable directory") from exc
        st = os.fstat(fd)
        if _owned_regular(st) and st.st_nlink == 1:
            break
        os.close(fd)
        _unlink(path)
    else:
        raise BackendError(f"cannot create the kernel cache lock {path}: something keeps "
                           f"replacing it; set {ENV} to a private directory")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                 # releases the lock


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- compile and install ----------------------------------------------------------------------
def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _first_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return _one_line(ln)
    return _one_line(lines[0]) if lines else "no output"


def _write_log(d: Path, key: str, argv: list[str], returncode: int, output: str,
               source: str) -> Path:
    text = (f"# command (exit status {returncode}):\n{' '.join(argv)}\n\n# compiler output:\n"
            f"{output}\n# source (kernel.cpp, compiled in a temporary directory since "
            f"removed):\n{source}")
    log = d / f"k_{key}.log"
    try:
        _write_atomic(log, text.encode())
        return log
    except OSError:
        fd, name = tempfile.mkstemp(prefix=f"hpcinv-k_{key}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return Path(name)


def compile_and_install(key: str, cmd: list[str], flags, source: str) -> Path:
    """Path of the verified library ``k_<key>.so`` of ``source``, compiled if needed.

    ``cmd + flags + [src, "-o", out]`` compiles. Ranks that need the same library wait on
    its lock; the first builds it, the others find it verified. A compiler failure raises a
    one-line :class:`BackendError` naming a log file with the full compiler output.
    """
    d = kernel_dir()
    lib = d / f"k_{key}.so"
    if read_verified(lib) is not None:
        return lib
    with _locked(d / f"k_{key}.lock"):
        if read_verified(lib) is not None:       # another process built it while we waited
            return lib
        with tempfile.TemporaryDirectory(dir=d, prefix=".build-") as tmp:   # mode 0700
            src = Path(tmp) / "kernel.cpp"
            with _naming(src):
                src.write_text(source)
            out = Path(tmp) / "kernel.so"
            argv = list(cmd) + list(flags) + [str(src), "-o", str(out)]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, errors="replace")
            except OSError as exc:
                raise BackendError(f"host compiler {cmd[0]!r} did not start: {exc.strerror}; "
                                   f"check CXX") from exc
            if proc.returncode != 0:
                output = proc.stdout + proc.stderr
                log = _write_log(d, key, argv, proc.returncode, output, source)
                raise BackendError(
                    f"host compiler failed ({' '.join(cmd)}, exit status {proc.returncode}): "
                    f"{_first_error(output)}; full output in {log} "
                    f"(check CXX and HPCINV_CXXFLAGS)")
            # the file is in our private build directory: the bytes hashed are the bytes moved
            try:
                os.chmod(out, 0o700)             # the compiler's mode follows the umask
            except OSError:
                pass
            data = _read_owned(out)
            if data is None:
                raise BackendError(f"host compiler ({' '.join(cmd)}) wrote no library {out}")
            with _naming(lib), open(out, "rb") as f:
                os.fsync(f.fileno())
            os.replace(out, lib)
        _write_atomic(manifest_path(lib),
                      f"{hashlib.sha256(data).hexdigest()}  {lib.name}\n".encode())
        _fsync_dir(d)
        _unlink(d / f"k_{key}.log")             # an earlier failure's log is stale now
    return lib


_compile_listeners: list = []


def add_compile_listener(fn):
    """Call ``fn(phase, seconds)`` around every kernel library this process finds missing from
    the cache (a first run): ``("start", 0.0)`` before it is compiled (or waited for, while
    another rank compiles it), ``("done", seconds)`` after. Returns a function removing it.
    For progress lines (:mod:`hpcinv.app.progress`); the library itself prints nothing."""
    _compile_listeners.append(fn)
    return lambda: _compile_listeners.remove(fn) if fn in _compile_listeners else None


@contextmanager
def announced(key: str):
    """Around :func:`compile_and_install` of ``key``: tell the listeners when its library is
    not in the cache yet (a cheap existence test; the verified check stays the installer's)."""
    if not _compile_listeners or (kernel_dir() / f"k_{key}.so").exists():
        yield
        return
    for fn in list(_compile_listeners):
        fn("start", 0.0)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        for fn in list(_compile_listeners):
            fn("done", time.perf_counter() - t0)


# --- loading ----------------------------------------------------------------------------------
_loaded_fds: list[int] = []   # kept open: glibc recognises loaded objects by name, and a
                              # reused /proc/self/fd/N name would return an older library


def load_library(lib: Path) -> ctypes.CDLL:
    """Load the cached library ``lib`` with the bytes that were verified against its manifest.

    The verified bytes are copied into a sealed anonymous file (``memfd``) and loaded from
    it, so a file swapped or rewritten after the check is never what runs. Where memfd is
    unavailable, a private temporary copy in the cache directory is loaded instead.
    """
    data = read_verified(lib)
    if data is None:
        raise BackendError(f"kernel library {lib} does not match its manifest "
                           f"{manifest_path(lib).name}; it was not loaded (delete it to rebuild)")
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"hpcinv-{lib.name}",
                             os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            if hasattr(fcntl, "F_ADD_SEALS"):
                try:
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                                | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
                except OSError:
                    pass
            handle = ctypes.CDLL(f"/proc/self/fd/{fd}")
        except OSError:
            os.close(fd)
        else:
            _loaded_fds.append(fd)
            return handle
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=f".load-{lib.stem}-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return ctypes.CDLL(tmp)
    finally:
        _unlink(Path(tmp))
