"""The scaling benchmarks' oversubscription flag: ranks x threads on a node against the CPUs
the node's ranks may use together (not one rank's own mask, which under srun --cpu-bind=cores
holds only its own cores)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import node_cpus, oversubscribed  # noqa: E402


class Node:
    """A node communicator whose ranks have the given affinity masks."""

    def __init__(self, masks):
        self.masks = masks

    def allgather(self, mine):
        assert mine == sorted(os.sched_getaffinity(0))
        return self.masks


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no sched_getaffinity")
@pytest.mark.parametrize("masks, cpus", [
    ([range(0, 8), range(8, 16), range(16, 24), range(24, 32)], 32),   # srun --cpu-bind=cores
    ([range(0, 8)] * 4, 8),                                             # one shared mask
    ([range(64)] * 4, 64),                                              # no binding
    ([[0, 1], [1, 2]], 3),
])
def test_node_cpus_is_the_union_of_the_ranks_masks(masks, cpus):
    assert node_cpus(Node([list(m) for m in masks])) == cpus


@pytest.mark.parametrize("backend, threads, ranks, cpus, expected", [
    ("host", 8, 4, 32, False),      # 4 ranks x 8 threads, each on its own 8 cores
    ("host", 8, 4, 8, True),        # the same ranks squeezed onto 8 CPUs
    ("host", 1, 2, 2, False),
    ("host", 2, 2, 3, True),
    ("host", None, 4, 1, False),    # thread count unknown: no claim
    ("cupy", 8, 4, 1, False),       # GPU ranks: host threads do not matter
])
def test_oversubscribed(backend, threads, ranks, cpus, expected):
    assert oversubscribed(backend, threads, ranks, cpus) is expected


def test_the_old_per_process_comparison_would_flag_srun_binding():
    """Under srun --cpu-bind=cores a rank's own mask holds 8 CPUs: comparing 4 x 8 with it
    called the run oversubscribed; with the node's union it is not."""
    own, node = 8, node_cpus(Node([list(range(i * 8, i * 8 + 8)) for i in range(4)]))
    assert 4 * 8 > own and not oversubscribed("host", 8, 4, node)
