"""What the harmony check costs: indexing with and without the tracks' chroma, queries with and without theirs.

A/B in alternating rounds on the same files, so the machine's drift hits both sides alike:

- indexing: ``Library.index`` of the files into a fresh library (``--workers 0``, as on 2 cores),
  once as shipped and once with ``TrackChroma`` replaced by a stand-in that takes no chroma;
- queries: ``Library.search`` of 10 s excerpts (the files' own audio) as shipped, and the same
  search with ``harmony=False`` encoding (no chroma, no re-ranking, codes alone decide).

    python benchmarks/bench_harmony.py FILE... [--rounds 5] [--queries 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from musichash.features import chroma  # noqa: E402
from musichash.features.audio import SAMPLE_RATE, load_audio  # noqa: E402
from musichash.indexer import pipeline  # noqa: E402
from musichash.library import Clip, Library  # noqa: E402


class _NoChroma(chroma.TrackChroma):
    """Passes the audio through and takes no chroma (the indexer as it was before)."""

    def tap(self, blocks):
        yield from blocks

    def bits(self):
        return np.zeros((0, 12), bool)


def time_index(files: list[Path], with_chroma: bool) -> tuple[float, float]:
    """(wall seconds, audio seconds) of indexing ``files`` into a fresh library."""
    with tempfile.TemporaryDirectory() as d:
        patch = mock.patch.object(pipeline.chroma, "TrackChroma", chroma.TrackChroma if with_chroma else _NoChroma)
        with patch, Library.open(Path(d) / "lib", write=True) as lib:
            lib.model  # loaded before the clock starts, on both sides
            t0 = time.perf_counter()
            rep = lib.index(files, workers=0)
            return time.perf_counter() - t0, rep.audio_s


def ten_second_clips(files: list[Path], n: int, seed: int) -> list[Clip]:
    """``n`` seeded 10 s excerpts of the files' own audio, taking the files in turn."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        y = load_audio(files[i % len(files)])
        start = int(rng.integers(0, max(1, len(y) - 10 * SAMPLE_RATE)))
        clips.append(Clip(f"q{i}", y[start : start + 10 * SAMPLE_RATE]))
    return clips


def time_queries(lib: Library, clips: list[Clip], with_chroma: bool) -> list[float]:
    """Per-clip ms of ``Library.search``; without chroma the clip is encoded with ``harmony=False``."""
    out = []
    encode = lib.encode
    for c in clips:
        with mock.patch.object(lib, "encode", lambda clip, **kw: encode(clip, **{**kw, "harmony": with_chroma})):
            t0 = time.perf_counter()
            list(lib.search([c]))
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    files = [f.absolute() for f in a.files]
    index = {True: [], False: []}
    chroma.track_bits(np.zeros(SAMPLE_RATE, np.float32))  # librosa's import and the filters, once per process
    for r in range(a.rounds):
        for side in ((True, False) if r % 2 == 0 else (False, True)):
            wall, audio = time_index(files, side)
            index[side].append(audio / wall)
            print(f"round {r} index {'with' if side else 'without'} chroma: {audio / wall:.1f}x", file=sys.stderr)
    clips = ten_second_clips(files, a.queries, a.seed)
    query = {True: [], False: []}
    with tempfile.TemporaryDirectory() as d:
        with Library.open(Path(d) / "lib", write=True) as lib:
            lib.index(files, workers=0)
        with Library.open(Path(d) / "lib") as lib:
            time_queries(lib, clips[:3], True)  # warm: model, index, chroma filters
            for r in range(a.rounds):
                for side in ((True, False) if r % 2 == 0 else (False, True)):
                    query[side] += time_queries(lib, clips, side)
    out = {
        "meta": machine(), "files": len(files), "rounds": a.rounds, "queries": a.queries,
        "index_x": {"with": statistics.median(index[True]), "without": statistics.median(index[False]),
                    "rounds_with": index[True], "rounds_without": index[False]},
        "query_ms_p50": {"with": statistics.median(query[True]), "without": statistics.median(query[False])},
    }
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    ix, q = out["index_x"], out["query_ms_p50"]
    print(f"indexing {len(files)} files, median of {a.rounds} rounds: {ix['with']:.1f}x real time with the tracks' "
          f"chroma, {ix['without']:.1f}x without ({ix['with'] / ix['without'] - 1:+.1%}); warm 10 s query p50 "
          f"{q['with']:.1f} ms with harmony, {q['without']:.1f} ms without ({q['with'] - q['without']:+.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
