"""Study: how far re-ranking a clip's first tracks can lift top-1, with the signals a library stores.

    python benchmarks/match_study/rerank_ceiling.py MANIFEST WORK MINUTES HELD_OUT N [--dump FILE]

Cuts MANIFEST as eval_engine.py does (``queries.cut_corpus``: the first MINUTES of each track,
HELD_OUT tracks out of the library, seed 0) into WORK/audio, indexes WORK/lib if it is missing, and
draws the `full` query set (N clips per length and degradation, seed 0: eval_engine.py's clips for
the same arguments) at 3, 5 and 10 s. Per clip it keeps the vote's first 10 tracks with their
scores, each one's chroma agreement (``Library.harmony``) and a dense alignment distance: every
query window against the track's segment nearest its aligned time (``asymmetric_distance``), so
that windows whose nearest neighbours missed the track count too. The dump (``--dump``) is reused
when it exists. Then it scores rules ``score / best + W * agreement - V * dense / bits`` over the
first C tracks: top-1 by length, and out-of-library clips rejected at the model's thresholds.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import musichash  # noqa: F401, I001  (first: GOMP_SPINCOUNT)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from queries import cut_corpus, draw_queries  # noqa: E402

from musichash.bits import asymmetric_distance  # noqa: E402
from musichash.library import Clip, Library  # noqa: E402
from musichash.search import engine  # noqa: E402

LENGTHS = (3.0, 5.0, 10.0)


def dense_distance(index, relaxed: np.ndarray, times: np.ndarray, tid: int, off: float, rate: float) -> float:
    """Mean over query windows of the distance to the nearer of the two track segments around its aligned time."""
    lo, hi = np.searchsorted(index.seg_track, tid), np.searchsorted(index.seg_track, tid, side="right")
    tt = index.seg_time[lo:hi].astype(np.float64)
    if len(tt) < 2:
        return float("nan")
    want = off + rate * times.astype(np.float64)
    j = np.clip(np.searchsorted(tt, want), 1, len(tt) - 1)
    codes = np.asarray(index.seg_codes)
    pair = np.stack([codes[lo + j - 1], codes[lo + j]], axis=1)
    return float(asymmetric_distance(relaxed, pair).min(axis=1).mean())


def dump(a: argparse.Namespace) -> list[dict]:
    lib_files, held = cut_corpus(a.manifest, a.work / "audio", a.minutes, a.held_out, 0)
    if not (a.work / "lib").exists():
        with Library.open(a.work / "lib", write=True) as lib:
            lib.index([a.work / "audio" / "library"])
    rows = []
    with Library.open(a.work / "lib") as lib:
        index = lib.search_index()  # segments in track id order: one track's rows are contiguous
        assert np.all(np.diff(index.seg_track) >= 0)
        ids = {t.path: int(t.id) for t in lib.store.tracks("ok")}
        for length, cond, inside, f, y, _ in draw_queries(lib_files, held, a.n, 0, "full"):
            if length not in LENGTHS:
                continue
            enc = lib.encode(Clip(f.name, y), track=False, harmony=True)
            votes, _ = engine.query_codes(index, enc.codes, enc.times, lib.store.bits, top_k=10, relaxed=enc.relaxed)
            rows.append({
                "length": length, "cond": cond, "inside": inside, "true": ids.get(str(f.absolute())),
                "votes": [(v.track_id, v.score) for v in votes],
                "harmony": [lib.harmony(enc, v) for v in votes],
                "dense": [dense_distance(index, enc.relaxed, enc.times, v.track_id, v.offset_s, v.rate) for v in votes],
            })
        thresholds = (lib.match_threshold, lib.chroma_threshold, lib.store.bits)
    return [{"thresholds": thresholds}, *rows]


def place(r: dict) -> int:
    """Where the right track is in the clip's vote (99: not in its first 10)."""
    ids = [t for t, _ in r["votes"]]
    return ids.index(r["true"]) if r["true"] in ids else 99


def pick(r: dict, c: int, w: float, v: float, bits: int) -> tuple[int | None, float, float | None]:
    if not r["votes"]:
        return None, 0.0, None
    s0 = r["votes"][0][1]
    keys = [s / s0 + w * (-1.0 if a is None else a) - v * d / bits
            for (_, s), a, d in zip(r["votes"][:c], r["harmony"], r["dense"])]
    i = int(np.argmax(keys))
    return r["votes"][i][0], r["votes"][i][1], r["harmony"][i]


def score(rows: list[dict], thresholds, c: int, w: float, v: float) -> tuple[dict[float, float], float]:
    t, tc, bits = thresholds
    top, rejected = defaultdict(list), []
    for r in rows:
        tid, s, agree = pick(r, c, w, v, bits)
        match = s > t and (tc is None or agree is None or agree > tc)
        if r["inside"]:
            top[r["length"]].append(tid == r["true"])
        else:
            rejected.append(not match)
    return {L: 100 * float(np.mean(x)) for L, x in sorted(top.items())}, 100 * float(np.mean(rejected))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("minutes", type=float)
    ap.add_argument("held_out", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--dump", type=Path, default=None)
    a = ap.parse_args()
    path = a.dump or a.work / "rerank_dump.pkl"
    if path.exists():
        head, *rows = pickle.loads(path.read_bytes())
    else:
        head, *rows = dump(a)
        path.write_bytes(pickle.dumps([head, *rows]))
    th = head["thresholds"]
    for length in LENGTHS:
        ranks = np.array([place(r) for r in rows if r["inside"] and r["length"] == length])
        print(f"{length:g} s, the right track's place in the vote: first {np.mean(ranks == 0):.1%}, "
              f"in 3 {np.mean(ranks < 3):.1%}, in 5 {np.mean(ranks < 5):.1%}, in 10 {np.mean(ranks < 10):.1%}")
    print("\n| first C tracks | W (chroma) | V (dense) | top-1 3 / 5 / 10 s | out-of-library rejected |\n|---|---|---|---|---|")
    for c, w, v in itertools.product((1, 3, 5, 10), (0.0, 1.0, 2.0, 3.0), (0.0, 2.0, 4.0, 8.0)):
        if c == 1 and (w or v):
            continue
        top, tnr = score(rows, th, c, w, v)
        shipped = " (shipped)" if (c, w, v) == (3, 2.0, 0.0) else ""
        print(f"| {c} | {w:g} | {v:g} | {' / '.join(f'{x:.1f}' for x in top.values())}{shipped} | {tnr:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
