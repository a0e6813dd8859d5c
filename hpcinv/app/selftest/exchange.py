"""Check ``exchange`` (and ``exchange-staged`` / ``exchange-device``): a real halo exchange
of index-valued fields, every ghost with a neighbour verified."""
from __future__ import annotations

from .runner import Result, data_fault


def index_field(decomp):
    """Host padded array: ``1 + global linear index`` on owned cells, -1 in the ghosts."""
    import numpy as np
    out = np.full(decomp.padded_shape, -1.0)
    axes = [np.arange(o, o + n) for o, n in zip(decomp.offset, decomp.local_shape)]
    lin = np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), decomp.global_shape)
    out[decomp.owned()] = 1.0 + lin
    return out


def expected_ghosts(decomp):
    """``[(axis, side, region, expected)]`` for every face ghost layer with a neighbour
    (values of :func:`index_field` of the neighbour's cells; periodic wrap included)."""
    import numpy as np
    from mpi4py import MPI
    out = []
    nd = decomp.ndim
    for axis in range(nd):
        lo_nb, hi_nb = decomp.neighbours(axis)
        for side, nb in ((0, lo_nb), (1, hi_nb)):
            if nb == MPI.PROC_NULL:
                continue
            region, axes = [], []
            for b in range(nd):
                n, off = decomp.local_shape[b], decomp.offset[b]
                if b == axis:
                    j = 0 if side == 0 else n + 1
                    region.append(slice(j, j + 1))
                    axes.append(np.array([(off + j - 1) % decomp.global_shape[b]]))
                else:
                    region.append(slice(1, n + 1))
                    axes.append(np.arange(off, off + n))
            lin = np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), decomp.global_shape)
            out.append((axis, side, tuple(region), 1.0 + lin))
    return out


def verify_ghosts(host, decomp, shift=0.0, corrupt=False, label=""):
    """``(checked, wrong, first_error)`` of the ghosts of ``host`` (a host copy after the
    exchange) against :func:`expected_ghosts` (+ ``shift``). ``corrupt``: change one received
    value first (fault injection)."""
    import numpy as np
    faces = expected_ghosts(decomp)
    if corrupt and faces:
        region = faces[-1][2]
        first = tuple(s.start for s in region)
        host[first] += 1.0
    checked = wrong = 0
    first_error = ""
    for axis, side, region, exp in faces:
        got = host[region]
        bad = got != (exp + shift).astype(host.dtype)
        checked += got.size
        n = int(np.count_nonzero(bad))
        if n and not first_error:
            k = tuple(int(v) for v in np.argwhere(bad)[0])
            cell = tuple(s.start + i for s, i in zip(region, k))
            first_error = (f"{label}{'xyz'[axis]} {'lower' if side == 0 else 'upper'} ghost "
                           f"{cell} = {got[k]:g}, expected {exp[k] + shift:g}")
        wrong += n
    return checked, wrong, first_error


@data_fault
def check_exchange(ctx, name, cuda_aware) -> Result:
    """Exchanges on non-periodic and periodic decompositions, 2D and 3D, float64 and
    float32 (``cuda_aware``: hand device buffers to MPI, else stage; host memory: direct)."""
    import numpy as np
    from ...parallel import Decomposition, HaloExchange
    comm, bk, sizes = ctx["comm"], ctx["backend"], ctx["sizes"]
    corrupt = ctx["runner"].fault_for(name) and comm.Get_rank() == comm.Get_size() - 1
    checked = wrong = messages = 0
    first = ""
    for shape in sizes.exch:
        for periodic in (False, True):
            d = Decomposition(shape, comm, periods=(periodic,) * len(shape))
            ref = index_field(d)
            for dtype in (np.float64, np.float32):
                halo = HaloExchange(d, bk, dtype, cuda_aware=cuda_aware)
                field = bk.upload(ref, dtype=dtype)
                halo.exchange(field)
                host = bk.to_host(field)
                messages += halo.messages
                label = (f"{len(shape)}D {'periodic ' if periodic else ''}"
                         f"{np.dtype(dtype).name}: ")
                c, w, f = verify_ghosts(host, d, corrupt=corrupt and not checked, label=label)
                checked, wrong = checked + c, wrong + w
                first = first or f
    data = {"checked": checked, "wrong": wrong, "messages": messages}
    if wrong:
        return Result("FAIL", f"{wrong} of {checked} ghost values wrong (first: {first})",
                      data)
    return Result("PASS", "", data)


def _exchange_summary(how):
    def merge(datas):
        c = sum(d.get("checked", 0) for d in datas)
        m = sum(d.get("messages", 0) for d in datas)
        return (f"{how}: {c} ghost values in {m} messages verified (2D+3D, periodic and not, "
                "float64+float32)")
    return merge
