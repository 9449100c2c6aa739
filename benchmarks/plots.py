"""Figures for BENCHMARKS.md, drawn from the benchmarks' JSON (matplotlib, Agg, small PNGs).

    python -m benchmarks.plots --engine engine.json --chromaprint chromaprint.json --scale scale.json --out DIR

- ``hit_rate.png``: top-1 hit rate against excerpt length, one panel per
  degradation, musichash and Chromaprint on the same queries;
- ``latency.png``: segment search + vote latency of a 10 s query (p50 solid,
  p99 dashed) against library size, per index configuration (bench_scale.py).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 72
STYLES = {"musichash": {"color": "tab:blue", "marker": "o", "ls": "-"},
          "Chromaprint": {"color": "tab:orange", "marker": "s", "ls": "--"}}


def hit_rate_vs_length(systems: dict[str, dict], out: Path, metric: str = "top1", cols: int = 6) -> Path:
    """systems: name -> queries.summarize() output (same queries). One panel per condition."""
    first = next(iter(systems.values()))
    conds = list(dict.fromkeys(c["condition"] for c in first["cells"]))
    lengths = sorted({c["length"] for c in first["cells"]})
    cols = min(cols, len(conds))
    rows = math.ceil(len(conds) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.75 * cols, 1.45 * rows + 0.5), sharex=True, sharey=True,
                             squeeze=False)
    for ax, cond in zip(axes.flat, conds):
        for name, s in systems.items():
            by = {c["length"]: c[metric] for c in s["cells"] if c["condition"] == cond}
            xs = [x for x in lengths if by.get(x) is not None]
            ax.plot(xs, [100 * by[x] for x in xs], ms=3, lw=1.2, label=name, alpha=0.85,
                    **STYLES.get(name, {"marker": "o"}))
        ax.set_title(cond, fontsize=8, pad=2)
        ax.set_xscale("log")
        ax.set_xticks(lengths, [f"{x:g}" for x in lengths])
        ax.minorticks_off()
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(conds):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-10'} %", fontsize=8)
    for ax in axes.flat[max(0, len(conds) - cols) : len(conds)]:  # the lowest panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("excerpt (s)", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()), pad=0.4, h_pad=0.5, w_pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _series_name(variant: str) -> str:
    """'ivf2048 nprobe64' -> 'ivf nprobe64': the list count follows the size, the series should not."""
    return re.sub(r"^ivf\d+", "ivf", variant)


def latency_vs_size(results: list[dict], out: Path, target_ms: float | None = 50.0) -> Path:
    """results: bench_scale.py's per-size dicts. Full-rate (28-window), one-thread configurations
    measured at two sizes or more."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in results:
        for o in r["runs"]:
            if o["windows"] == max(x["windows"] for x in r["runs"]) and "threads" not in o["variant"]:
                series.setdefault(_series_name(o["variant"]), []).append((r["n_tracks"], o["p50_ms"], o["p99_ms"]))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (name, pts) in enumerate(sorted(series.items())):
        if len(pts) < 2 and len(results) > 1:
            continue
        n, p50, p99 = zip(*sorted(pts))
        colour = f"C{i % 10}"
        ax.plot(n, p50, "o-", ms=3, color=colour, label=name)
        ax.plot(n, p99, "--", lw=0.8, color=colour)
    if target_ms:
        ax.axhline(target_ms, color="grey", lw=0.8, ls=":")
        ax.text(0.99, target_ms * 1.08, f"{target_ms:g} ms", fontsize=7, color="grey", ha="right",
                transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("library size (tracks, synthetic 64-bit codes)", fontsize=8)
    ax.set_ylabel("10 s query: search + vote (ms)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, frameon=False, title="p50 solid, p99 dashed", title_fontsize=7)
    fig.tight_layout(pad=0.4)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="eval_engine.py --json output")
    ap.add_argument("--chromaprint", type=Path, help="bench_chromaprint.py --json output (same queries)")
    ap.add_argument("--scale", type=Path, help="bench_scale.py --json output")
    ap.add_argument("--k", default=None, help="which of the engine's k runs (default: the first)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    a = ap.parse_args(argv)
    systems = {}
    if a.engine:
        runs = json.loads(a.engine.read_text())["runs"]
        systems["musichash"] = runs[a.k or next(iter(runs))]["summary"]
    if a.chromaprint:
        systems["Chromaprint"] = json.loads(a.chromaprint.read_text())["summary"]
    if systems:
        print(hit_rate_vs_length(systems, a.out / "hit_rate.png"))
    if a.scale:
        print(latency_vs_size(json.loads(a.scale.read_text())["results"], a.out / "latency.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
