"""Interim experiment: which backbone features make good 64-bit segment codes?

For each candidate feature, library segments (windows every 80 frames,
1.28 s) are binarised with 64-bit ITQ, then seeded query excerpts (10 s and
5 s, several degradations) are windowed every 16 frames, encoded, searched
(exact Hamming kNN, k=10) and voted into a track ranking. We report top-1
track accuracy, the median offset error of correct answers, and the top
vote scores of in-library vs out-of-library queries.

Shortcuts, deliberately taken for a quick answer:
- each track is cut to its first ``--minutes-per-track`` minutes;
- ITQ is fitted on the library segments themselves (a real index would fit
  on separate training audio);
- two tracks are held out of the library and only serve as
  out-of-library queries.

    python benchmarks/corpus.py --out /tmp/corpus_full --packages planetblupi-music-ogg fb-music-high --midi 10
    python benchmarks/interim_codes.py --manifest /tmp/corpus_full/manifest.jsonl \
        --minutes-per-track 3 --queries 20 --out-queries 10 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musichash.train import augment
from musichash.features.audio import SAMPLE_RATE, load_audio, log_mel
from musichash.train import fit_binarizer
from musichash.models.binarizer import Binarizer
from musichash.models import build_backbone
from musichash.search.faiss_index import hamming_knn
from musichash.search.vote import SegmentHits, vote

LIB_HOP = 80  # frames (1.28 s); a multiple of VGG's 16-frame alignment
QUERY_HOP = 16  # frames (0.256 s)
FRAME_S = 256 / 16000
BITS = 64
K = 10
LENGTHS_S = (10.0, 5.0)
FEATURES = ("vgg_pool5", "vgg_pool4_tmean", "musicnn_penultimate", "musicnn_meanmax")
CONDITIONS = {
    "clean": [],
    "noise5dB": [augment.noise(5.0)],
    "mp3_32k": [augment.mp3(32)],
    "telephone": [augment.telephone()],
    "stretch1.05": [augment.time_stretch(1.05)],
    "pitch+1": [augment.pitch_shift(1.0)],
}


@dataclass(frozen=True)
class Query:
    """One excerpt: source track index, true offset (s), length (s), condition."""

    track: int
    offset_s: float
    length_s: float
    condition: str
    in_library: bool


def window_features(models: dict, mel: np.ndarray, hop: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-window features of one spectrogram.

    mel: float [T, 96] -> starts: int [n] (frames), feats: name -> float [n, D].
    """
    x = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
    out: dict[str, list[np.ndarray]] = {f: [] for f in FEATURES}
    starts: dict[str, list[np.ndarray]] = {"vgg": [], "musicnn": []}
    with torch.no_grad():
        for wb in models["vgg"].iter_windows(x, hop, features=True):
            starts["vgg"].append(wb.starts.numpy())
            out["vgg_pool5"].append(wb.features["pool5"].flatten(1).numpy())
            # pool4: [B, C, T, F] (time 11, bands 6); mean over time keeps channel x band (768-d)
            out["vgg_pool4_tmean"].append(wb.features["pool4"].mean(dim=2).flatten(1).numpy())
        for wb in models["musicnn"].iter_windows(x, hop, features=True):
            starts["musicnn"].append(wb.starts.numpy())
            f = wb.features
            out["musicnn_penultimate"].append(f["penultimate"].numpy())
            out["musicnn_meanmax"].append(torch.cat([f["mean_pool"], f["max_pool"]], dim=1).numpy())
    sv, sm = np.concatenate(starts["vgg"]), np.concatenate(starts["musicnn"])
    # The backbones place the tail window differently (VGG aligns it to 16
    # frames); keep only the windows both have so every feature sees the same.
    common = np.intersect1d(sv, sm)
    keep = {"vgg": np.isin(sv, common), "musicnn": np.isin(sm, common)}
    return common, {
        k: np.concatenate(v)[keep[k.split("_")[0]]].astype(np.float32) for k, v in out.items()
    }


def load_tracks(manifest: Path, minutes: float) -> list[tuple[str, np.ndarray]]:
    root = manifest.parent
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [(r["id"], load_audio(root / r["path"], duration_s=minutes * 60.0)) for r in rows]


def library_features(tracks, lib_tracks, models, cache: Path):
    if cache.is_file():
        z = np.load(cache)
        return z["seg_track"], z["seg_time"], {f: z[f] for f in FEATURES}
    seg_track, seg_time, feats = [], [], {f: [] for f in FEATURES}
    for t in lib_tracks:
        t0 = time.time()
        starts, fx = window_features(models, log_mel(tracks[t][1]), LIB_HOP)
        seg_track.append(np.full(len(starts), t, dtype=np.int64))
        seg_time.append(starts * FRAME_S)
        for f in FEATURES:
            feats[f].append(fx[f])
        print(f"  library {tracks[t][0]}: {len(starts)} segments, {time.time() - t0:.1f}s", file=sys.stderr)
    seg_track, seg_time = np.concatenate(seg_track), np.concatenate(seg_time)
    feats = {f: np.concatenate(v) for f, v in feats.items()}
    np.savez(cache, seg_track=seg_track, seg_time=seg_time, **feats)
    return seg_track, seg_time, feats


def draw_queries(tracks, lib_tracks, held_out, n, n_out, rng) -> list[Query]:
    qs = []
    for length in LENGTHS_S:
        for _ in range(n):
            t = int(rng.choice(lib_tracks))
            dur = len(tracks[t][1]) / SAMPLE_RATE
            off = float(rng.uniform(0, max(0.0, dur - length)))
            qs += [Query(t, off, length, c, True) for c in CONDITIONS]
        for _ in range(n_out):
            t = int(rng.choice(held_out))
            dur = len(tracks[t][1]) / SAMPLE_RATE
            off = float(rng.uniform(0, max(0.0, dur - length)))
            qs.append(Query(t, off, length, "clean", False))
    return qs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--minutes-per-track", type=float, default=3.0)
    p.add_argument("--queries", type=int, default=10, help="in-library excerpts per length (each under every condition)")
    p.add_argument("--out-queries", type=int, default=10, help="out-of-library excerpts per length")
    p.add_argument("--held-out", type=int, default=2, help="tracks kept out of the library")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default=",".join(FEATURES))
    args = p.parse_args(argv)
    feats_used = args.features.split(",")
    torch.set_num_threads(2)

    t0 = time.time()
    tracks = load_tracks(args.manifest, args.minutes_per_track)
    rng = np.random.default_rng(args.seed)
    held_out = sorted(int(i) for i in rng.choice(len(tracks), args.held_out, replace=False))
    lib_tracks = [i for i in range(len(tracks)) if i not in held_out]
    print(f"{len(tracks)} tracks loaded ({time.time() - t0:.0f}s); held out: "
          f"{[tracks[i][0] for i in held_out]}", file=sys.stderr)

    models = {"vgg": build_backbone("MTT_vgg"), "musicnn": build_backbone("MTT_musicnn")}
    key = hashlib.sha1(f"{args.manifest.resolve()}|{args.minutes_per_track}|{held_out}|{LIB_HOP}".encode()).hexdigest()[:10]
    cache = Path(f"/tmp/interim_codes_lib_{key}.npz")
    seg_track, seg_time, lib = library_features(tracks, lib_tracks, models, cache)
    print(f"library: {len(seg_track)} segments ({time.time() - t0:.0f}s, cache {cache})", file=sys.stderr)

    binz = {f: fit_binarizer.fit(lib[f], bits=BITS, kind="itq", seed=args.seed, feature=f) for f in feats_used}
    xb = {f: binz[f].encode(lib[f]) for f in feats_used}

    queries = draw_queries(tracks, lib_tracks, held_out, args.queries, args.out_queries, rng)
    # results[(feature, condition, length)] -> list of (correct, offset_err or nan, top score)
    results: dict[tuple, list] = {}
    out_scores: dict[tuple, list] = {}
    out_wins: dict[str, list] = {}  # feature -> (winning track, median Hamming) per out-of-library query
    for qn, q in enumerate(queries):
        wave = tracks[q.track][1]
        a = int(q.offset_s * SAMPLE_RATE)
        clip = wave[a : a + int(q.length_s * SAMPLE_RATE)]
        clip = augment.chain(*CONDITIONS[q.condition]).apply(clip, np.random.default_rng([args.seed, qn]))
        starts, fx = window_features(models, log_mel(clip), QUERY_HOP)
        q_times = starts * FRAME_S
        for f in feats_used:
            D, I = hamming_knn(binz[f].encode(fx[f]), xb[f], K)
            votes = vote(SegmentHits.from_knn(q_times, D, I, seg_track, seg_time, BITS))
            top = votes[0] if votes else None
            score = top.score if top else 0.0
            if not q.in_library:
                out_scores.setdefault((f, q.length_s), []).append(score)
                if top is not None:
                    out_wins.setdefault(f, []).append((tracks[top.track_id][0], top.hamming))
                continue
            ok = top is not None and top.track_id == q.track
            err = abs(top.offset_s - q.offset_s) if ok else np.nan
            results.setdefault((f, q.condition, q.length_s), []).append((ok, err, score))
            if not ok and q.condition == "clean" and f == feats_used[0]:
                won = tracks[top.track_id][0] if top else None
                print(f"  clean miss ({f}): {tracks[q.track][0]} @{q.offset_s:.1f}s {q.length_s:g}s -> {won}"
                      f" @{top.offset_s if top else float('nan'):.1f}s score {score:.2f}", file=sys.stderr)
        if qn % 20 == 0:
            print(f"  query {qn}/{len(queries)} ({time.time() - t0:.0f}s)", file=sys.stderr)

    n = args.queries
    print(f"\n### Top-1 track accuracy (%), n={n} excerpts per cell, 64-bit ITQ, k={K}, "
          f"{len(lib_tracks)} library tracks x first {args.minutes_per_track:g} min, seed {args.seed}\n")
    cols = [(c, L) for L in LENGTHS_S for c in CONDITIONS]
    print("| feature | " + " | ".join(f"{c} {L:g}s" for c, L in cols) + " | mean |")
    print("|---" * (len(cols) + 2) + "|")
    for f in feats_used:
        accs = [100 * np.mean([r[0] for r in results[(f, c, L)]]) for c, L in cols]
        print(f"| {f} | " + " | ".join(f"{a:.0f}" for a in accs) + f" | {np.mean(accs):.0f} |")

    print("\n### Median offset error of correct top-1 (s) and top scores\n")
    print("| feature | length | median offset err (s) | in-lib correct score median [p10] | "
          "in-lib wrong score median | out-of-lib score median [max] |")
    print("|---|---|---|---|---|---|")
    for f in feats_used:
        for L in LENGTHS_S:
            rs = [r for c in CONDITIONS for r in results[(f, c, L)]]
            errs = [r[1] for r in rs if r[0]]
            good = [r[2] for r in rs if r[0]]
            bad = [r[2] for r in rs if not r[0]]
            outs = out_scores.get((f, L), [])
            fmt = lambda v, fn: f"{fn(v):.3f}" if v else "-"  # noqa: E731
            print(f"| {f} | {L:g}s | {fmt(errs, np.median)} | {fmt(good, np.median)} "
                  f"[{fmt(good, lambda v: np.percentile(v, 10))}] | {fmt(bad, np.median)} | "
                  f"{fmt(outs, np.median)} [{fmt(outs, np.max)}] |")
    print("\n### Code diagnostics (library)\n")
    print("| feature | dim | distinct codes / segments | mean |bit mean - 0.5| | out-of-lib winners (median Hamming of top) |")
    print("|---|---|---|---|---|")
    for f in feats_used:
        bits_ = np.unpackbits(xb[f], axis=1)
        distinct = len(np.unique(xb[f], axis=0))
        wins: dict[str, list[int]] = {}
        for name, h in out_wins.get(f, []):
            wins.setdefault(name.split("/")[-1], []).append(h)
        w = ", ".join(f"{k} x{len(v)} (d={int(np.median(v))})" for k, v in sorted(wins.items(), key=lambda kv: -len(kv[1])))
        print(f"| {f} | {lib[f].shape[1]} | {distinct}/{len(xb[f])} | {np.abs(bits_.mean(0) - 0.5).mean():.3f} | {w} |")
    print(f"\nout-of-library: n={args.out_queries} clean excerpts per length from held-out "
          f"{[tracks[i][0] for i in held_out]}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
