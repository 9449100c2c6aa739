"""Compare two run_all.py runs figure by figure: does a rerun reproduce BENCHMARKS.md?

    python -m benchmarks.compare_runs /tmp/mhb-full/results /tmp/mhb-rerun/results --out benchmarks/RERUN.md

Each argument is a run's ``results`` folder (the JSON that run_all.py writes
under --work). The headline figures of both runs are read side by side and
sorted into two kinds:

* **quality** (hit rates, rejection, dedup F1, mAP@R, ROC-AUC, bytes per hour):
  the queries, libraries and models are seeded, so a rerun should give the
  same number; within noise means an absolute difference of at most
  --quality-tol (default 0.005, half a percentage point);
* **cost** (throughput, latency, scan rate, peak memory): within noise means a
  relative difference of at most --cost-tol (default 0.20). Two runs of one
  commit on this 2-core VM agree that well on every end-to-end timing
  (indexing, warm queries, fpcalc, tagging). bench_scale.py's millisecond
  timings did not (up to 2.4x apart): this machine runs the same scan at one
  of two speeds from one minute to the next. So they now come in timing
  rounds spread over the run, and such a figure is also within noise when
  the two runs' ranges of round p50s overlap (each run saw the other's value).

The exit code is 0 when every figure is within noise, 1 otherwise, so a
regeneration can be checked by a script as well as read.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

QUALITY, COST = "quality", "cost"


@dataclass(frozen=True)
class Figure:
    step: str
    name: str
    kind: str  # QUALITY or COST
    a: float | None
    b: float | None
    #: (lowest, highest) of the timing rounds behind a bench_scale latency, per run; None without rounds
    a_range: tuple[float, float] | None = None
    b_range: tuple[float, float] | None = None

    def diff(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        if self.kind == QUALITY:
            return self.b - self.a
        return (self.b - self.a) / self.a if self.a else None

    def within(self, quality_tol: float, cost_tol: float) -> bool:
        d = self.diff()
        if d is not None and abs(d) <= (quality_tol if self.kind == QUALITY else cost_tol):
            return True
        return d is not None and self.overlap()

    def overlap(self) -> bool:
        """Both runs timed this in rounds, and their ranges of round p50s share a value."""
        if self.a_range is None or self.b_range is None:
            return False
        return max(self.a_range[0], self.b_range[0]) <= min(self.a_range[1], self.b_range[1])


def _get(d: dict, path: str):
    for key in path.split("."):
        if isinstance(d, list):
            d = d[int(key)]
        elif isinstance(d, dict) and key in d:
            d = d[key]
        else:
            return None
    return d


def _engine(r: dict) -> Iterator[tuple[str, str, object]]:
    run = r["runs"][str(max(int(k) for k in r["runs"]))]
    for row in run["summary"]["by_length"]:
        yield f"top-1, {row['length']:g} s", QUALITY, row["top1"]
        yield f"top-10, {row['length']:g} s", QUALITY, row["top10"]
    yield "out-of-library rejected at the shipped threshold", QUALITY, _get(run, "threshold.fixed_all.tnr")
    yield "in-library matched at the shipped threshold", QUALITY, _get(run, "threshold.fixed_all.tpr")
    yield "in-library matched at 95 % rejection", QUALITY, _get(run, "threshold.all.tpr")
    yield "dedup F1 at the shipped threshold", QUALITY, _get(r, "dedup.f1")
    yield "dedup best F1 of the sweep", QUALITY, max((s["f1"] for s in _get(r, "dedup.sweep") or []), default=None)
    yield "code bytes per hour", QUALITY, _get(r, "library.code_bytes_per_hour")
    yield "indexing x real time", COST, _get(r, "indexing.x_real_time")
    yield "warm 10 s query p50 ms", COST, _get(r, "latency_ms.p50")
    yield "warm 10 s query p99 ms", COST, _get(r, "latency_ms.p99")
    yield "peak RSS MB", COST, _get(r, "peak_rss_mb")


def _interim(r: dict) -> Iterator[tuple[str, str, object]]:
    """The engine's queries with the interim codes: quality only (no dedup set, no latency)."""
    for name, kind, v in _engine(r):
        if kind == QUALITY and not name.startswith("dedup"):
            yield name, kind, v


def _chromaprint(r: dict) -> Iterator[tuple[str, str, object]]:
    for row in r["summary"]["by_length"]:
        yield f"top-1, {row['length']:g} s", QUALITY, row["top1"]
    yield "out-of-library rejected at BER 0.35", QUALITY, _get(r, "threshold.fixed_all.tnr")
    yield "in-library matched at 95 % rejection", QUALITY, _get(r, "threshold.all.tpr")
    yield "dedup best F1 of the sweep", QUALITY, max((s["f1"] for s in _get(r, "dedup.sweep") or []), default=None)
    yield "fingerprinting x real time", COST, _get(r, "fingerprinting.x_real_time")
    for length, lat in sorted((r.get("latency_ms") or {}).items(), key=lambda kv: float(kv[0])):
        yield f"query {float(length):g} s p50 ms", COST, lat["p50"]


def _index(r: dict) -> Iterator[tuple[str, str, object]]:
    for stage in ("decode_x", "mel_x", "model_x"):
        yield f"stage {stage[:-2]} x real time", COST, _get(r, f"stages.{stage}")
    for row in r.get("index", []):
        yield f"index, {row['workers']} decoding workers, x real time", COST, row["x_real_time"]


def _tag(r: dict) -> Iterator[tuple[str, str, object]]:
    for row in r.get("rows", []):
        yield f"{row['model']} x real time", COST, row["x_realtime"]


def _similarity(r: dict) -> Iterator[tuple[str, str, object]]:
    for m in _get(r, "report.methods") or []:
        yield f"mAP@R {m['method']}", QUALITY, m["map_at_r"]


def _tagging(r: dict) -> Iterator[tuple[str, str, object]]:
    for model, macro in (r.get("macro") or {}).items():
        yield f"{model} macro ROC-AUC", QUALITY, macro["roc_auc"]


def _scale(r: dict) -> Iterator[tuple[str, str, object]]:
    yield "numpy copy GB/s", COST, _get(r, "meta.copy_gbps")
    for row in r.get("results", []):
        n = f"{row['n_tracks']:,} tracks"
        yield f"{n}: search core p50 ms", COST, _get(row, "core.single_p50_ms"), _get(row, "core.single_rounds_ms")
        yield f"{n}: search core batched, 2 threads, us/query", COST, _get(row, "core.batch2_us_per_q")
        for run in row.get("runs", []):
            yield f"{n}: {run['variant']} query p50 ms", COST, run["p50_ms"], run.get("p50_rounds_ms")
            if run.get("recall") is not None:
                yield f"{n}: {run['variant']} recall", QUALITY, run["recall"]


def _libscale(r: dict) -> Iterator[tuple[str, str, object]]:
    for row in r.get("results", []):
        n = f"{row['n_tracks']:,} tracks"
        yield f"{n}: Library.search p50 ms", COST, row["p50_ms"], row.get("rounds_ms")
        yield f"{n}: Library.encode p50 ms", COST, row["encode_p50_ms"]
        yield f"{n}: top-1 of real clips", QUALITY, row["top1"]


STEPS: dict[str, Callable[[dict], Iterator[tuple[str, str, object]]]] = {
    "engine": _engine, "libscale": _libscale, "chromaprint": _chromaprint, "interim": _interim, "index": _index,
    "tag": _tag, "similarity": _similarity, "tagging": _tagging, "scale": _scale,
}


def _load(folder: Path, step: str) -> dict | None:
    f = folder / f"{step}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _read(folder: Path, step: str) -> dict[str, tuple[str, float | None, tuple[float, float] | None]]:
    """A run's figures of one step: name -> (kind, value, range of its timing rounds); empty when the step did not run."""
    r = _load(folder, step)
    out = {}
    for name, kind, v, *rounds in STEPS[step](r) if r else ():
        rng = (min(rounds[0]), max(rounds[0])) if rounds and rounds[0] and len(rounds[0]) > 1 else None
        out[name] = (kind, None if v is None else float(v), rng)
    return out


def figures(a: Path, b: Path, steps: tuple[str, ...] = tuple(STEPS)) -> list[Figure]:
    out = []
    for step in steps:
        fa, fb = _read(a, step), _read(b, step)
        for name in {**fa, **fb}:  # a's figures in order, then any only b has
            kind = (fa.get(name) or fb[name])[0]
            _, va, ra = fa.get(name, (kind, None, None))
            _, vb, rb = fb.get(name, (kind, None, None))
            out.append(Figure(step, name, kind, va, vb, ra, rb))
    return out


def _commit(folder: Path) -> str:
    run = _load(folder, "run") or {}
    return f"{_get(run, 'meta.commit') or '?'}, {_get(run, 'meta.date') or '?'}"


def render(figs: list[Figure], a: Path, b: Path, quality_tol: float, cost_tol: float) -> str:
    ok = [f.within(quality_tol, cost_tol) for f in figs]
    lines = [
        "# Rerun check",
        "",
        f"A: `{a}` ({_commit(a)})  ",
        f"B: `{b}` ({_commit(b)})",
        "",
        f"Within noise: quality figures differ by at most {quality_tol} (absolute), cost figures by at most "
        f"{cost_tol:.0%} (relative), or, for a latency timed in rounds (its rounds' range in brackets), "
        f"when the two runs' ranges overlap. **{sum(ok)} of {len(figs)} figures are within noise**; "
        f"{sum(f.kind == QUALITY and f.diff() == 0 for f in figs)} of {sum(f.kind == QUALITY for f in figs)} "
        "quality figures are identical.",
        "",
        "| step | figure | kind | A | B | difference | within noise |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, good in zip(figs, ok):
        d = f.diff()
        ds = "n/a" if d is None else (f"{d:+.4f}" if f.kind == QUALITY else f"{d:+.1%}")
        va, vb = _value(f.a, f.a_range), _value(f.b, f.b_range)
        lines.append(f"| {f.step} | {f.name} | {f.kind} | {va} | {vb} | {ds} | {'yes' if good else '**no**'} |")
    return "\n".join(lines) + "\n"


def _value(v: float | None, rng: tuple[float, float] | None) -> str:
    if v is None:
        return "missing"
    return f"{v:.4g}" + (f" ({rng[0]:.4g}–{rng[1]:.4g})" if rng else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="the first run's results folder")
    ap.add_argument("b", type=Path, help="the rerun's results folder")
    ap.add_argument("--quality-tol", type=float, default=0.005)
    ap.add_argument("--cost-tol", type=float, default=0.20)
    ap.add_argument("--out", type=Path, help="write the Markdown here (default: stdout)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS),
                    help="compare only these steps (a rerun of some steps: run_all.py --steps ...)")
    args = ap.parse_args(argv)
    for folder in (args.a, args.b):
        if not (folder / "run.json").exists():
            ap.error(f"{folder}: no run.json; pass a run_all.py --work folder's results/")
    figs = figures(args.a, args.b, tuple(args.steps))
    text = render(figs, args.a, args.b, args.quality_tol, args.cost_tol)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(f), "diff": f.diff(),
                                          "within": f.within(args.quality_tol, args.cost_tol)} for f in figs],
                                         indent=1))
    return 0 if all(f.within(args.quality_tol, args.cost_tol) for f in figs) else 1


if __name__ == "__main__":
    sys.exit(main())
