"""Chromaprint baseline on exactly the queries and dedup set of ``eval_engine.py``.

Each library track is fingerprinted with ``fpcalc -raw`` (32-bit
sub-fingerprints, one per 1365 samples at 11025 Hz = 0.1238 s, the defaults
of algorithm 2). The degraded excerpts are regenerated with eval_engine's own
functions, seed and random-number call order, so query i here is query i
there; each is written to a temporary WAV, fingerprinted, and matched against
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
    python benchmarks/bench_chromaprint.py --manifest /tmp/corpus_full/manifest.jsonl --work /tmp/evalfull \\
        --queries 20 --seed 0 --held-out 4 --minutes-per-track 5

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_engine import (  # noqa: E402  (benchmarks/eval_engine.py)
    LENGTHS_S,
    Outcome,
    cut_corpus,
    draw_queries,
    report_queries,
    threshold_rows,
)

from musichash.audio import SAMPLE_RATE  # noqa: E402

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
                tmp: Path) -> tuple[list[Outcome], list[dict]]:
    """eval_engine's queries (draw_queries), answered by fingerprint BER; Outcome.score is 1 - BER."""
    wav = tmp / "query.wav"
    outcomes, extra = [], []
    for length, cond, inside, f, y, off in draw_queries(lib_files, held, n, seed):
        t0 = time.perf_counter()
        sf.write(str(wav), y, SAMPLE_RATE, subtype="FLOAT")
        xq = fpcalc(wav, length)
        t1 = time.perf_counter()
        hits = sorted(((best_alignment(xq, fps[g], len(xq)), g) for g in lib_files), key=lambda h: h[0].ber)
        t2 = time.perf_counter()
        ranked = [g for _, g in hits[:10]]
        best, g0 = hits[0]
        top1 = inside and g0 == f
        err = abs(best.offset * ITEM_S - off) if top1 else None
        outcomes.append(Outcome(f.name, length, cond, inside, top1, inside and f in ranked, err,
                                1.0 - best.ber, t2 - t0))
        extra.append({"ber": best.ber, "items": len(xq), "fingerprint_s": t1 - t0, "match_s": t2 - t1,
                      "true_offset_s": off, "found": g0.name, "found_offset_s": best.offset * ITEM_S})
    return outcomes, extra


def report_threshold(outs: list[Outcome]) -> tuple[str, dict]:
    """eval_engine.report_threshold's halves and targets, with thresholds shown as BER (match: BER < t)."""
    body, full, (pos, pos_hit, neg) = threshold_rows(outs, "customary", 1.0 - DEFAULT_BER, show=lambda t: 1.0 - t)
    rows = ["| BER threshold | TNR (out-of-library, held-out half) | TPR (in-library, correct top-1 and match) |",
            "|---|---|---|", *body]
    all_default = {"tnr": float(np.mean(neg <= 1.0 - DEFAULT_BER)),
                   "tpr": float(np.mean((pos > 1.0 - DEFAULT_BER) & pos_hit))}
    rows.append(f"\nAt the customary {DEFAULT_BER} on all queries: TNR {all_default['tnr']:.0%}, "
                f"TPR {all_default['tpr']:.0%}.")
    q = np.quantile(1.0 - neg, [0.0, 0.1, 0.5])
    rows.append(f"Out-of-library best BER: min {q[0]:.3f}, 10th percentile {q[1]:.3f}, median {q[2]:.3f}; "
                f"in-library with correct top-1: median {np.median(1.0 - pos[pos_hit]):.3f}.")
    return "\n".join(rows), {"calibrated_ber": 1.0 - full, "default": all_default}


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


def dedup(folder: Path, cache: Path, min_frac: float) -> tuple[str, dict]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    fps = {p.name: cached_fpcalc(p, cache) for p in files}
    families = families_of([p.name for p in files])
    truth = {frozenset((a, b)) for s in families for a in s for b in s if a < b}
    names = sorted(fps)
    best: dict[frozenset, Alignment] = {}
    t0 = time.perf_counter()
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            xq, xb = (fps[a], fps[b]) if len(fps[a]) <= len(fps[b]) else (fps[b], fps[a])
            best[frozenset((a, b))] = best_alignment(xq, xb, int(math.ceil(min_frac * len(xq))))
    t_pairs = time.perf_counter() - t0
    rows = ["| BER threshold | precision | recall | F1 | predicted pairs |", "|---|---|---|---|---|"]
    sweep = {}
    for thr in DEDUP_SWEEP:
        pred = {k for k, v in best.items() if v.ber < thr}
        tp = len(pred & truth)
        pr, rc = (tp / len(pred) if pred else 1.0), tp / len(truth)
        f1 = 2 * pr * rc / (pr + rc) if pr + rc else 0.0
        sweep[thr] = {"precision": pr, "recall": rc, "f1": f1, "predicted_pairs": len(pred)}
        bold = "**" if thr == DEFAULT_BER else ""
        rows.append(f"| {bold}{thr:.2f}{bold} | {pr:.3f} | {rc:.3f} | {bold}{f1:.3f}{bold} | {len(pred)} |")
    speed = [best[k].ber for k in truth if any(".speed" in x for x in k)]
    other = [best[k].ber for k in truth if not any(".speed" in x for x in k)]
    false = sorted((v.ber, " + ".join(sorted(k))) for k, v in best.items() if k not in truth)[:3]
    rows.append(f"\n{len(files)} files, {len(truth)} true pairs, {len(best)} pairs compared in {t_pairs:.0f} s "
                f"(overlap at least {min_frac:.0%} of the shorter file). Best BER of the true pairs: {len(other)} "
                f"without the +2 % speed variant median {np.median(other):.3f}, max {max(other):.3f}; {len(speed)} "
                f"with it (no single alignment stays in step) min {min(speed):.3f}, median {np.median(speed):.3f}, "
                f"max {max(speed):.3f}"
                + ". Lowest-BER pairs that are not the same recording: "
                + "; ".join(f"{n} ({v:.3f})" for v, n in false) + ".")
    return "\n".join(rows), {"sweep": {str(k): v for k, v in sweep.items()}, "files": len(files),
                             "true_pairs": len(truth),
                             "pairs": {" + ".join(sorted(k)): asdict(v) for k, v in best.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="eval_engine's work folder (audio/, dedup/)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chromaprint-cache",
                    help="where fingerprints of whole files are kept")
    ap.add_argument("--minutes-per-track", type=float, default=5.0)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--queries", type=int, default=20, help="per length x condition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dedup-min-overlap", type=float, default=0.5, help="fraction of the shorter file")
    ap.add_argument("--skip-dedup", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    version = check_fpcalc()
    lib_files, held = cut_corpus(a.manifest, a.work / "audio", a.minutes_per_track, a.held_out, a.seed)
    hours = sum(sf.info(str(f)).duration for f in lib_files) / 3600
    fresh = not any(cache_path(f, a.cache).exists() for f in lib_files)
    t0 = time.perf_counter()
    fps = {f: cached_fpcalc(f, a.cache) for f in lib_files}
    t_fp = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        outs, extra = run_queries(lib_files, held, fps, a.queries, a.seed, Path(tmp))

    print(f"## Chromaprint ({version.splitlines()[0]}), raw fingerprints, best-alignment BER\n")
    print(f"Library: {len(lib_files)} tracks, {hours:.2f} h, {sum(map(len, fps.values()))} sub-fingerprints; "
          f"held out: {', '.join(f.name for f in held)}.")
    if fresh:
        print(f"Fingerprinting (fpcalc, one file at a time): {hours:.2f} h in {t_fp:.1f} s = "
              f"{hours * 3600 / t_fp:.0f}x real time.")
    print()
    qtable, summary = report_queries(outs)
    print(qtable + "\n")
    ttable, thr = report_threshold(outs)
    print(ttable + "\n")
    lat = {}
    for length in LENGTHS_S:
        sel = [(o, e) for o, e in zip(outs, extra) if o.length == length]
        lat[f"{length:g}s"] = {k: float(np.median([e[k] for _, e in sel]) * 1000) for k in ("fingerprint_s", "match_s")}
        tot = np.array([o.latency_s for o, _ in sel]) * 1000
        lat[f"{length:g}s"].update(p50=float(np.median(tot)), p99=float(np.quantile(tot, 0.99)))
        print(f"{length:g} s query latency (WAV write + fpcalc + BER against all {len(lib_files)} tracks): "
              f"p50 {np.median(tot):.0f} ms, p99 {np.quantile(tot, 0.99):.0f} ms "
              f"(fingerprint p50 {lat[f'{length:g}s']['fingerprint_s']:.0f} ms, "
              f"match p50 {lat[f'{length:g}s']['match_s']:.1f} ms).")
    print()
    sys.stdout.flush()

    d = None
    if not a.skip_dedup:
        dtable, d = dedup(a.work / "dedup", a.cache, a.dedup_min_overlap)
        print("Dedup by pair BER:\n\n" + dtable + "\n")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "threshold": thr, "latency_ms": lat, "dedup": d,
                                      "outcomes": [{**o.__dict__, **e} for o, e in zip(outs, extra)]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
