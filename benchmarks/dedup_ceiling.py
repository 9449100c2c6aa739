"""How far apart are the segment codes of copies and of different recordings? A ceiling for dedup.

    python benchmarks/dedup_ceiling.py WORK/eval/dedup-lib-default [--cuts 0.1 0.15 0.2 0.3] [--json OUT]

Reads a dedup library that eval_engine.py built (its files are named
``STEM.flac`` for an original, ``STEM.VARIANT.EXT`` for its copies and
``STEM.arrangement.flac`` for an alternate arrangement, a recording of its
own). For every pair of tracks it compares *all* their segment codes, not
the k nearest the engine's dedup looks at, keeps the window pairs within
``cut * bits``, and runs the engine's time-consistent vote on them: the
pair's coverage is the largest fraction of either track's windows that line
up with the other at one offset and rate (``engine.duplicates_of``'s score,
without its top-k limit).

If some different-recording pair covers as much as a true pair at every cut,
no threshold on these codes can separate them, whatever the search does;
the table shows how often that happens.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from eval_engine import DEDUP_VARIANTS  # noqa: E402
from queries import pair_scores  # noqa: E402

from musichash.library import Library  # noqa: E402
from musichash.search import engine  # noqa: E402
from musichash.search.faiss_index import hamming_distances  # noqa: E402
from musichash.search.vote import SegmentHits, vote  # noqa: E402

SWEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def recording(name: str) -> str:
    """``STEM.VARIANT.EXT`` and ``STEM.flac`` -> ``STEM``; an arrangement is its own recording."""
    parts = name.split(".")
    stem = ".".join(parts[:-1])
    for variant in DEDUP_VARIANTS:
        stem = stem.removesuffix("." + variant)
    return stem


def coverage(xa: np.ndarray, ta: np.ndarray, xb: np.ndarray, tb: np.ndarray, bits: int, cut: float) -> float:
    """Fraction of a's windows in the best (offset, rate) group of b, from all pairs within cut * bits.

    xa, xb: uint8 [n, bits/8] segment codes; ta, tb: float [n] window starts.
    """
    dist = hamming_distances(xa, xb)
    qi, bi = np.nonzero(dist <= cut * bits)
    if not len(qi):
        return 0.0
    hits = SegmentHits(qi, ta[qi], np.zeros(len(qi), np.int64), tb[bi], dist[qi, bi], bits, len(ta))
    v = vote(hits, max_tracks=1, max_rate_change=engine.DEDUP_MAX_RATE_CHANGE)
    return v[0].votes / len(ta) if v else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("library", type=Path, help="a dedup library folder written by eval_engine.py")
    ap.add_argument("--cuts", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.3],
                    help="Hamming cut-offs, fractions of the bits (the engine's dedup uses %s)" % engine.DEDUP_MAX_HAMMING)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    lib = Library.open(args.library)
    bits = lib.store.bits
    tracks = list(lib.store.tracks("ok"))
    names = {t.id: Path(t.path).name for t in tracks}
    codes = {t.id: lib.store.get_codes(t.id) for t in tracks}
    truth = {frozenset((names[a], names[b])) for a, b in itertools.combinations(codes, 2)
             if recording(names[a]) == recording(names[b])}

    rows = []
    for cut in args.cuts:
        best: dict[frozenset, float] = {}
        for a, b in itertools.permutations(codes, 2):
            key = frozenset((names[a], names[b]))
            c = coverage(codes[a].segment_codes, codes[a].segment_times, codes[b].segment_codes,
                         codes[b].segment_times, bits, cut)
            best[key] = max(best.get(key, 0.0), c)
        pos = np.array([v for k, v in best.items() if k in truth])
        neg = sorted(((v, sorted(k)) for k, v in best.items() if k not in truth), reverse=True)
        sweep = [{"threshold": t, **pair_scores({k for k, v in best.items() if v >= t}, truth)} for t in SWEEP]
        rows.append({"cut": cut, "true_min": float(pos.min()), "true_p5": float(np.percentile(pos, 5)),
                     "true_median": float(np.median(pos)), "false_max": neg[0][0] if neg else 0.0,
                     "false_top": [[v, *k] for v, k in neg[:3]],
                     "separable": bool(not neg or pos.min() > neg[0][0]),
                     "best_f1": max(s["f1"] for s in sweep), "sweep": sweep})

    out = {"meta": machine(), "library": str(args.library), "code_model": lib.code_model, "bits": bits,
           "tracks": len(tracks), "true_pairs": len(truth), "rows": rows}
    print(render(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


def render(d: dict) -> str:
    lines = [f"Dedup ceiling: `{d['code_model']}`, {d['tracks']} files, {d['true_pairs']} true pairs "
             f"(`{d['library']}`; commit {d['meta']['commit']}, {d['meta']['date']}).\n",
             "| cut (fraction of bits) | true pairs: min / 5th pct / median coverage | highest other pair | "
             "separable | best F1 of the sweep |", "|---:|---|---|---|---:|"]
    for r in d["rows"]:
        top = r["false_top"][0] if r["false_top"] else [0.0, "–", "–"]
        lines.append(f"| {r['cut']:g} | {r['true_min']:.3f} / {r['true_p5']:.3f} / {r['true_median']:.3f} "
                     f"| {top[0]:.3f} ({top[1]} + {top[2]}) | {'yes' if r['separable'] else 'no'} | {r['best_f1']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
