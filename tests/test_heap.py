"""glibc's mmap threshold fixed for the run commands (``hpcinv/app/heap.py``, issue 20)."""
import os
import platform
import subprocess
import sys

import pytest

from hpcinv.app import heap

SCRIPT = """
import sys
import numpy as np
from hpcinv.app.heap import fix_mmap_threshold
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
big = np.ones(1 << 21); del big          # 16 MiB freed: glibc raises its threshold to it
before = rss()
field = np.ones(1 << 20)                 # 8 MiB, touched
del field
print(rss() - before)
"""


def _held_after_free(mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and /proc")
def test_a_freed_field_goes_back_to_the_kernel_once_the_threshold_is_fixed():
    assert _held_after_free("fixed") < (1 << 20)          # unmapped on free
    assert _held_after_free("dynamic") > (6 << 20)        # glibc's default keeps it resident


def test_the_users_own_setting_prevails(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert heap.fix_mmap_threshold() is False
