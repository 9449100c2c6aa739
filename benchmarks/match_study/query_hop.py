"""Study: what a coarser query hop costs in top-1 and saves in time, in the engine step's library and at 100k tracks.

    python benchmarks/match_study/query_hop.py WORK/eval GROWN_LIBRARY N [--hops 16 32] [--nprobe 64]

As ``scale_top1.py`` (same folders, same clips: the `full` query set's in-library 5 and 10 s
clips, N per degradation, seed 0, drawn from the cuts in name order), but each clip is encoded
with query windows every HOP frames (``Library.encode(hop=...)``; the engine picks
``encoder.query_hop`` of the clip's length) and ranked as ``Library.search`` ranks them (vote, then ``verify``). Times are
p50 over the clips, in one process, the hops taking turns clip by clip: encoding (``Library.encode``
of the in-memory clip, harmony included), and the search, vote and verify in the grown library.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import musichash  # noqa: F401, I001  (first: GOMP_SPINCOUNT)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from queries import draw_queries  # noqa: E402
from scale_top1 import first, open_libraries  # noqa: E402

from musichash.models.encoder import FRAME_S  # noqa: E402
from musichash.library import Clip  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval", type=Path)
    ap.add_argument("grown", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--hops", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--nprobe", type=int, default=64)
    a = ap.parse_args()
    lib_files, held, small, grown, ids = open_libraries(a.eval, a.grown)
    si, gi = small.search_index(), grown.search_index()
    gi.segments.set_search_params(nprobe=a.nprobe)
    print(f"small: {small.stats().n_tracks} tracks; grown: {grown.stats().n_tracks} tracks, "
          f"{gi.segments.kind}, nprobe {a.nprobe}")
    hits: dict = defaultdict(list)
    t_enc: dict = defaultdict(list)
    t_search: dict = defaultdict(list)
    for length, cond, inside, f, y, _ in draw_queries(lib_files, held, a.n, 0, "full"):
        if not inside or length not in (5.0, 10.0):
            continue
        for hop in a.hops:
            t0 = time.perf_counter()
            enc = small.encode(Clip(f.name, y), hop, track=False, harmony=True)
            t_enc[(hop, length)].append(time.perf_counter() - t0)
            hits[("small", hop, length)].append(first(small, si, enc) == ids["small"][f.name])
            t0 = time.perf_counter()
            got = first(grown, gi, enc)
            t_search[(hop, length)].append(time.perf_counter() - t0)
            hits[("grown", hop, length)].append(got == ids["grown"][f.name])
    n5 = len(hits[("small", a.hops[0], 5.0)])
    print(f"\n{n5} clips per length\n")
    print("| query hop | top-1 5 s, small | top-1 10 s, small | top-1 5 s, grown | top-1 10 s, grown "
          "| encode 10 s p50 ms | search + vote + verify 10 s, grown, p50 ms |\n|---|---|---|---|---|---|---|")
    for hop in a.hops:
        cells = [f"{100 * np.mean(hits[(lib, hop, n)]):.1f} %" for lib in ("small", "grown") for n in (5.0, 10.0)]
        print(f"| {hop} ({hop * FRAME_S:.3f} s) | " + " | ".join(cells)
              + f" | {1000 * np.median(t_enc[(hop, 10.0)]):.1f} | {1000 * np.median(t_search[(hop, 10.0)]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
