"""Chromaprint baseline on exactly the queries and dedup set of ``eval_engine.py``.

Each library track is fingerprinted with ``fpcalc -raw`` (32-bit
sub-fingerprints, one per 1365 samples at 11025 Hz = 0.1238 s, the defaults
of algorithm 2). The degraded excerpts are drawn by the same function
(``queries.draw_queries``) with the same query set, seed and count as
eval_engine.py, so query i here is query i there; each is written to a temporary WAV, fingerprinted, and matched against
every track by the usual raw-fingerprint bit-error rate (BER, popcount of XOR
over 32 x overlap) at the best alignment, the query lying wholly inside the
track. Top-1 is the track with the lowest BER; a match is BER below a
threshold (the customary 0.35, and one calibrated for 95 % true-negative rate
on the out-of-library queries as eval_engine does).

Dedup: every pair of files in eval_engine's dedup folder is compared by the
lowest BER over alignments that overlap at least half of the shorter file;
pairs below a threshold are predicted duplicates, scored by pair precision /
recall / F1 against the true families.

    apt-get install libchromaprint-tools
    python -m benchmarks.bench_chromaprint --manifest /tmp/corpus_full/manifest.jsonl --work /tmp/evalfull \\
        --query-set core --queries 20 --seed 0 --held-out 4 --minutes-per-track 5

``--work`` is eval_engine's work folder: its cut audio and dedup files are
read, never written (fingerprints are cached under ``--cache``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.common import machine, peak_rss_mb
from benchmarks.queries import (
    SETS,
    Outcome,
    clip_id,
    cut_corpus,
    draw_queries,
    pair_scores,
    pairs_of,
    query_table,
    summarize,
    threshold_data,
    threshold_table,
)

from musichash.features.audio import SAMPLE_RATE

ITEM_S = 1365 / 11025  # chromaprint's hop: FRAME_SIZE 4096 with OVERLAP 4096 - 4096 / 3, at 11025 Hz
DEFAULT_BER = 0.35
DEDUP_SWEEP = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


class FpcalcError(RuntimeError):
    pass


@dataclass(frozen=True)
class Alignment:
    ber: float  # bit-error rate at the best alignment
    offset: int  # index in the reference of the query's first sub-fingerprint (may be negative)
    overlap: int  # sub-fingerprints compared


def check_fpcalc() -> str:
    exe = shutil.which("fpcalc")
    if exe is None:
        sys.exit("fpcalc not found; install Chromaprint's command-line tool: "
                 "apt-get update && apt-get install libchromaprint-tools")
    return subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.strip()


def fpcalc(path: Path, seconds: float) -> np.ndarray:
    """Raw sub-fingerprints of a file's first ``seconds``: uint32 [n]."""
    r = subprocess.run(["fpcalc", "-raw", "-json", "-length", str(int(math.ceil(seconds)) + 1), str(path)],
                       capture_output=True, text=True)
    # fpcalc 1.5 exits 3 with "Error decoding audio frame (End of file)" at the end of some FLACs, after
    # printing the whole fingerprint; only a missing fingerprint is a failure.
    if not r.stdout.strip() or (r.returncode != 0 and "End of file" not in r.stderr):
        raise FpcalcError(f"{path.name}: fpcalc failed ({r.returncode}): {r.stderr.strip()}")
    return np.asarray(json.loads(r.stdout)["fingerprint"], dtype=np.uint32)


def cache_path(path: Path, cache: Path) -> Path:
    """Where a file's fingerprint is cached: keyed by its path, size and mtime."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache / f"{path.name}.{key}.npy"


def cached_fpcalc(path: Path, cache: Path) -> np.ndarray:
    """fpcalc of the whole file, cached."""
    dest = cache_path(path, cache)
    if dest.exists():
        return np.load(dest)
    fp = fpcalc(path, sf.info(str(path)).duration)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(dest, fp)
    return fp


def best_alignment(xq: np.ndarray, xb: np.ndarray, min_overlap: int) -> Alignment:
    """Lowest BER of xq: uint32 [m] slid over xb: uint32 [n], over offsets with at least min_overlap items shared."""
    m, n = len(xq), len(xb)
    D = np.bitwise_count(xq[:, None] ^ xb[None, :])  # uint8 [m, n]: bit errors of item i against item j
    diag = (np.arange(n)[None, :] - np.arange(m)[:, None] + (m - 1)).ravel()  # offset j - i, shifted to >= 0
    errs = np.bincount(diag, weights=D.ravel(), minlength=m + n - 1)
    offs = np.arange(-(m - 1), n)
    overlap = np.minimum(offs + m, n) - np.maximum(offs, 0)
    ok = overlap >= min(min_overlap, m, n)
    ber = np.where(ok, errs / (32.0 * np.maximum(overlap, 1)), np.inf)
    i = int(np.argmin(ber))
    return Alignment(float(ber[i]), int(offs[i]), int(overlap[i]))


def run_queries(lib_files: list[Path], held: list[Path], fps: dict[Path, np.ndarray], n: int, seed: int,
                tmp: Path, qset: str = "core") -> tuple[list[Outcome], list[dict]]:
    """eval_engine's queries (draw_queries), answered by fingerprint BER; Outcome.score is 1 - BER."""
    wav = tmp / "query.wav"
    outcomes, extra = [], []
    for length, cond, inside, f, y, off in draw_queries(lib_files, held, n, seed, qset):
        t0 = time.perf_counter()
        sf.write(str(wav), y, SAMPLE_RATE, subtype="FLOAT")
        xq = fpcalc(wav, length)
        t1 = time.perf_counter()
        o, best, g0 = answer(xq, {g: fps[g] for g in lib_files}, length, cond, inside, f, y, off, t0)
        t2 = time.perf_counter()
        outcomes.append(o)
        extra.append({"ber": best.ber, "items": len(xq), "fingerprint_s": t1 - t0, "match_s": t2 - t1,
                      "true_offset_s": off, "found": g0.name, "found_offset_s": best.offset * ITEM_S})
    return outcomes, extra


def answer(xq: np.ndarray, fps: dict[Path, np.ndarray], length: float, cond: str, inside: bool, f: Path,
           y: np.ndarray, off: float, t0: float) -> tuple[Outcome, Alignment, Path]:
    """A clip's fingerprint ``xq`` ranked against the library's ``fps`` by best-alignment BER: its outcome
    (score 1 - BER, matched below ``DEFAULT_BER``, timed from ``t0``), best alignment and first track."""
    hits = sorted(((best_alignment(xq, fp, len(xq)), g) for g, fp in fps.items()), key=lambda h: h[0].ber)
    best, g0 = hits[0]
    top1 = inside and g0 == f
    err = abs(best.offset * ITEM_S - off) if top1 else None
    return (Outcome(f.name, length, cond, inside, top1, inside and f in [g for _, g in hits[:10]], err,
                    1.0 - best.ber, time.perf_counter() - t0, clip_id(y), None, best.ber < DEFAULT_BER), best, g0)


def threshold_extra(outs: list[Outcome]) -> dict:
    """Quantiles of the best BER of out-of-library clips and of in-library clips found first."""
    pos = np.array([1.0 - o.score for o in outs if o.in_library and o.top1])
    neg = np.array([1.0 - o.score for o in outs if not o.in_library])
    q = np.quantile(neg, [0.0, 0.1, 0.5]) if len(neg) else [None] * 3
    return {"ool_ber_min": q[0], "ool_ber_p10": q[1], "ool_ber_median": q[2],
            "hit_ber_median": float(np.median(pos)) if len(pos) else None}


def render_threshold(t: dict, extra: dict) -> str:
    """eval_engine's threshold table with thresholds shown as BER (match: BER < t)."""
    rows = [threshold_table(t, "customary", "BER threshold", show=lambda x: 1.0 - x),
            f"\nAt the customary {DEFAULT_BER} on all queries: TNR {t['fixed_all']['tnr']:.0%}, "
            f"TPR {t['fixed_all']['tpr']:.0%}."]
    if extra["ool_ber_min"] is not None:
        rows.append(f"Out-of-library best BER: min {extra['ool_ber_min']:.3f}, 10th percentile {extra['ool_ber_p10']:.3f}, "
                    f"median {extra['ool_ber_median']:.3f}; in-library with correct top-1: median "
                    f"{extra['hit_ber_median']:.3f}.")
    return "\n".join(rows)


def families_of(names: list[str]) -> list[set[str]]:
    """True families from eval_engine.dedup_set's names: an original ``stem.flac`` and its ``stem.variant.ext``
    files; ``*.arrangement.*`` are their own family. Stems may contain dots (``bach-bwv120.8``), so a file
    joins the longest original stem it starts with rather than splitting at the first dot."""
    origs = sorted((Path(x).stem for x in names if any(y.startswith(Path(x).stem + ".") for y in names if y != x)),
                   key=len, reverse=True)
    fams: dict[str, set[str]] = {}
    for x in names:
        if ".arrangement." in x:
            fams[x] = {x}
            continue
        stem = next((s for s in origs if x.startswith(s + ".")), x)
        fams.setdefault(stem, set()).add(x)
    return list(fams.values())


def dedup(folder: Path, cache: Path, min_frac: float) -> dict:
    """Best-alignment BER of every pair of files in eval_engine's dedup folder, swept over thresholds."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    fps = {p.name: cached_fpcalc(p, cache) for p in files}
    families = families_of([p.name for p in files])
    truth = pairs_of(families)
    names = sorted(fps)
    best: dict[frozenset, Alignment] = {}
    t0 = time.perf_counter()
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            xq, xb = (fps[a], fps[b]) if len(fps[a]) <= len(fps[b]) else (fps[b], fps[a])
            best[frozenset((a, b))] = best_alignment(xq, xb, int(math.ceil(min_frac * len(xq))))
    t_pairs = time.perf_counter() - t0
    sweep = [{"threshold": thr, **pair_scores({k for k, v in best.items() if v.ber < thr}, truth)} for thr in DEDUP_SWEEP]
    speed = [best[k].ber for k in truth if any(".speed" in x for x in k)]
    other = [best[k].ber for k in truth if not any(".speed" in x for x in k)]
    false = sorted((v.ber, " + ".join(sorted(k))) for k, v in best.items() if k not in truth)[:3]
    return {"sweep": sweep, "files": len(files), "true_pairs": len(truth), "pairs_s": t_pairs,
            "min_overlap": min_frac, "ber_true_no_speed": other, "ber_true_speed": speed,
            "top_false": [[n, v] for v, n in false],
            "pairs": {" + ".join(sorted(k)): asdict(v) for k, v in best.items()}}


def render_dedup(d: dict) -> str:
    rows = ["| BER threshold | precision | recall | F1 | predicted pairs |", "|---|---|---|---|---|"]
    for r in d["sweep"]:
        b = "**" if r["threshold"] == DEFAULT_BER else ""
        rows.append(f"| {b}{r['threshold']:.2f}{b} | {r['precision']:.3f} | {r['recall']:.3f} | {b}{r['f1']:.3f}{b} "
                    f"| {r['predicted_pairs']} |")
    other, speed = d["ber_true_no_speed"], d["ber_true_speed"]
    text = (f"\n{d['files']} files, {d['true_pairs']} true pairs, {len(d['pairs'])} pairs compared in "
            f"{d['pairs_s']:.0f} s (overlap at least {d['min_overlap']:.0%} of the shorter file).")
    if other and speed:
        text += (f" Best BER of the true pairs: {len(other)} without the +2 % speed variant median "
                 f"{np.median(other):.3f}, max {max(other):.3f}; {len(speed)} with it (no single alignment stays in "
                 f"step) min {min(speed):.3f}, median {np.median(speed):.3f}, max {max(speed):.3f}.")
    if d["top_false"]:
        text += (" Lowest-BER pairs that are not the same recording: "
                 + "; ".join(f"{n} ({v:.3f})" for n, v in d["top_false"]) + ".")
    return "\n".join(rows) + "\n" + text


def evaluate(a: argparse.Namespace) -> dict:
    version = check_fpcalc()
    if a.fresh:  # time fingerprinting the library
        shutil.rmtree(a.cache, ignore_errors=True)
    lib_files, held = cut_corpus(a.manifest, a.work / "audio", a.minutes_per_track, a.held_out, a.seed)
    hours = sum(sf.info(str(f)).duration for f in lib_files) / 3600
    fresh = not any(cache_path(f, a.cache).exists() for f in lib_files)
    t0 = time.perf_counter()
    fps = {f: cached_fpcalc(f, a.cache) for f in lib_files}
    t_fp = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        outs, extra = run_queries(lib_files, held, fps, a.queries, a.seed, Path(tmp), a.query_set)
    match = 1.0 - DEFAULT_BER
    d = {"meta": machine(), "fpcalc": version.splitlines()[0] if version else "?",
         "query_set": SETS[a.query_set].describe(), "queries_per_cell": a.queries, "seed": a.seed,
         "library": {"tracks": len(lib_files), "hours": hours, "items": sum(map(len, fps.values())),
                     "held_out": [f.name for f in held]},
         "fingerprinting": {"wall_s": t_fp, "x_real_time": hours * 3600 / t_fp} if fresh else None,
         "summary": summarize(outs, match), "threshold": threshold_data(outs, match),
         "threshold_extra": threshold_extra(outs), "latency_ms": {}}
    for length in SETS[a.query_set].lengths:
        sel = [(o, e) for o, e in zip(outs, extra) if o.length == length]
        lat = {k: float(np.median([e[k] for _, e in sel]) * 1000) for k in ("fingerprint_s", "match_s")}
        tot = np.array([o.latency_s for o, _ in sel]) * 1000
        d["latency_ms"][f"{length:g}"] = {**lat, "n": len(sel), "p50": float(np.median(tot)),
                                          "p99": float(np.quantile(tot, 0.99))}
    print("queries done", file=sys.stderr, flush=True)
    if not a.skip_dedup and (a.work / "dedup").is_dir():
        d["dedup"] = dedup(a.work / "dedup", a.cache, a.dedup_min_overlap)
    d["outcomes"] = [{**o.__dict__, **e} for o, e in zip(outs, extra)]
    d["peak_rss_mb"] = peak_rss_mb()
    return d


def render_latency(d: dict) -> str:
    return "\n".join(
        f"- Chromaprint, {length} s query (WAV write + fpcalc + BER against all {d['library']['tracks']} tracks), "
        f"{lat['n']} queries: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms (fingerprint p50 "
        f"{lat['fingerprint_s']:.0f} ms, match p50 {lat['match_s']:.1f} ms)." for length, lat in d["latency_ms"].items())


def render_intro(d: dict) -> str:
    lib = d["library"]
    return (f"Chromaprint: {d['fpcalc']}, algorithm 2 defaults; each library track's `fpcalc -raw` sub-fingerprints "
            f"({lib['items']:,} in all), each excerpt written to a WAV and fingerprinted the same way, and slid over "
            "every track (brute force): bit-error rate (BER) at the best alignment, the query wholly inside the "
            "track; top-1 is the lowest BER, a match a BER below the threshold.")


def render(d: dict) -> str:
    """Markdown of evaluate()'s data."""
    lib = d["library"]
    lines = [render_intro(d), f"Library: {lib['tracks']} tracks, {lib['hours']:.2f} h; held out: "
             f"{', '.join(lib['held_out'])}. Query set `{d['query_set']['name']}`, {d['queries_per_cell']} queries "
             f"per length x condition, seed {d['seed']}."]
    if d["fingerprinting"]:
        fp = d["fingerprinting"]
        lines.append(f"Fingerprinting (fpcalc, one file at a time): {lib['hours']:.2f} h in {fp['wall_s']:.1f} s = "
                     f"**{fp['x_real_time']:.0f}x** real time.")
    lines += ["", query_table({"Chromaprint": d["summary"]}) + "\n",
              render_threshold(d["threshold"], d["threshold_extra"]) + "\n", render_latency(d)]
    if d.get("dedup"):
        lines.append("\nDedup by pair BER:\n\n" + render_dedup(d["dedup"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="eval_engine's work folder (audio/, dedup/)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chromaprint-cache",
                    help="where fingerprints of whole files are kept")
    ap.add_argument("--minutes-per-track", type=float, default=5.0)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--query-set", choices=sorted(SETS), default="core", help="as eval_engine's (queries.py)")
    ap.add_argument("--queries", type=int, default=20, help="per length x condition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dedup-min-overlap", type=float, default=0.5, help="fraction of the shorter file")
    ap.add_argument("--skip-dedup", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="empty --cache first, so fingerprinting is timed")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    d = evaluate(a)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print("## Chromaprint baseline\n\n" + render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
