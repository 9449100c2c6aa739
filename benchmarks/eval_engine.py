"""End-to-end engine evaluation: index real music, query it with degraded excerpts, deduplicate a variant set.

Everything goes through the public ``Library`` API, as a user's script would:

1. the corpus's tracks (cut to their first ``--minutes-per-track`` minutes)
   are indexed, except ``--held-out`` of them, which only serve as
   out-of-library queries; indexing throughput is timed end to end;
2. seeded excerpts of 10 s and 5 s, under each degradation, are searched:
   top-1 / top-10 hit rate, offset error, warm query latency;
3. the match threshold is calibrated on half of the queries (target 95 %
   true-negative rate) and reported on the other half;
4. a dedup set (re-encodes, gain, trims with fades, padding, +2 % speed, and
   for scores an alternate arrangement that must *not* merge) is indexed in
   a second library and ``dedup`` is scored by pair precision / recall / F1.

    python benchmarks/corpus.py --out /tmp/corpus_full --packages planetblupi-music-ogg fb-music-high --midi 10
    python benchmarks/eval_engine.py --manifest /tmp/corpus_full/manifest.jsonl --work /tmp/eval --queries 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402  (benchmarks/corpus.py)

from musichash import augment  # noqa: E402
from musichash.audio import SAMPLE_RATE, load_audio  # noqa: E402
from musichash.library import Clip, Library  # noqa: E402
from musichash.search import engine  # noqa: E402
from musichash.search.vote import calibrate_threshold  # noqa: E402

LENGTHS_S = (10.0, 5.0)
CONDITIONS = {
    "clean": [],
    "white5dB": [augment.noise(5.0)],
    "babble5dB": [augment.noise(5.0, kind="babble")],
    "mp3_32k": [augment.mp3(32)],
    "telephone": [augment.telephone()],
    "stretch0.95": [augment.time_stretch(0.95)],
    "stretch1.05": [augment.time_stretch(1.05)],
    "pitch-1": [augment.pitch_shift(-1.0)],
    "pitch+1": [augment.pitch_shift(1.0)],
}
OUT_CONDITIONS = ("clean", "white5dB", "mp3_32k", "pitch+1")


@dataclass
class Outcome:
    track: str
    length: float
    condition: str
    in_library: bool
    top1: bool
    top10: bool
    offset_err: float | None
    score: float
    latency_s: float


def cut_corpus(manifest: Path, out: Path, minutes: float, held_out: int, seed: int) -> tuple[list[Path], list[Path]]:
    """FLAC cuts of each track's first minutes, in out/library and out/held-out; returns both lists."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(r["source"], []).append(i)
    held = set()
    for k in range(held_out):  # alternate sources so both styles are tested out of library
        pool = by_source[sorted(by_source)[k % len(by_source)]]
        held.add(pool.pop(int(rng.integers(len(pool)))))
    lib, out_files = [], []
    for i, r in enumerate(rows):
        dest = out / ("held-out" if i in held else "library") / (r["id"].replace("/", "__") + ".flac")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = manifest.parent / r["path"]
            info = sf.info(str(src))
            y, sr = sf.read(str(src), frames=int(minutes * 60 * info.samplerate), dtype="float32")
            sf.write(str(dest), y, sr)
        (out_files if i in held else lib).append(dest)
    return lib, out_files


def excerpt(wave: np.ndarray, length: float, cond: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A degraded excerpt and its true offset (s) in the track."""
    need = length * 1.06  # room for a slowed-down stretch
    off = float(rng.uniform(0, max(0.0, len(wave) / SAMPLE_RATE - need)))
    x = wave[int(off * SAMPLE_RATE) : int((off + need) * SAMPLE_RATE)]
    y = augment.chain(*CONDITIONS[cond]).apply(x, rng)
    return y[: int(length * SAMPLE_RATE)], off


def draw_queries(lib_files, held, n: int, seed: int):
    """The seeded excerpts, in a fixed order: (length, condition, in_library, file, excerpt, true offset).

    bench_chromaprint.py draws its queries here too, so both answer exactly the same clips.
    """
    rng = np.random.default_rng(seed)
    waves = {f: load_audio(f) for f in [*lib_files, *held]}
    jobs = [(length, cond, True) for length in LENGTHS_S for cond in CONDITIONS]
    jobs += [(length, cond, False) for length in LENGTHS_S for cond in OUT_CONDITIONS]
    for length, cond, inside in jobs:
        pool = lib_files if inside else held
        for _ in range(n):
            f = pool[int(rng.integers(len(pool)))]
            y, off = excerpt(waves[f], length, cond, rng)
            yield length, cond, inside, f, y, off
        print(f"  {length:g}s {cond:12s} {'in' if inside else 'out'}: done", file=sys.stderr)


def _vote_settings(k: int | str) -> tuple[int, int | None]:
    """``10`` -> the engine's default sharing; ``10n`` -> none; ``10s4`` -> slack 4."""
    if isinstance(k, int):
        return k, engine.DEFAULT_SHARE_SLACK
    if k.endswith("n"):
        return int(k[:-1]), None
    kk, slack = k.split("s")
    return int(kk), int(slack)


def run_queries(lib: Library, lib_files, held, n: int, seed: int, ks: tuple) -> dict:
    """Each excerpt is encoded once and searched with every k (neighbours per window)."""
    index = lib.search_index()
    paths = {int(t.id): t.path for t in lib.store.tracks("ok")}
    outcomes: dict = {k: [] for k in ks}
    for length, cond, inside, f, y, off in draw_queries(lib_files, held, n, seed):
        t0 = time.perf_counter()
        enc = lib.encode(Clip(f.name, y))
        t_enc = time.perf_counter() - t0
        for k in ks:
            kk, slack = _vote_settings(k)
            t0 = time.perf_counter()
            votes, _ = engine.query_codes(index, enc.codes, enc.times, lib.store.bits, top_k=10, k=kk, share_slack=slack)
            dt = t_enc + time.perf_counter() - t0
            ranked = [paths.get(v.track_id) for v in votes]
            top1 = inside and bool(ranked) and ranked[0] == str(f.absolute())
            err = abs(votes[0].offset_s - off) if top1 else None
            outcomes[k].append(Outcome(f.name, length, cond, inside, top1, inside and str(f.absolute()) in ranked,
                                       err, votes[0].score if votes else 0.0, dt))
    return outcomes


def report_queries(outs: list[Outcome]) -> tuple[str, dict]:
    lines = ["| length | condition | top-1 | top-10 | median offset error (s) |", "|---|---|---|---|---|"]
    summary = {}
    for length in LENGTHS_S:
        for cond in CONDITIONS:
            sel = [o for o in outs if o.in_library and o.length == length and o.condition == cond]
            t1 = np.mean([o.top1 for o in sel])
            t10 = np.mean([o.top10 for o in sel])
            errs = [o.offset_err for o in sel if o.offset_err is not None]
            med = f"{np.median(errs):.2f}" if errs else "-"
            lines.append(f"| {length:g} s | {cond} | {t1:.0%} | {t10:.0%} | {med} |")
            summary[f"{length:g}s/{cond}"] = float(t1)
        sel = [o for o in outs if o.in_library and o.length == length]
        lines.append(f"| {length:g} s | **all** | **{np.mean([o.top1 for o in sel]):.1%}** | {np.mean([o.top10 for o in sel]):.1%} | |")
    return "\n".join(lines), summary


def threshold_rows(outs: list[Outcome], fixed_name: str, fixed: float, *, shipping: str = "", show=lambda t: t):
    """TNR/TPR table rows (match: score > t) for a fixed threshold, one calibrated for 95 % TNR on half the
    out-of-library queries (rates on the other half), and one on all of them.

    Shared with bench_chromaprint.py; ``show`` turns a threshold into what the table prints (e.g. BER).
    Returns (rows, the all-queries threshold, (pos, pos_hit, neg)).
    """
    pos = np.array([o.score for o in outs if o.in_library])
    pos_hit = np.array([o.top1 for o in outs if o.in_library])
    neg = np.array([o.score for o in outs if not o.in_library])
    cal = np.arange(len(neg)) % 2 == 0
    rows = []
    for name, t in ((fixed_name, fixed), ("calibrated on the other half", calibrate_threshold(pos[::2], neg[cal], target_tnr=0.95))):
        tnr = np.mean(neg[~cal] <= t)
        tpr = np.mean((pos[1::2] > t) & pos_hit[1::2])
        rows.append(f"| {name}: {show(t):.3f} | {tnr:.0%} | {tpr:.0%} |")
    full = calibrate_threshold(pos, neg, target_tnr=0.95)
    rows.append(f"| calibrated on all {len(neg)} out-of-library queries{shipping}: {show(full):.3f} | "
                f"{np.mean(neg <= full):.0%} (fitted) | {np.mean((pos > full) & pos_hit):.0%} |")
    return rows, full, (pos, pos_hit, neg)


def report_threshold(outs: list[Outcome], default: float) -> str:
    rows, _, (pos, _, neg) = threshold_rows(outs, "model default", default, shipping=" (for shipping)")
    rows = ["| threshold | TNR (out-of-library, held-out half) | TPR (in-library, correct top-1 and match) |", "|---|---|---|", *rows]
    q = np.quantile(neg, [0.5, 0.9, 1.0])
    rows.append(f"\nOut-of-library top scores: median {q[0]:.3f}, 90th percentile {q[1]:.3f}, max {q[2]:.3f}; "
                f"in-library: median {np.median(pos):.3f}.")
    return "\n".join(rows)


def dedup_set(lib_files: list[Path], manifest: Path, out: Path, k: int, seed: int) -> tuple[list[Path], list[set[str]]]:
    """Originals (3 min cuts), their variants, and alternate arrangements of scores; returns files and true families."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = {r["id"].replace("/", "__"): r for r in map(json.loads, manifest.read_text().splitlines())}
    picks = [lib_files[i] for i in rng.choice(len(lib_files), size=min(k, len(lib_files)), replace=False)]
    files, families = [], []
    for f in picks:
        y = load_audio(f, duration_s=180.0) if sf.info(str(f)).duration > 181 else load_audio(f)
        dur = len(y) / SAMPLE_RATE
        variants = {  # name -> (degradations, file type)
            "mp3_64k": ([augment.mp3(64)], "mp3"),
            "gain-6_trim_fade": ([augment.gain(-6.0), augment.crop(2.0, dur - 7.0), augment.fade(1.0, 3.0)], "ogg"),
            "pad3_fadein": ([augment.pad_silence(3.0, 1.0), augment.fade(0.5, 0.0)], "wav"),
            "speed1.02": ([augment.speed(1.02)], "flac"),
        }
        stem = f.stem
        orig = out / f"{stem}.flac"
        sf.write(str(orig), y, SAMPLE_RATE)
        fam = {orig.name}
        files.append(orig)
        for name, (chain, ext) in variants.items():
            v = out / f"{stem}.{name}.{ext}"
            _write(v, augment.chain(*chain).apply(y, rng))
            fam.add(v.name)
            files.append(v)
        families.append(fam)
        r = rows.get(stem)
        if r and r.get("score"):
            arr = out / f"{stem}.arrangement.flac"
            if _rearrange(r, arr, len(y) / SAMPLE_RATE):
                files.append(arr)
                families.append({arr.name})  # related material, its own recording
    return files, families


def _write(path: Path, y: np.ndarray) -> None:
    """soundfile for wav/flac/mp3; ffmpeg for Ogg Vorbis (libsndfile 1.2's Vorbis writer crashes on long files)."""
    if path.suffix != ".ogg":
        sf.write(str(path), y, SAMPLE_RATE)
        return
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        sf.write(str(wav), y, SAMPLE_RATE)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "libvorbis", "-q:a", "3", str(path)], check=True)


def _rearrange(row: dict, dest: Path, seconds: float) -> bool:
    """Render the same score on other instruments (an alternate arrangement)."""
    from music21 import corpus

    family = row["labels"]["instrument_family"]
    other = sorted(f for f in corpus_mod.INSTRUMENTS if f != family)[0]
    composer, name = row["score"].removeprefix("music21:").split("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "score.mid"
        try:
            corpus.parse(f"{composer}/{name}").write("midi", fp=str(midi))
        except Exception as e:  # noqa: BLE001 - music21 raises many types
            print(f"  cannot re-render {name}: {e}", file=sys.stderr)
            return False
        corpus_mod.trim_midi(midi, seconds, corpus_mod.INSTRUMENTS[other])
        corpus_mod.render(midi, dest, seconds)
    return True


def dedup_sweep(lib: Library, families: list[set[str]]) -> str:
    """Pair F1 as a function of the dedup threshold (best pair score over both directions)."""
    index = lib.search_index()
    best: dict[frozenset, float] = {}
    names = {t.id: Path(t.path).name for t in lib.store.tracks("ok")}
    for t in lib.store.tracks("ok"):
        c = lib.store.get_codes(t.id)
        for p in engine.duplicates_of(index, c.segment_codes, c.segment_times, lib.store.bits,
                                      self_id=t.id, duration_s=t.duration_s, threshold=0.0):
            key = frozenset((names[t.id], names[p.b]))
            best[key] = max(best.get(key, 0.0), p.score)
    truth = {frozenset((a, b)) for s in families for a in s for b in s if a < b}
    rows = ["| threshold | precision | recall | F1 |", "|---|---|---|---|"]
    for thr in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
        pred = {k for k, v in best.items() if v >= thr}
        tp = len(pred & truth)
        pr, rc = (tp / len(pred) if pred else 1.0), tp / len(truth)
        rows.append(f"| {thr:.2f} | {pr:.3f} | {rc:.3f} | {2 * pr * rc / (pr + rc) if pr + rc else 0:.3f} |")
    false = sorted((v, " + ".join(sorted(k))) for k, v in best.items() if k not in truth)[-3:]
    rows.append("\nHighest-scoring pairs that are not the same recording: "
                + "; ".join(f"{n} ({v:.2f})" for v, n in reversed(false)) + ".")
    return "\n".join(rows)


def score_dedup(groups, families: list[set[str]]) -> dict:
    def pairs(sets):
        return {frozenset((a, b)) for s in sets for a in s for b in s if a < b}

    truth = pairs(families)
    pred = pairs([{Path(m.path).name for m in g.tracks} for g in groups])
    tp = len(truth & pred)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "true_pairs": len(truth), "predicted_pairs": len(pred),
            "false_pairs": sorted(" + ".join(sorted(x)) for x in pred - truth),
            "missed_pairs": sorted(" + ".join(sorted(x)) for x in truth - pred)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (cut audio, libraries)")
    ap.add_argument("--code-model", default=None)
    ap.add_argument("--minutes-per-track", type=float, default=5.0)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--queries", type=int, default=20, help="per length x condition")
    ap.add_argument("--dedup-tracks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", nargs="+", default=[str(engine.DEFAULT_K)],
                    help="neighbours per query window (several: a sweep); KsS shares each window's weight among "
                         "the tracks within S bits of its best hit (e.g. 10s2; plain K uses the engine's default slack, Kn none)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    lib_files, held = cut_corpus(a.manifest, a.work / "audio", a.minutes_per_track, a.held_out, a.seed)
    hours = sum(sf.info(str(f)).duration for f in lib_files) / 3600
    tag = Path(a.code_model).parent.name + "-" + Path(a.code_model).stem if a.code_model and "/" in a.code_model else (a.code_model or "default")
    libdir = a.work / f"lib-{tag}"
    t0 = time.perf_counter()
    with Library.open(libdir, write=True, code_model=a.code_model) as lib:
        rep = lib.index([a.work / "audio" / "library"], workers=None)
    t_index = time.perf_counter() - t0
    print(f"indexed {len(lib_files)} tracks, {hours:.2f} h in {t_index:.0f} s (computed {rep.audio_s / 3600:.2f} h)", file=sys.stderr)

    with Library.open(libdir) as lib:
        lib.search_index()
        runs = run_queries(lib, lib_files, held, a.queries, a.seed, tuple(int(k) if k.isdigit() else k for k in a.k))
        default_thr = lib.match_threshold
        model = lib.code_model
        # warm end-to-end latency through the public call, 10 s clips
        rng = np.random.default_rng(a.seed + 1)
        lat = []
        for _ in range(30):
            f = lib_files[int(rng.integers(len(lib_files)))]
            y, _ = excerpt(load_audio(f, duration_s=120.0), 10.0, "clean", rng)
            t0 = time.perf_counter()
            list(lib.search([Clip(f.name, y)]))
            lat.append((time.perf_counter() - t0) * 1000)
        lat = np.array(lat)

    print(f"## code model {model}\n")
    print(f"Library: {len(lib_files)} tracks, {hours:.2f} h; held out: {', '.join(f.name for f in held)}.")
    if rep.audio_s:
        print(f"Indexing: {rep.audio_s / 3600:.2f} h in {t_index:.0f} s = {rep.audio_s / t_index:.0f}x real time end to end.\n")
    summary = {}
    for k, outs in runs.items():
        qtable, summary[k] = report_queries(outs)
        print(f"### k = {k} neighbours per query window\n")
        print(qtable + "\n")
        print(report_threshold(outs, default_thr) + "\n")
    print(f"Warm 10 s query, end to end (mel, model, kNN, vote, SQL): p50 {np.median(lat):.0f} ms, p99 {np.quantile(lat, 0.99):.0f} ms.\n")
    sys.stdout.flush()

    files, families = dedup_set(lib_files, a.manifest, a.work / "dedup", a.dedup_tracks, a.seed)
    ddir = a.work / f"dedup-lib-{tag}"
    with Library.open(ddir, write=True, code_model=a.code_model) as lib:
        lib.index([a.work / "dedup"])
        groups = lib.dedup()
        dthr = lib.dedup_threshold
        sweep = dedup_sweep(lib, families)
    d = score_dedup(groups, families)

    print(f"Dedup ({len(files)} files, threshold {dthr}): precision {d['precision']:.3f}, recall {d['recall']:.3f}, "
          f"F1 **{d['f1']:.3f}** ({d['true_pairs']} true pairs, {d['predicted_pairs']} predicted).")
    print("\n" + sweep + "\n")
    for k in ("false_pairs", "missed_pairs"):
        for x in d[k][:10]:
            print(f"- {k.split('_')[0]}: {x}")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "dedup": d, "latency_ms": lat.tolist(),
                                      "outcomes": {k: [o.__dict__ for o in outs] for k, outs in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
