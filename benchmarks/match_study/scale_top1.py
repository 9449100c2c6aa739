"""Study: top-1 of the engine step's 5 s and 10 s clips in its small library and in the same library grown to 100k tracks.

    python benchmarks/match_study/scale_top1.py WORK/eval GROWN_LIBRARY N [--nprobe 64 ...]

WORK/eval: run_all's engine step folder (its ``audio/`` cuts and ``lib-default``); GROWN_LIBRARY:
the libscale step's copy of that library with synthetic tracks added (WORK/libscale/lib). The
`full` query set's in-library 5 and 10 s clips (N per degradation, seed 0, drawn from the cuts
in name order, so other clips than the engine step's) are encoded once and searched as ``Library.search`` ranks them (vote, then
``verify``) in both libraries, the grown one at each ``--nprobe``.
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

from musichash.library import Clip, Library  # noqa: E402
from musichash.search import engine  # noqa: E402


def first(lib: Library, index, enc) -> int | None:
    votes, _ = engine.query_codes(index, enc.codes, enc.times, lib.store.bits, top_k=10, relaxed=enc.relaxed)
    votes, _ = lib.verify(enc, votes)
    return votes[0].track_id if votes else None


def open_libraries(eval_dir: Path, grown_dir: Path):
    """The engine step's cuts, its library and the grown copy: (lib_files, held, small, grown, ids),
    ``ids[name][file name]`` a cut's track id in the "small" or "grown" library."""
    lib_files = sorted((eval_dir / "audio" / "library").glob("*.flac"))
    held = sorted((eval_dir / "audio" / "held-out").glob("*.flac"))
    small, grown = Library.open(eval_dir / "lib-default"), Library.open(grown_dir)
    ids = {name: {Path(t.path).name: int(t.id) for t in lib.store.tracks("ok")} for name, lib in (("small", small), ("grown", grown))}
    return lib_files, held, small, grown, ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval", type=Path)
    ap.add_argument("grown", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[64])
    a = ap.parse_args()
    lib_files, held, small, grown, ids = open_libraries(a.eval, a.grown)
    si, gi = small.search_index(), grown.search_index()
    print(f"small: {small.stats().n_tracks} tracks; grown: {grown.stats().n_tracks} tracks, {gi.segments.kind}")
    hits: dict = defaultdict(list)
    t_search: dict = defaultdict(list)
    for length, cond, inside, f, y, _ in draw_queries(lib_files, held, a.n, 0, "full"):
        if not inside or length not in (5.0, 10.0):
            continue
        enc = small.encode(Clip(f.name, y), track=False, harmony=True)
        hits[("small", length)].append(first(small, si, enc) == ids["small"][f.name])
        for nprobe in a.nprobe:
            gi.segments.set_search_params(nprobe=nprobe)
            t0 = time.perf_counter()
            got = first(grown, gi, enc)
            t_search[nprobe].append(time.perf_counter() - t0)
            hits[(f"grown, nprobe {nprobe}", length)].append(got == ids["grown"][f.name])
    print("\n| library | top-1 5 s | top-1 10 s | search + vote + verify p50 ms |\n|---|---|---|---|")
    for name in dict.fromkeys(k for k, _ in hits):
        nprobe = int(name.rsplit(" ", 1)[1]) if name != "small" else None
        t = f"{1000 * np.median(t_search[nprobe]):.1f}" if nprobe else "–"
        print(f"| {name} | {100 * np.mean(hits[(name, 5.0)]):.1f} % | {100 * np.mean(hits[(name, 10.0)]):.1f} % | {t} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
