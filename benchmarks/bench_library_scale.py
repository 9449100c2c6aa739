"""Warm 10 s queries (or ``--clip-seconds``) through ``Library.search`` on libraries of 1k to 100k tracks.

    python -m benchmarks.bench_library_scale --library /tmp/eval/lib-default \\
        --audio /tmp/eval/audio/library --work /tmp/libscale --sizes 1000 10000 100000 --json /tmp/libscale.json

bench_scale.py times the segment search and vote alone, on synthetic codes. This times
what a user's query costs end to end at those sizes: log-mel, model, chroma, the index's
freshness check, FAISS, the vote, the harmony check and the SQL reads, through the public
call, as eval_engine.py's warm-query figure does on the real corpus alone.

- A copy of a real library (``--library``, the engine step's) keeps its real tracks.
  Synthetic tracks are added up to each size with ``LibraryStore.put_tracks``: segment and
  track codes from ``bench_scale.synth_library`` (2-6 min tracks, a segment every 1.28 s,
  the same shapes bench_scale searches), random chroma (one 12-bit word a second) and
  random tag probabilities.
- The segment index is the one the library picks itself (``cache.choose_config``: flat up
  to 1M segments, IVF from there) and is rebuilt once per size (``Library.reindex``, timed).
- The queries are 10 s excerpts (``--clip-seconds``) of the real tracks (``--audio``) at seeded offsets,
  clean and with white noise at 10 dB SNR; each size times them in ``--rounds`` rounds
  after a warm-up, in one process, as a long-running user of the API would.

Per size: p50 and p99 of ``Library.search`` (a latency is the median of the rounds'
p50s, their range beside it), p50 of ``Library.encode`` alone on the same clips (mel,
model and chroma: what does not grow with the library), how often the right real
track came first and matched, the index's kind and lists, build and fill times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import musichash  # noqa: F401, I001  (before faiss and torch: it sets GOMP_SPINCOUNT, see musichash/__init__.py)
import faiss
import numpy as np

from benchmarks import bench_scale
from benchmarks.common import machine, peak_rss_mb

from musichash.train import augment
from musichash.features.audio import SAMPLE_RATE, load_audio
from musichash.features.chroma import pack
from musichash.indexer.store import TrackRecord
from musichash.library import Clip, Library

CLIP_S = 10.0
CONDITIONS = (("clean", None), ("white10dB", augment.noise(snr_db=10.0, kind="white")))
#: synthetic tracks per ``put_tracks`` call
BATCH = 2000


def synthetic_tracks(n: int, first: int, rng: np.random.Generator, n_tags: int):
    """``put_tracks`` items for ``n`` synthetic tracks numbered from ``first``, in batches."""
    lib = bench_scale.synth_library(n, rng)
    seg, track_codes = lib.codes.view(np.uint8).reshape(-1, 8), lib.track_codes()
    for b0 in range(0, n, BATCH):
        items = []
        for t in range(b0, min(b0 + BATCH, n)):
            s0, s1 = int(lib.starts[t]), int(lib.starts[t + 1])
            duration = (s1 - s0 - 1) * bench_scale.SEG_HOP_S + 3.0
            i = first + t
            record = TrackRecord(
                path=f"/synthetic/{i:07d}.flac", content_hash=hashlib.sha256(str(i).encode()).hexdigest(),
                size=1, mtime=0.0, duration_s=duration, format="flac",
                tags=tuple(float(p) for p in rng.random(n_tags, dtype=np.float32) * 0.3),
            )
            chroma = pack(rng.random((int(duration), 12)) < 0.3)
            items.append((record, track_codes[t].copy(), seg[s0:s1].copy(),
                          np.arange(s1 - s0, dtype=np.float32) * bench_scale.SEG_HOP_S, chroma))
        yield items


def make_clips(audio: Path, per_condition: int, rng: np.random.Generator,
               clip_s: float = CLIP_S) -> list[tuple[Clip, str]]:
    """``clip_s`` excerpts of the real tracks: (clip, the path of its track)."""
    files = sorted(audio.glob("*.flac"))
    if not files:
        sys.exit(f"no .flac files in {audio}; give --audio the folder the library was indexed from")
    waves = {f: load_audio(f) for f in files}
    out = []
    for name, degrade in CONDITIONS:
        for k in range(per_condition):
            f = files[int(rng.integers(len(files)))]
            y = waves[f]
            n = int(clip_s * SAMPLE_RATE)
            o = int(rng.integers(0, max(1, len(y) - n)))
            x = y[o : o + n]
            if degrade is not None:
                x = degrade.apply(x, rng)
            out.append((Clip(f"{name}-{k}-{f.name}", x.astype(np.float32)), str(f.absolute())))
    return out


def time_queries(lib: Library, clips, rounds: int) -> dict:
    list(lib.search([c for c, _ in clips[:3]]))  # warm-up: index loaded, caches filled
    p50s, first, found, matched = [], [], 0, 0
    for r in range(rounds):
        lat = []
        for clip, path in clips:
            t0 = time.perf_counter()
            (res,) = lib.search([clip])
            lat.append((time.perf_counter() - t0) * 1000)
            if r == 0:
                top = res.results[0].path if res.results else None
                found += top == path
                matched += top == path and res.match
        p50s.append(float(np.median(lat)))
        if r == 0:
            first = lat
    enc = []
    for clip, _ in clips:
        t0 = time.perf_counter()
        lib.encode(clip, track=False, harmony=True)
        enc.append((time.perf_counter() - t0) * 1000)
    return {"n": len(clips), "p50_ms": float(np.median(p50s)), "rounds_ms": p50s,
            "p99_ms": float(np.quantile(first, 0.99)), "encode_p50_ms": float(np.median(enc)),
            "top1": found / len(clips), "top1_matched": matched / len(clips)}


def index_info(lib: Library) -> dict:
    index = lib.search_index()
    seg = index.segments
    info = {"kind": seg.kind, "segments": int(seg.ntotal)}
    if seg.kind == "ivf":
        info.update(nlist=seg.config.nlist, nprobe=seg.config.nprobe,
                    # list sizes' sum of squares over its minimum (1: even lists), as FAISS reports it
                    imbalance=float(faiss.downcast_IndexBinary(seg._index.index).invlists.imbalance_factor()))
    return info


def run(a: argparse.Namespace) -> dict:
    folder = a.work / "lib"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(a.library, folder, ignore=shutil.ignore_patterns("index", ".lock"))
    rng = np.random.default_rng(a.seed)
    clips = make_clips(a.audio, a.per_condition, rng, a.clip_seconds)
    out = {"meta": machine(), "clip_s": a.clip_seconds, "conditions": [c for c, _ in CONDITIONS],
           "per_condition": a.per_condition, "rounds": a.rounds, "results": []}
    with Library.open(folder) as lib:
        n_real = lib.stats().n_tracks
    out["real_tracks"] = n_real
    have = n_real
    for size in sorted(a.sizes):
        t0 = time.perf_counter()
        with Library.open(folder, write=True) as lib:
            n_tags = len(lib.vocabulary)
            for items in synthetic_tracks(max(0, size - have), have, rng, n_tags):
                lib.store.put_tracks(items)
        fill_s = time.perf_counter() - t0
        have = max(have, size)
        with Library.open(folder) as lib:
            t0 = time.perf_counter()
            lib.reindex()
            build_s = time.perf_counter() - t0
            res = {"n_tracks": have, "fill_s": fill_s, "build_s": build_s, "index": index_info(lib),
                   **time_queries(lib, clips, a.rounds)}
        st = res["index"]
        print(f"{have:>8} tracks ({st['kind']}): search p50 {res['p50_ms']:.1f} ms (encode {res['encode_p50_ms']:.1f}), "
              f"top-1 {100 * res['top1']:.0f} %, build {build_s:.0f} s", file=sys.stderr, flush=True)
        out["results"].append(res)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def index_label(ix: dict) -> str:
    """``ivf 4096 lists, nprobe 64`` or ``flat``: a result's segment index (``index_info``)."""
    return ix["kind"] + (f" {ix['nlist']} lists, nprobe {ix['nprobe']}" if ix["kind"] == "ivf" else "")


def _rounds(r: dict) -> str:
    return f"{r['p50_ms']:.1f} ({min(r['rounds_ms']):.1f}–{max(r['rounds_ms']):.1f})"


def render(d: dict) -> str:
    lines = [
        f"Warm {d['clip_s']:g} s queries through `Library.search` (mel, model, chroma, freshness check, FAISS, vote, "
        f"harmony check, SQL) on the engine step's library of {d['real_tracks']} real tracks grown with synthetic ones "
        f"(`bench_library_scale.py`): {d['per_condition']} excerpts of the real tracks per condition "
        f"({', '.join(d['conditions'])}), {d['rounds']} timing rounds after a warm-up. p50: the median of the rounds' "
        "p50s, their range in brackets; p99: the first round; encode: `Library.encode` alone on the same clips. "
        "top-1: the right real track first (and matched).",
        "",
        "| tracks | segment index | p50 ms | p99 ms | encode p50 ms | top-1 % (matched) | fill s | build s |",
        "|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in d["results"]:
        ix = r["index"]
        kind = index_label(ix) + (f", imbalance {ix['imbalance']:.2f}" if "imbalance" in ix else "")
        lines.append(f"| {r['n_tracks']:,} | {kind} ({ix['segments']:,} segments) | {_rounds(r)} | {r['p99_ms']:.1f} | "
                     f"{r['encode_p50_ms']:.1f} | {100 * r['top1']:.0f} ({100 * r['top1_matched']:.0f}) | "
                     f"{r['fill_s']:.0f} | {r['build_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", type=Path, required=True, help="a real library (copied, not changed)")
    ap.add_argument("--audio", type=Path, required=True, help="the folder of .flac files it indexed")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--per-condition", type=int, default=15)
    ap.add_argument("--clip-seconds", type=float, default=CLIP_S, help="length of the query excerpts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    d = run(a)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
