#!/usr/bin/env python
"""Plot weak-scaling efficiency or strong-scaling speed-up from weak_scaling.py /
strong_scaling.py JSON lines, with the ideal line and, optionally, the model's prediction.

Usage::

    python benchmarks/plot_scaling.py benchmarks/results/weak.jsonl -o docs/img/weak_scaling.png
    python benchmarks/plot_scaling.py benchmarks/results/weak.jsonl --model \\
        --pingpong benchmarks/results/pingpong.json -o weak.png
    python benchmarks/plot_scaling.py benchmarks/results/strong.jsonl -o strong.png

One panel per (ndim, local or global size); one line per overlap mode and solve
(``forward`` by default; ``--kind adjoint`` or ``both``). Weak: efficiency ``t(1) / t(N)``;
strong: speed-up ``t(1) / t(N)`` (ideal ``N``). The baseline ``t(1)`` is the 1-rank record of the
same size (median over its records); records without one are skipped with a warning. When a
rank count has several records (repeated runs), the median is used. ``--model`` overlays the
latency-bandwidth model of ``scaling_model.py`` (single-rank T_eff from the same file; network
from ``--pingpong`` or ``--latency``/``--net-bw``); the model's rank counts are the measured ones.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scaling_model as sm  # noqa: E402


def group(records):
    """{(ndim, size): {overlap: {ranks: [records]}}}"""
    out = {}
    for r in records:
        size = tuple(r["local_size"] if r["kind"] == "weak" else r["global_size"])
        key = (r["ndim"], size, r.get("dtype"), r.get("threads"), r.get("backend"))
        out.setdefault(key, {}).setdefault(r["overlap"], {}).setdefault(r["ranks"], []).append(r)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON-lines files")
    p.add_argument("-o", "--output", default="scaling.png")
    p.add_argument("--kind", default="forward", choices=("forward", "adjoint", "both"))
    p.add_argument("--tag", default=None, help="only records with this tag")
    p.add_argument("--model", action="store_true", help="overlay the model's prediction")
    p.add_argument("--pingpong", default=None)
    p.add_argument("--latency", type=float, default=None, help="us (model)")
    p.add_argument("--net-bw", type=float, default=None, help="GB/s (model)")
    p.add_argument("--launch-us", type=float, default=0.0, help="model launch cost (us)")
    p.add_argument("--handoff-us", type=float, default=0.0, help="model hand-off cost (us)")
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = []
    for path in args.results:
        records += sm.load_records(path)
    records = [r for r in records if r.get("kind") in ("weak", "strong")
               and (args.tag is None or r.get("tag") == args.tag)]
    if not records:
        raise SystemExit("error: no weak/strong scaling records in " + ", ".join(args.results))
    kinds = ["forward", "adjoint"] if args.kind == "both" else [args.kind]
    alpha = beta = None
    if args.model:
        if args.latency is not None and args.net_bw is not None:
            alpha, beta = args.latency * 1e-6, args.net_bw * 1e9
        elif args.pingpong:
            import json
            with open(args.pingpong) as f:
                pp = json.loads(f.readline())
            alpha, beta = pp["alpha_s"], pp["beta_Bps"]
        else:
            raise SystemExit("error: --model needs --pingpong FILE or --latency and --net-bw")

    groups = group(records)
    panels = list(groups.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, by_overlap) in zip(axes[0], panels):
        ndim, size, dtype, threads, backend = key
        scaling = None
        allranks = sorted({n for d in by_overlap.values() for n in d})
        for ov, by_ranks in sorted(by_overlap.items(), reverse=True):
            scaling = next(iter(by_ranks.values()))[0]["kind"]
            for kind in kinds:
                base = [r[f"t_iter_{kind}"] for n, rs in by_ranks.items() if n == 1 for r in rs]
                if not base:   # one rank: overlap does not matter; take the other mode's
                    base = [r[f"t_iter_{kind}"] for d in by_overlap.values()
                            for r in d.get(1, [])]
                if not base:
                    print(f"warning: no 1-rank record for {size}: skipped", file=sys.stderr)
                    continue
                t1 = statistics.median(base)
                ns = sorted(by_ranks)
                ts = [statistics.median(r[f"t_iter_{kind}"] for r in by_ranks[n]) for n in ns]
                y = [t1 / t for t in ts]     # weak: efficiency; strong: speed-up
                label = f"{kind}, overlap {'on' if ov else 'off'}"
                ax.plot(ns, y, "o-" if ov else "s--", label=label)
                if args.model and scaling == "weak":
                    itemsize = np.dtype(dtype or "float64").itemsize
                    teff = sm.a_eff_per_cell(ndim, itemsize) * int(np.prod(size)) / t1
                    hw = sm.Hardware(teff=teff, copy_bw=teff, alpha=alpha, beta=beta,
                                     launch=args.launch_us * 1e-6,
                                     handoff=args.handoff_us * 1e-6 if backend == "host" else 0)
                    ym = []
                    for n in ns:
                        r0 = by_ranks[n][0]
                        pr = sm.predict(size, r0["dims"], itemsize, hw, ov, sm.share_of(r0))
                        ym.append(t1 / pr["t"])
                    ax.plot(ns, ym, ":", marker="x", color=ax.lines[-1].get_color(),
                            label=f"model, overlap {'on' if ov else 'off'}")
        if scaling == "strong":
            ax.plot(allranks, allranks, "k-", lw=0.8, label="ideal")
            ax.set_ylabel("speed-up t(1)/t(N)")
        else:
            ax.axhline(1.0, color="k", lw=0.8, label="ideal")
            ax.set_ylabel("parallel efficiency t(1)/t(N)")
            ax.set_ylim(0, 1.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(allranks)
        ax.set_xticklabels([str(n) for n in allranks])
        ax.set_xlabel("ranks")
        what = "local" if scaling == "weak" else "global"
        ax.set_title(f"{ndim}D {scaling}, {what} {'x'.join(map(str, size))}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
