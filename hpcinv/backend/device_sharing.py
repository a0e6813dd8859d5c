"""Ranks of one node that share a device, counted by the device's identity (PCI bus id).

A rank cannot tell from its own view how many ranks use its GPU: ``jobs/gpu_bind.sh`` shows
each rank exactly one GPU (``CUDA_VISIBLE_DEVICES``), so every rank sees device 0 of one
device, whether the node's ranks have a GPU each or share one. The PCI bus id names the
physical GPU whatever the rank sees; ranks of one node (one shared-memory communicator) with
the same bus id share that GPU's memory.
"""
from __future__ import annotations


def count_sharing(keys, mine) -> int:
    """How many of ``keys`` (one per rank of a node) equal this rank's ``mine``; 1 where
    ``mine`` is None (nothing shared: host memory, or an unknown device). Bus ids are compared
    case-blind (``"0000:3B:00.0"`` and ``"0000:3b:00.0"`` are one GPU)."""
    if mine is None:
        return 1
    norm = str(mine).strip().lower()
    return max(1, sum(k is not None and str(k).strip().lower() == norm for k in keys))


def ranks_sharing(node, key) -> int:
    """Ranks of the node communicator ``node`` (``Split_type(COMM_TYPE_SHARED)``) whose
    ``key`` (e.g. their GPU's PCI bus id; None: none) equals this rank's, this rank
    included. Collective over ``node``: every rank calls it, with or without a key."""
    return count_sharing(node.allgather(key), key)
