"""Ranks per GPU are counted by PCI bus id over the node (issue 19, finding 3). No GPU needed.

``jobs/gpu_bind.sh`` shows each rank one GPU (``CUDA_VISIBLE_DEVICES``), so every rank sees
one device, device 0. The memory check multiplies a rank's need by the ranks sharing its GPU;
counting "local ranks mod visible devices" gave the node's rank count (4 ranks, 4 GPUs: 4x the
need, grids that fit were refused). ``make_backend`` now allgathers each rank's PCI bus id over
the node communicator; ranks with the same id share a GPU.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from mpi4py import MPI

from hpcinv import config as config_mod
from hpcinv.app.memory_budget import check_memory
from hpcinv.backend import cupy_backend, make_backend
from hpcinv.backend.cupy_backend import CupyBackend
from hpcinv.backend.device_sharing import count_sharing, ranks_sharing


def fake_cuda(bus, free=None):
    """The part of ``cupy`` the count and the memory check read: a device's PCI bus id (an
    exception to raise instead, where ``bus`` is one) and the free device memory."""
    def device(i):
        if isinstance(bus, BaseException):
            raise bus
        return SimpleNamespace(pci_bus_id=bus)
    runtime = SimpleNamespace(memGetInfo=lambda: (free, 2 * (free or 0)))
    return SimpleNamespace(cuda=SimpleNamespace(Device=device, runtime=runtime))


def one_gpu_visible(bus, local_size, free=None) -> CupyBackend:
    """A CupyBackend as ``gpu_bind.sh`` leaves a rank: one visible GPU, ``local_size`` ranks
    on the node (no CUDA: only the attributes the count and the memory check read)."""
    bk = CupyBackend.__new__(CupyBackend)
    bk.xp, bk.devices, bk.device_id, bk.local_size = fake_cuda(bus, free), 1, 0, local_size
    return bk


def test_count_sharing_counts_equal_bus_ids():
    keys = ["0000:3B:00.0", "0000:3b:00.0", "0000:5E:00.0", None]
    assert count_sharing(keys, "0000:3B:00.0") == 2          # case-blind
    assert count_sharing(keys, "0000:5E:00.0") == 1
    assert count_sharing(keys, None) == 1                    # host memory: nothing shared
    assert count_sharing(["0000:3B:00.0"] * 4, "0000:3B:00.0") == 4
    node = SimpleNamespace(allgather=lambda key: ["a", "b", "a", key])
    assert ranks_sharing(node, "a") == 3
    assert ranks_sharing(MPI.COMM_SELF, "0000:01:00.0") == 1


def test_ranks_per_device_is_the_bus_id_count_under_gpu_bind():
    bk = one_gpu_visible("0000:3B:00.0", local_size=4)
    assert bk.pci_bus_id() == "0000:3B:00.0"
    assert bk.ranks_per_device() == 4            # not counted: every rank on "device 0"
    bk.device_sharing = 1                        # counted: four ranks, four bus ids
    assert bk.ranks_per_device() == 1
    assert one_gpu_visible(RuntimeError("cudaErrorUnknown"), 4).pci_bus_id() is None


def test_memory_check_takes_one_rank_per_gpu_under_gpu_bind():
    """A rank needing 40 % of its GPU's free memory fits when each of the node's 4 ranks has
    its own GPU; four ranks on one GPU (160 %) do not."""
    cfg = config_mod.Config()
    need = 12.4e6                                # 200x200 inversion: 38 float64 fields/cell
    bk = one_gpu_visible("0000:3B:00.0", local_size=4, free=int(need / 0.4))
    bk.device_sharing = 1
    check_memory(cfg, (200, 200), MPI.COMM_SELF, bk, "inversion", adjoint_memory=6)   # fits
    bk.device_sharing = 4                        # the same four ranks on one GPU: refused
    with pytest.raises(Exception, match=r"4 rank\(s\) on this GPU"):
        check_memory(cfg, (200, 200), MPI.COMM_SELF, bk, "inversion", adjoint_memory=6)


def _make_with_buses(monkeypatch, bus_of_rank):
    """``make_backend("cupy", comm=COMM_WORLD)`` where each rank sees one GPU whose bus id is
    ``bus_of_rank(world rank)``."""
    rank = MPI.COMM_WORLD.Get_rank()

    class OneVisibleGpu(CupyBackend):
        def __init__(self, local_rank=0):
            self.xp, self.devices, self.device_id = fake_cuda(bus_of_rank(rank)), 1, 0
    monkeypatch.setattr(cupy_backend, "CupyBackend", OneVisibleGpu)
    return make_backend("cupy", comm=MPI.COMM_WORLD)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("layout", ["gpu each", "one gpu", "pairs"])
def test_make_backend_counts_the_ranks_on_each_gpu(monkeypatch, layout):
    bus_of_rank = {"gpu each": lambda r: f"0000:{r + 1:02X}:00.0",
                   "one gpu": lambda r: "0000:3B:00.0",
                   "pairs": lambda r: f"0000:{r // 2 + 1:02x}:00.0"}[layout]
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    buses = node.allgather(bus_of_rank(MPI.COMM_WORLD.Get_rank()))
    node.Free()
    mine = bus_of_rank(MPI.COMM_WORLD.Get_rank())
    bk = _make_with_buses(monkeypatch, bus_of_rank)
    assert bk.name == "cupy" and bk.local_size == len(buses)
    assert bk.ranks_per_device() == buses.count(mine)
    if layout == "gpu each":                     # gpu_bind.sh: the old count said local_size
        assert bk.ranks_per_device() == 1


@pytest.mark.mpi(min_size=2)
def test_ranks_sharing_over_the_node_communicator():
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    r, n = node.Get_rank(), node.Get_size()
    assert ranks_sharing(node, f"0000:{r % 2:02X}:00.0") == len(range(r % 2, n, 2))
    assert ranks_sharing(node, None) == 1                       # a host rank: alone
    node.Free()
