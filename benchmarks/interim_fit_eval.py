"""Compare fitted code models on the interim-codes protocol (VGG pool5 only).

The method of ``benchmarks/interim_codes.py`` (same tracks, held-out tracks,
seeded excerpts and degradations for a given seed, exact Hamming kNN with
k=10, then ``musichash.search.vote``), but the binarizers are loaded from files
fitted elsewhere (``data/code_models/fit_interim.py``) instead of being fitted
on the library itself. Features are computed once per seed and cached, so many
binarizers cost little more than one.

    python benchmarks/interim_fit_eval.py --manifest /tmp/corpus_full/manifest.jsonl \\
        --seeds 0 1 --queries 20 \\
        itq=/tmp/fit_out_itq/interim_vgg_itq64.safetensors \\
        lda_itq=musichash/models/weights/interim_vgg_itq64.safetensors

``--library-itq`` adds the previous experiment's shortcut (64-bit ITQ fitted
on the library segments) as a reference row.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data" / "code_models"))

from interim_codes import (  # noqa: E402  (benchmarks/interim_codes.py)
    CONDITIONS,
    FRAME_S,
    K,
    LENGTHS_S,
    LIB_HOP,
    QUERY_HOP,
    draw_queries,
    load_tracks,
)

from fit_interim import window_features as pool5  # noqa: E402  (the fit's own feature extraction)

from musichash.train import augment  # noqa: E402
from musichash.features.audio import SAMPLE_RATE  # noqa: E402
from musichash.train import fit_binarizer
from musichash.models.binarizer import Binarizer  # noqa: E402
from musichash.models import build_backbone  # noqa: E402
from musichash.search.faiss_index import hamming_knn  # noqa: E402
from musichash.search.vote import SegmentHits, vote  # noqa: E402


def track_segments(model, tracks, t: int, minutes: float, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Library segments of track ``t``, cached across seeds (the held-out tracks differ)."""
    key = hashlib.sha1(f"{tracks[t][0]}|{len(tracks[t][1])}|{minutes}|{LIB_HOP}".encode()).hexdigest()[:10]
    path = cache_dir / f"interim_fit_eval_lib_{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["starts"], z["feats"]
    starts, feats = pool5(model, tracks[t][1], LIB_HOP)
    np.savez(path, starts=starts, feats=feats)
    return starts, feats


def seed_features(tracks, model, seed: int, n: int, n_out: int, minutes: float, cache_dir: Path) -> dict:
    """Library segments and query windows for one seed (cached)."""
    rng = np.random.default_rng(seed)
    held_out = sorted(int(i) for i in rng.choice(len(tracks), 2, replace=False))
    lib_tracks = [i for i in range(len(tracks)) if i not in held_out]
    queries = draw_queries(tracks, lib_tracks, held_out, n, n_out, rng)
    key = hashlib.sha1(f"{[t[0] for t in tracks]}|{minutes}|{seed}|{n}|{n_out}|{LIB_HOP}|{QUERY_HOP}".encode())
    path = cache_dir / f"interim_fit_eval_{key.hexdigest()[:10]}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        qf = [z[f"q{i}"] for i in range(len(queries))]
        qt = [z[f"t{i}"] for i in range(len(queries))]
        return {"held_out": held_out, "queries": queries, "seg_track": z["seg_track"],
                "seg_time": z["seg_time"], "lib": z["lib"], "qf": qf, "qt": qt}
    seg_track, seg_time, lib = [], [], []
    for t in lib_tracks:
        starts, f = track_segments(model, tracks, t, minutes, cache_dir)
        seg_track.append(np.full(len(starts), t))
        seg_time.append(starts * FRAME_S)
        lib.append(f)
    qf, qt = [], []
    for qn, q in enumerate(queries):
        a = int(q.offset_s * SAMPLE_RATE)
        clip = tracks[q.track][1][a : a + int(q.length_s * SAMPLE_RATE)]
        clip = augment.chain(*CONDITIONS[q.condition]).apply(clip, np.random.default_rng([seed, qn]))
        starts, f = pool5(model, clip, QUERY_HOP)
        qf.append(f)
        qt.append(starts * FRAME_S)
    out = {"seg_track": np.concatenate(seg_track), "seg_time": np.concatenate(seg_time),
           "lib": np.concatenate(lib)}
    np.savez(path, **out, **{f"q{i}": f for i, f in enumerate(qf)}, **{f"t{i}": t for i, t in enumerate(qt)})
    return {"held_out": held_out, "queries": queries, **out, "qf": qf, "qt": qt}


def evaluate(b: Binarizer, s: dict) -> tuple[dict, list]:
    """(condition, length) -> [correct], and the top scores of out-of-library queries."""
    xb = b.encode(s["lib"])
    res: dict[tuple[str, float], list[bool]] = {}
    outs = []
    for q, f, t in zip(s["queries"], s["qf"], s["qt"]):
        D, I = hamming_knn(b.encode(f), xb, K)
        votes = vote(SegmentHits.from_knn(t, D, I, s["seg_track"], s["seg_time"], b.bits))
        top = votes[0] if votes else None
        if q.in_library:
            res.setdefault((q.condition, q.length_s), []).append(top is not None and top.track_id == q.track)
        else:
            outs.append(top.score if top else 0.0)
    return res, outs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binarizers", nargs="*", metavar="NAME=PATH", help="binarizer files to compare")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--minutes-per-track", type=float, default=3.0)
    p.add_argument("--queries", type=int, default=20, help="in-library excerpts per length (each under every condition)")
    p.add_argument("--out-queries", type=int, default=10, help="out-of-library excerpts per length")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--library-itq", action="store_true", help="add 64-bit ITQ fitted on the library (shortcut)")
    p.add_argument("--cache", type=Path, default=Path("/tmp"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    t0 = time.time()
    tracks = load_tracks(args.manifest, args.minutes_per_track)
    model = build_backbone("MTT_vgg")
    named = [tuple(a.split("=", 1)) for a in args.binarizers]
    rows: dict[str, dict] = {}
    outs: dict[str, list] = {}
    for seed in args.seeds:
        s = seed_features(tracks, model, seed, args.queries, args.out_queries, args.minutes_per_track, args.cache)
        print(f"seed {seed}: {len(s['lib'])} library segments, held out "
              f"{[tracks[i][0] for i in s['held_out']]} ({time.time() - t0:.0f}s)", file=sys.stderr)
        models = [(name, Binarizer.load(path)) for name, path in named]
        if args.library_itq:
            models.append(("itq on library (shortcut)", fit_binarizer.fit(s["lib"], 64, "itq", seed=seed)))
        for name, b in models:
            res, o = evaluate(b, s)
            for k, v in res.items():
                rows.setdefault(name, {}).setdefault(k, []).extend(v)
            outs.setdefault(name, []).extend(o)

    cols = [(c, L) for L in LENGTHS_S for c in CONDITIONS]
    n = len(args.seeds) * args.queries
    print(f"\nTop-1 track accuracy (%), n={n} excerpts per cell (seeds {' '.join(map(str, args.seeds))}), "
          f"k={K}, first {args.minutes_per_track:g} min per track\n")
    print("| model | bits | " + " | ".join(f"{c} {L:g}s" for c, L in cols) + " | mean | out-of-lib score median |")
    print("|---" * (len(cols) + 4) + "|")
    bits = {name: Binarizer.load(path).bits for name, path in named}
    for name, r in rows.items():
        accs = [100 * np.mean(r[k]) for k in cols]
        print(f"| {name} | {bits.get(name, 64)} | " + " | ".join(f"{a:.0f}" for a in accs)
              + f" | {np.mean(accs):.1f} | {np.median(outs[name]):.2f} |")
    print(f"\n{time.time() - t0:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
