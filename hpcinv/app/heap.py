"""Host fields freed back to the kernel: glibc's mmap threshold fixed for the run commands.

glibc serves an allocation above its mmap threshold (128 KiB at start) with its own ``mmap``,
unmapped when freed; but each such free raises the threshold to that block's size (up to
32 MiB), so from the first freed field on, fields (NumPy temporaries, downloads, the arrays of
the host backend) come from the heap, and a freed field inside the heap stays resident. In
issue 20's case (geothermal3d 96^3, 1 rank, host backend) that retention was about 2 fields
of the peak RSS (60.14 -> 58.45 field-equivalents above the interpreter with this threshold;
58.13 with glibc's initial 128 KiB; ``benchmarks/memory_peak.py``).

:func:`fix_mmap_threshold` sets the threshold to :data:`THRESHOLD` once (``mallopt``, which also
stops its adjustment): an allocation of 1 MiB or more is mapped and returned on free; smaller
ones (the host reductions' 256 KiB leaves, halo buffers) stay on the fast heap. Nothing is done
when the user set ``MALLOC_MMAP_THRESHOLD_`` (glibc's own variable: theirs prevails) or the C
library is not glibc. Results do not depend on it (only where memory comes from).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

#: Bytes from which an allocation gets its own mapping (1 MiB: 2^17 float64 values).
THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3          # glibc's malloc.h


def fix_mmap_threshold(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
