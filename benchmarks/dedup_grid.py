"""Dedup pair F1 of the engine's own search over its settings: neighbours per window, Hamming cut, threshold.

    python benchmarks/dedup_grid.py WORK/dedup-lib-crnnh64 [--k 20 50] [--cuts 0.2 0.25 0.3] [--json OUT]

Reads a dedup library that eval_engine.py built (files named as
dedup_ceiling.py reads them) and runs ``engine.duplicates_of`` for every
track with each ``DEDUP_K`` (neighbours per window) and
``DEDUP_MAX_HAMMING`` (hits farther than this fraction of the bits are
ignored), as ``musichash dedup`` does, keeping each pair's best score over
both directions. Per setting: the weakest true pair's score, the strongest
other pair's, and pair F1 at each threshold. dedup_ceiling.py is the same
question without the search's top-k limit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit  # noqa: E402
from dedup_ceiling import recording  # noqa: E402
from eval_engine import best_pair_scores  # noqa: E402
from queries import pair_scores  # noqa: E402

from musichash.library import Library  # noqa: E402
from musichash.search import engine  # noqa: E402

THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def best_scores(lib: Library, k: int, cut: float) -> dict[frozenset, float]:
    """Each pair's best ``duplicates_of`` score (over both directions) with these settings."""
    saved = engine.DEDUP_K, engine.DEDUP_MAX_HAMMING
    engine.DEDUP_K, engine.DEDUP_MAX_HAMMING = k, cut
    try:
        return best_pair_scores(lib)
    finally:
        engine.DEDUP_K, engine.DEDUP_MAX_HAMMING = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("library", type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--cuts", type=float, nargs="+", default=[0.2, 0.25, 0.3])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with Library.open(args.library) as lib:
        names = sorted(Path(t.path).name for t in lib.store.tracks("ok"))
        truth = {frozenset(p) for p in itertools.combinations(names, 2) if recording(p[0]) == recording(p[1])}
        rows = []
        for cut in args.cuts:
            for k in args.k:
                best = best_scores(lib, k, cut)
                rows.append({"k": k, "cut": cut,
                             "weakest_true": min(best.get(p, 0.0) for p in truth),
                             "strongest_other": max((v for p, v in best.items() if p not in truth), default=0.0),
                             "f1": {thr: pair_scores({p for p, v in best.items() if v >= thr}, truth)["f1"]
                                    for thr in THRESHOLDS}})
        model = lib.code_model
    print(f"Dedup grid: `{model}`, {len(names)} files, {len(truth)} true pairs (`{args.library}`; commit {commit()}).\n")
    print("| k | cut | weakest true pair | strongest other pair | " + " | ".join(f"F1 at {t}" for t in THRESHOLDS) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(THRESHOLDS))
    for r in rows:
        print(f"| {r['k']} | {r['cut']} | {r['weakest_true']:.3f} | {r['strongest_other']:.3f} | "
              + " | ".join(f"{r['f1'][t]:.3f}" for t in THRESHOLDS) + " |")
    if args.json:
        args.json.write_text(json.dumps({"library": str(args.library), "code_model": model, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
