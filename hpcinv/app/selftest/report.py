"""The selftest's output on rank 0: the ``--json`` object, the environment and speed
tables and the table of checks."""
from __future__ import annotations

from .runner import STATUS_ORDER, _fmt_shape, _fmt_time


def _jsonable(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def report(runner, envs, mode, bk, ok, wall) -> dict:
    """The JSON object of ``--json``."""
    counts = {s: sum(1 for r in runner.rows if r["status"] == s) for s in STATUS_ORDER}
    return {"selftest": "PASS" if ok else "FAIL", "ok": ok, "mode": mode,
            "ranks": runner.size, "backend": bk.name,
            "backend_fallback": getattr(bk, "fallback_reason", ""),
            "wall_s": round(wall, 3),
            "counts": counts,
            "checks": [{**{k: r[k] for k in ("name", "status", "detail", "seconds")},
                        **({"data": r["data"]} if r["name"] not in ("environment", "speed")
                           and r["data"] else {})} for r in runner.rows],
            "environment": envs,
            "speed": runner.per_rank.get("speed"),
            "fault": runner.fault}


def print_environment(envs):
    e0 = envs[0]
    if e0.get("backend_fallback"):
        print(f"  backend        {e0.get('backend')} (auto: {e0['backend_fallback']})")
    print(f"  MPI library    {e0.get('mpi_library', '?')}")
    if e0.get("device_memory"):
        aware = "device buffers to MPI" if e0.get("cuda_aware") else "staged via host"
        print(f"  halo buffers   {aware} ({e0.get('cuda_aware_reason', '?')})")
    else:
        print(f"  halo buffers   {e0.get('cuda_aware_reason', '?')}")
    print(f"  overlap=auto   {'on' if e0.get('overlap_auto') else 'off'} "
          f"({e0.get('overlap_reason', '?')})")
    env = f" (HPCINV_H5_MODE={e0['h5_mode_env']})" if e0.get("h5_mode_env") else ""
    print(f"  HDF5 output    mode {e0.get('h5_mode', '?')}{env}; h5py {e0.get('h5py', '?')}"
          f"{' with MPI' if e0.get('h5py_mpi') else ' (serial)'}"
          f"{'; ' + e0['h5_mode_reason'] if e0.get('h5_mode_reason') else ''}")
    if e0.get("backend") == "cupy":
        print(f"  CUDA           cupy {e0.get('cupy')}, NVRTC {e0.get('nvrtc')}, runtime "
              f"{e0.get('cuda_runtime')}, driver {e0.get('cuda_driver')}")
    cols = [("rank", "rank"), ("host", "host"), ("node_rank", "local"), ("backend", "backend"),
            ("device", "device"), ("pci_bus_id", "pci bus id"), ("threads", "threads")]
    if e0.get("backend") != "cupy":
        cols = [c for c in cols if c[0] != "pci_bus_id"]
    _print_rows([[("-" if e.get(k) is None else str(e.get(k))) for k, _ in cols] for e in envs],
                [h for _, h in cols])


def print_speed(datas):
    rows = [[str(d["rank"]), _fmt_shape(d["local_shape"]), _fmt_time(d["t_iter"]),
             f"{d['T_eff_GBs']:.2f}", _fmt_time(d["t_alone"]), f"{d['T_eff_alone_GBs']:.2f}",
             f"{100 * d['exchange_share']:.0f}%", _fmt_time(d["t_halo"])] for d in datas]
    print("  speed (float64, one APT iteration):")
    _print_rows(rows, ["rank", "block", "t_iter", "T_eff GB/s", "alone", "T_eff alone",
                       "exchange", "halo.exchange"])


def _print_rows(rows, header, indent="  "):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    print(indent + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def print_table(rows, ok, wall):
    name_w = max(len(r["name"]) for r in rows)
    print()
    print(f"{'check'.ljust(name_w)}  result  time     detail")
    print(f"{'-' * name_w}  ------  -------  {'-' * 40}")
    for r in rows:
        print(f"{r['name'].ljust(name_w)}  {r['status'].ljust(6)}  "
              f"{(str(round(r['seconds'], 1)) + ' s').ljust(7)}  {r['detail']}")
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUS_ORDER}
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in ("PASS", "WARN", "SKIP", "FAIL")
                        if counts[s])
    failed = [r["name"] for r in rows if r["status"] == "FAIL"]
    print(f"\nselftest {'PASS' if ok else 'FAIL'}: {summary} in {wall:.1f} s"
          + (f"; failed: {', '.join(failed)} (see docs/troubleshooting.md)" if failed else ""))
