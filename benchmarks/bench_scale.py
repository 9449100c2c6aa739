"""Search at scale: query latency, recall, build cost and memory from 1k to 1M tracks.

    python -m benchmarks.bench_scale --sizes 1000 10000 100000 1000000 --json /tmp/scale.json
    python -m benchmarks.bench_scale --quick     # 1k and 10k tracks, under a minute

No corpus holds a million tracks, so the library is synthetic 64-bit codes
with the structure that matters to search (``synth_library``):

- tracks last 2-6 min (mean 4 min, 187.5 segments of 3 s every 1.28 s);
- each track has an anchor code (its track-level code) drawn near one of 256
  "style" centres (25 % of bits flipped), and about half its bits are volatile;
- consecutive segments are a random walk on the volatile bits (each flips
  with probability 1/8 per 1.28 s step, ~4 bits), so neighbouring segments
  are close and far-apart segments of one track stay ~16 bits apart, closer
  than unrelated codes (~32).

A query is a 10 s clip of a library track: windows every 0.256 s (28 of
them), each the code of the nearest library segment, moved along the walk
for the 0, 0.256 or 0.512 s it lies off the segment grid, then degraded by
flipping 5, 15 or 25 % of all bits at random. Out-of-library queries are clips of
extra tracks, made the same way (15 % flips), that are not indexed.
Since ``ff54590`` the engine queries clips of 8 s and longer every 0.512 s
(``encoder.query_hop``): its 10 s queries are the "hop 0.512 s" rows.

Per library size, in a fresh child process (so peak RSS is its own):

- segment search of each query (``BinaryIndex.search``, k nearest per
  window) plus ``vote``, for the exact flat index and the approximate kinds;
  p50/p99 latency, recall@k against flat, top-1 track accuracy, and how often
  an out-of-library clip scores above the default match threshold;
- the search core: one track-level code against all track codes (flat),
  single and batched, as a scan rate to compare with a numpy copy;
- build time, index bytes and memory.

Everything runs on one OpenMP thread unless named (``--threads``): on a
shared two-core machine FAISS's two-thread barriers stall whenever another
process holds a core, and a flat search then takes 2-5x longer, not half.
The library itself searches with FAISS's default, a thread a core, so the
most accurate IVF config is also timed on two threads (``2 threads``).
The flat index runs every query and is the exact reference; the others are
timed for ``--budget-s`` (at least ``--min-queries``).

Timings come in ``--rounds`` rounds spread over the child's run: after the
first pass over every config, each further round times every config again
on ``--min-queries`` queries, and the search core once more on a fresh copy
of the codes. A latency is the median of its rounds' p50s, with the rounds'
range beside it: this VM runs the same scan at one of two speeds from one
minute to the next (benchmarks/RERUN.md), so one round lands on either.

Recall is tie-aware: a returned neighbour counts if its distance is at most
the exact k-th distance (64-bit Hamming distances tie a lot, and
``recall_at_k``'s id match reads below 1 even for an exhaustive search).
Prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import machine, peak_rss_mb

from musichash.search.cache import AUTO_IVF_TRACKS, TRACK_NPROBE
from musichash.search.faiss_index import BinaryIndex, IndexConfig
from musichash.search.thresholds import DEFAULT_MATCH_THRESHOLD
from musichash.search.vote import SegmentHits, vote

SEG_HOP_S = 1.28
QUERY_HOP_S = 0.256
FINE = 5  # query hops per library hop
CLIP_WINDOWS = 28  # 3 s windows every 0.256 s in a 10 s clip
BITS = 64
K = 10
MIN_SEGS, MAX_SEGS = 94, 281  # 2-6 min tracks
N_STYLES = 256
STEP_FLIP = 1 / 8  # per volatile bit and library step
CONDITIONS = (("flip5", 0.05, True), ("flip15", 0.15, True), ("flip25", 0.25, True), ("ool", 0.15, False))
OOL_TRACKS = 200
NFLIP2_MAX_SEGMENTS = 2_500_000


def _rand64(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)


@dataclass(frozen=True)
class Library:
    """codes: uint64 [n_segments] (n_tracks + OOL_TRACKS tracks, library first);
    starts: int64 [n_tracks + OOL_TRACKS + 1] first segment of each track;
    anchors, masks: uint64 [n_tracks + OOL_TRACKS]."""

    codes: np.ndarray
    starts: np.ndarray
    anchors: np.ndarray
    masks: np.ndarray
    n_tracks: int

    @property
    def n_segments(self) -> int:
        return int(self.starts[self.n_tracks])

    def segment_codes(self) -> np.ndarray:
        """The indexed segments, uint8 [n_segments, 8] (a view)."""
        return self.codes[: self.n_segments].view(np.uint8).reshape(-1, 8)

    def track_codes(self) -> np.ndarray:
        return self.anchors[: self.n_tracks].view(np.uint8).reshape(-1, 8)


def synth_library(n_tracks: int, rng: np.random.Generator, chunk: int = 20_000) -> Library:
    total = n_tracks + OOL_TRACKS
    lengths = rng.integers(MIN_SEGS, MAX_SEGS + 1, total)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    centres = _rand64(rng, N_STYLES)
    anchors = centres[rng.integers(0, N_STYLES, total)] ^ (_rand64(rng, total) & _rand64(rng, total))
    masks = _rand64(rng, total)
    codes = np.empty(int(starts[-1]), dtype=np.uint64)
    for t0 in range(0, total, chunk):
        t1 = min(t0 + chunk, total)
        s0, s1 = starts[t0], starts[t1]
        tr = np.repeat(np.arange(t0, t1), lengths[t0:t1])
        flips = _rand64(rng, s1 - s0) & _rand64(rng, s1 - s0) & _rand64(rng, s1 - s0) & masks[tr]
        first = starts[t0:t1] - s0
        flips[first] = 0
        # code_i = anchor ^ flips[start+1..i], from one prefix xor over the chunk
        prefix = np.bitwise_xor.accumulate(flips)
        codes[s0:s1] = anchors[tr] ^ prefix ^ prefix[first][tr - t0]
    return Library(codes, starts, anchors, masks, n_tracks)


def _flip(rng: np.random.Generator, n: int, p: np.ndarray | float) -> np.ndarray:
    """uint64 [n] masks, each bit set with probability p (scalar or [n])."""
    p = np.broadcast_to(np.asarray(p, dtype=np.float64), (n,))
    bits = rng.random((n, 64)) < p[:, None]
    return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).ravel()


@dataclass(frozen=True)
class Query:
    """xq: uint8 [CLIP_WINDOWS, 8] window codes; q_times: float [CLIP_WINDOWS];
    track: -1 out of library; offset_s: where the clip starts in its track."""

    condition: str
    track: int
    offset_s: float
    xq: np.ndarray
    q_times: np.ndarray


def make_queries(lib: Library, per_condition: int, rng: np.random.Generator) -> list[Query]:
    """Conditions interleaved, so that any prefix of the list is balanced."""
    # Rate per volatile bit for m query hops off the grid: m/FINE of a library step.
    fine = (1 - (1 - 2 * STEP_FLIP) ** (np.arange(3) / FINE)) / 2
    out = []
    for _ in range(per_condition):
        for name, p, in_lib in CONDITIONS:
            t = int(rng.integers(0, lib.n_tracks)) if in_lib else lib.n_tracks + int(rng.integers(0, OOL_TRACKS))
            n_seg = int(lib.starts[t + 1] - lib.starts[t])
            f0 = int(rng.integers(0, FINE * (n_seg - 1) - CLIP_WINDOWS + 2))
            f = f0 + np.arange(CLIP_WINDOWS)
            j = np.rint(f / FINE).astype(np.int64)
            off = np.abs(f - FINE * j)
            codes = lib.codes[lib.starts[t] + j]
            codes = codes ^ (_flip(rng, CLIP_WINDOWS, fine[off]) & lib.masks[t]) ^ _flip(rng, CLIP_WINDOWS, p)
            out.append(Query(name, t if in_lib else -1, f0 * QUERY_HOP_S,
                             codes.view(np.uint8).reshape(-1, 8), np.arange(CLIP_WINDOWS) * QUERY_HOP_S))
    return out


# ---------------------------------------------------------------------------
# measurements


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Bytes copied per second by numpy, best of reps (read + write traffic is twice this)."""
    a = np.ones(nbytes // 8)
    b = np.ones_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(reps))
    return nbytes / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def index_bytes(index: BinaryIndex, n: int) -> tuple[int, bool]:
    """On-disk size (written to a temporary file), or for big flat indexes
    the exact arithmetic of codes + int64 ids; the flag says it was measured."""
    if index.kind == "flat" and n > 20_000_000:
        return n * (BITS // 8 + 8), False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.index"
        index.save(path)
        return path.stat().st_size, True


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    stride: int = 1  # query windows: every stride-th of the 0.256 s grid
    nlist: int | None = None
    nprobe: int | None = None
    nflip: int | None = None
    ef_search: int | None = None
    threads: int | None = None  # None: --threads


def to_votes(q: Query, stride: int, D: np.ndarray, I: np.ndarray, starts: np.ndarray, distance: np.ndarray | None = None):
    """Vote over one clip's kNN result (D, I: [windows, k], segment ids; distance: the vote's, if not D)."""
    # The engine looks segment ids up in per-segment tables; the search over
    # track starts gives the same (track, time) without 16 B a segment here.
    valid = I >= 0
    seg = np.where(valid, I, 0)
    tr = np.searchsorted(starts, seg, side="right") - 1
    local = np.where(valid, np.arange(I.size).reshape(I.shape), -1)
    t_time = (seg - starts[tr]) * SEG_HOP_S
    hits = SegmentHits.from_knn(q.q_times[::stride], D, local, tr.ravel(), t_time.ravel(), BITS, distance=distance)
    return vote(hits)


def tie_recall(D: np.ndarray, D_exact: np.ndarray) -> float:
    """Fraction of the k slots holding a neighbour no farther than the exact k-th."""
    k = D_exact.shape[1]
    return float((D[:, :k] <= D_exact[:, k - 1 :]).sum() / D_exact.size)


def accuracy(pairs) -> dict:
    """pairs: (query, votes). Top-1 per in-library condition, false matches out of library."""
    out = {}
    for name, _, in_lib in CONDITIONS:
        sel = [(q, v) for q, v in pairs if q.condition == name]
        if not sel:
            out[name] = None
        elif in_lib:
            out[name] = float(np.mean([bool(v) and v[0].track_id == q.track for q, v in sel]))
        else:
            out[name] = float(np.mean([bool(v) and v[0].score > DEFAULT_MATCH_THRESHOLD for q, v in sel]))
    return out


def run_variant(index: BinaryIndex, queries: list[Query], v: Variant, starts: np.ndarray,
                exact: list[np.ndarray] | None, budget_s: float, min_queries: int) -> tuple[dict, list]:
    """Time search + vote per query, in order, until budget_s has passed (at least min_queries).

    exact: D [windows, k] per query from flat, or None when this is flat.
    Returns the summary and the (D, I) of each query run.
    """
    index.set_search_params(nprobe=v.nprobe, nflip=v.nflip, ef_search=v.ef_search)
    index.search(queries[0].xq[:: v.stride], K)  # warm-up
    search_s, total_s, pairs, results = [], [], [], []
    t_start = time.perf_counter()
    for q in queries:
        if len(total_s) >= min_queries and time.perf_counter() - t_start > budget_s:
            break
        t0 = time.perf_counter()
        D, I = index.search(q.xq[:: v.stride], K)
        t1 = time.perf_counter()
        votes = to_votes(q, v.stride, D, I, starts)
        search_s.append(t1 - t0)
        total_s.append(time.perf_counter() - t0)
        pairs.append((q, votes))
        results.append((D, I))
    total = np.array(total_s)
    recall = None
    if exact is not None:
        recall = float(np.mean([tie_recall(D, D_exact[:: v.stride]) for (D, _), D_exact in zip(results, exact)]))
    return {
        "variant": v.name, "kind": v.kind, "windows": len(queries[0].q_times[:: v.stride]), "n": len(total),
        "n_acc": len(total), "p50_ms": float(np.percentile(total, 50) * 1e3),
        "p99_ms": float(np.percentile(total, 99) * 1e3), "search_p50_ms": float(np.median(search_s) * 1e3),
        "recall": recall, "acc": accuracy(pairs),
    }, results


def core_queries(lib: Library, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The search core's codes and queries: all track codes, and 1024 of them with 10 % of bits flipped."""
    t = rng.integers(0, lib.n_tracks, 1024)
    return lib.track_codes(), (lib.anchors[t] ^ _flip(rng, len(t), 0.10)).view(np.uint8).reshape(-1, 8)


def core_round(xb: np.ndarray, xq: np.ndarray, reps: int, index: BinaryIndex | None = None) -> np.ndarray:
    """One timing round of the search core: ``reps`` single queries, one thread, on a fresh copy of the codes
    (flat) or on ``index``. -> seconds [reps]"""
    if index is None:
        index = BinaryIndex.build(xb.copy(), config=IndexConfig("flat"), device="cpu")
    faiss.omp_set_num_threads(1)
    index.search(xq[:1], K)
    return np.array([_timed(lambda i=i: index.search(xq[i % 1024 : i % 1024 + 1], K)) for i in range(reps)])


def track_ivf(xb: np.ndarray) -> tuple[BinaryIndex, float]:
    """The IVF index a library of this many tracks builds for its track codes (``cache.track_config``), build seconds."""
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    index = BinaryIndex.build(xb, config=IndexConfig("ivf", nprobe=TRACK_NPROBE), device="cpu")
    return index, time.perf_counter() - t0


def search_core(xb: np.ndarray, xq: np.ndarray, reps: int, ivf: BinaryIndex, ivf_build_s: float) -> dict:
    """One track code (10 % of bits flipped) against all n_tracks track codes, k=10: flat (the first round,
    and batched) and IVF (first round, tie-aware recall@10 against flat)."""
    index = BinaryIndex.build(xb, config=IndexConfig("flat"), device="cpu")
    out = {"n_codes": int(xb.shape[0]), "bytes": int(xb.nbytes)}
    single = core_round(xb, xq, reps)
    out["single_rounds_ms"] = [float(np.percentile(single, 50) * 1e3)]
    out["single_p99_ms"] = float(np.percentile(single, 99) * 1e3)
    D_exact, _ = index.search(xq, K)
    D_ivf, _ = ivf.search(xq, K)
    out["ivf"] = {"nlist": ivf.config.nlist, "nprobe": ivf.config.nprobe, "build_s": ivf_build_s,
                  "recall": tie_recall(D_ivf, D_exact),
                  "rounds_ms": [float(np.percentile(core_round(xb, xq, reps, ivf), 50) * 1e3)]}
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        nq = 256
        best = min(_timed(lambda: index.search(xq[:nq], K)) for _ in range(3))
        out[f"batch{threads}_us_per_q"] = best / nq * 1e6
    return out


def timing_round(index: BinaryIndex, queries: list[Query], v: Variant, starts: np.ndarray, n: int) -> float:
    """p50 of search + vote over the first n queries, seconds: one more timing round of a config."""
    index.set_search_params(nprobe=v.nprobe, nflip=v.nflip, ef_search=v.ef_search)
    times = []
    for q in queries[:n]:
        t0 = time.perf_counter()
        D, I = index.search(q.xq[:: v.stride], K)
        to_votes(q, v.stride, D, I, starts)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def summarise_rounds(res: dict) -> None:
    """Headline latencies from the rounds: the median round, and its scan rate."""
    c = res["core"]
    c["single_p50_ms"] = float(np.median(c["single_rounds_ms"]))
    c["single_gbps"] = c["bytes"] / (c["single_p50_ms"] / 1e3) / 1e9
    c["ivf"]["p50_ms"] = float(np.median(c["ivf"]["rounds_ms"]))
    for out in res["runs"]:
        out["p50_ms"] = float(np.median(out["p50_rounds_ms"]))


def build_key(v: Variant) -> str:
    """The index a config searches: one per kind, IVF one per list count."""
    return v.kind if v.kind != "ivf" else f"ivf{v.nlist}"


def variants(n_segments: int, nlist: int, args) -> list[Variant]:
    vs = [Variant("flat", "flat"), Variant("flat hop 0.512 s", "flat", stride=2),
          Variant("flat hop 1.28 s", "flat", stride=5)]
    if n_segments <= args.multihash_max:  # past that, minutes for the minimum number of queries
        vs.insert(1, Variant("flat 2 threads", "flat", threads=2))
    if n_segments <= args.ivf_max:
        for nprobe in args.nprobe:
            vs.append(Variant(f"ivf{nlist} nprobe{nprobe}", "ivf", nlist=nlist, nprobe=nprobe))
        for nprobe in args.nprobe[-2:]:
            vs.append(Variant(f"ivf{nlist} nprobe{nprobe} hop 0.512 s", "ivf", stride=2, nlist=nlist, nprobe=nprobe))
        # the library searches with FAISS's default OpenMP threads, one a core
        vs.append(Variant(f"ivf{nlist} nprobe{args.nprobe[-1]} 2 threads", "ivf", threads=2, nlist=nlist,
                          nprobe=args.nprobe[-1]))
    if n_segments <= args.multihash_max:
        for nflip in args.nflip:
            # nflip=2 probes 137 buckets a chunk: seconds a query past ~10k tracks.
            if nflip < 2 or n_segments <= NFLIP2_MAX_SEGMENTS:
                vs.append(Variant(f"multihash nflip{nflip}", "multihash", nflip=nflip))
    if n_segments <= args.hnsw_max:
        for ef in args.ef_search:
            vs.append(Variant(f"hnsw ef{ef}", "hnsw", ef_search=ef))
    return [v for v in vs if v.kind in args.kinds]


def auto_nlist(n_segments: int) -> int:
    """A power of two near sqrt(n), capped at 2048: adding a code is a flat
    search over the centroids (~2 ns each here), so 4096 lists take ~3 min
    per 19M segments, and k-means (on 256 * nlist codes) grows as nlist**2.
    IndexConfig's own default, 4 * sqrt(n), would be 17k lists at 100k tracks."""
    return int(min(2048, max(64, 2 ** round(np.log2(np.sqrt(n_segments))))))


def child(n_tracks: int, args) -> dict:
    rng = np.random.default_rng([args.seed, n_tracks])
    res = {"n_tracks": n_tracks}
    t0 = time.perf_counter()
    lib = synth_library(n_tracks, rng)
    res["gen_s"] = time.perf_counter() - t0
    n = res["n_segments"] = lib.n_segments
    hours = res["hours"] = n * SEG_HOP_S / 3600
    # Flat runs every query as the exact reference; cap its cost in code comparisons.
    per_condition = int(min(args.queries, max(2, args.exact_budget // (n * CLIP_WINDOWS * len(CONDITIONS)))))
    queries = make_queries(lib, per_condition, rng)
    res["n_queries"] = len(queries)
    core_xb, core_xq = core_queries(lib, rng)
    core_reps = max(1, args.core_reps // args.rounds)
    core_ivf, ivf_build_s = track_ivf(core_xb)
    res["core"] = search_core(core_xb, core_xq, core_reps, core_ivf, ivf_build_s)
    xb = lib.segment_codes()
    nlist = args.nlist or auto_nlist(n)
    res["builds"], res["runs"] = {}, []
    exact = exact_I = None
    indexes: dict[str, BinaryIndex] = {}  # kept for the later timing rounds
    configs = variants(n, nlist, args)
    for v in configs:
        key = build_key(v)
        if key not in res["builds"]:
            faiss.omp_set_num_threads(args.threads)
            rss0 = rss_mb()
            t0 = time.perf_counter()
            index = indexes[key] = BinaryIndex.build(xb, config=IndexConfig(v.kind, nlist=v.nlist), device="cpu")
            build_s = time.perf_counter() - t0
            nbytes, measured = index_bytes(index, n)
            res["builds"][key] = {"build_s": build_s, "bytes": nbytes, "bytes_measured": measured,
                                  "rss_added_mb": rss_mb() - rss0, "bytes_per_hour": nbytes / hours}
            print(f"  {n_tracks}: built {key} in {build_s:.1f} s", file=sys.stderr, flush=True)
        faiss.omp_set_num_threads(v.threads or args.threads)
        # flat comes first and runs every query: it is the exact reference.
        budget = float("inf") if exact is None else args.budget_s
        out, results = run_variant(indexes[key], queries, v, lib.starts, exact, budget, args.min_queries)
        out["p50_rounds_ms"] = [out["p50_ms"]]
        if exact is None:
            exact = [D for D, _ in results]
            exact_I = [I for _, I in results]
        elif v.kind == "flat":
            # Exact whatever the threads or hop: score every query from the
            # reference, keep the timing of the subset run.
            out["acc"] = accuracy([(q, to_votes(q, v.stride, D[:: v.stride], I[:: v.stride], lib.starts))
                                   for q, D, I in zip(queries, exact, exact_I)])
            out["n_acc"] = len(queries)
        if v.kind == "flat":
            # FAISS reads the codes once per batch of 32 query windows.
            passes = -(-out["windows"] // 32)
            out["compared_gbps"] = n * 8 * out["windows"] / (out["search_p50_ms"] / 1e3) / 1e9
            out["read_gbps"] = n * 8 * passes / (out["search_p50_ms"] / 1e3) / 1e9
        res["runs"].append(out)
        print(f"  {n_tracks} {v.name}: p50 {out['p50_ms']:.1f} ms, n={out['n']}", file=sys.stderr, flush=True)
    for r in range(1, args.rounds):
        res["core"]["single_rounds_ms"].append(float(np.percentile(core_round(core_xb, core_xq, core_reps), 50) * 1e3))
        res["core"]["ivf"]["rounds_ms"].append(float(np.percentile(core_round(core_xb, core_xq, core_reps, core_ivf), 50) * 1e3))
        for v, out in zip(configs, res["runs"]):
            faiss.omp_set_num_threads(v.threads or args.threads)
            out["p50_rounds_ms"].append(timing_round(indexes[build_key(v)], queries, v, lib.starts, args.min_queries) * 1e3)
        print(f"  {n_tracks}: timing round {r + 1} of {args.rounds}", file=sys.stderr, flush=True)
    summarise_rounds(res)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


# ---------------------------------------------------------------------------
# report


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def _rounds(median: float, rounds: list[float] | None, fmt: str = ".1f") -> str:
    """A latency with its rounds' range: ``12.3 (11.9-13.0)``; just the figure for one round."""
    if not rounds or len(rounds) < 2:
        return f"{median:{fmt}}"
    return f"{median:{fmt}} ({min(rounds):{fmt}}–{max(rounds):{fmt}})"


def render(meta: dict, results: list[dict], header: bool = True) -> str:
    """Markdown tables of main()'s JSON (meta and the per-size results)."""
    lines = []
    if header:
        lines.append(f"{meta['date']}; {meta['cores']} cores {meta['cpu']}; commit {meta['commit']}; FAISS {meta['faiss']}; "
                     f"load average at start {' '.join(map(str, meta['load']))}")
    lines.append(f"numpy copy of 1 GiB: {meta['copy_gbps']:.1f} GB/s copied ({2 * meta['copy_gbps']:.1f} GB/s read + write)\n")
    lines.append("Segment search + vote of one 10 s query, k=10, 1 thread unless named. recall@10: tie-aware, vs flat. "
                 "top-1: right track first, for clips with 5/15/25 % of bits flipped. OOL: out-of-library clips "
                 f"scoring above the match threshold {DEFAULT_MATCH_THRESHOLD}. n: timed queries / queries scored. "
                 "p50: the median of the timing rounds' p50s, their range in brackets (the first round times n "
                 "queries, the others the first --min-queries); p99 and search p50: the first round.\n")
    lines.append("| tracks | config | windows | n | p50 ms | p99 ms | search p50 ms | recall@10 | top-1 % | OOL % |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        for o in r["runs"]:
            rec = "exact" if o["kind"] == "flat" else f"{o['recall']:.3f}"
            top = "/".join(_pct(o["acc"][c]) for c in ("flip5", "flip15", "flip25"))
            lines.append(f"| {r['n_tracks']:,} | {o['variant']} | {o['windows']} | {o['n']}/{o['n_acc']} "
                         f"| {_rounds(o['p50_ms'], o.get('p50_rounds_ms'))} | {o['p99_ms']:.1f} | {o['search_p50_ms']:.1f} | {rec} | {top} "
                         f"| {_pct(o['acc']['ool'])} |")
    lines.append("\nSearch core: one track code against every track code, flat, k=10; single p50: the median "
                 "of the timing rounds' p50s (each on a fresh copy of the codes), their range in brackets:\n")
    lines.append("| tracks | codes | single p50 ms | single p99 ms | scan GB/s | batched µs/query, 1 thread "
                 "| batched µs/query, 2 threads |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r["core"]
        lines.append(f"| {r['n_tracks']:,} | {c['bytes'] / 1e6:.3f} MB | {_rounds(c['single_p50_ms'], c.get('single_rounds_ms'), '.3f')} | {c['single_p99_ms']:.3f} "
                     f"| {c['single_gbps']:.1f} | {c['batch1_us_per_q']:.1f} | {c['batch2_us_per_q']:.1f} |")
    lines.append(f"\nSearch core with IVF, the track index a library builds from {AUTO_IVF_TRACKS:,} tracks "
                 f"(`cache.track_config`: nprobe {TRACK_NPROBE}, lists as `IndexConfig` picks them); the same queries, "
                 "one thread; recall@10 tie-aware against flat:\n")
    lines.append("| tracks | nlist | nprobe | single p50 ms | recall@10 | build s |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        v = r["core"]["ivf"]
        lines.append(f"| {r['n_tracks']:,} | {v['nlist']} | {v['nprobe']} | {_rounds(v['p50_ms'], v['rounds_ms'], '.3f')} "
                     f"| {v['recall']:.3f} | {v['build_s']:.1f} |")
    lines.append("\nSegment-level flat scan, one 10 s query (28 windows, one pass over the codes per 32 windows):\n")
    lines.append("| tracks | segments | codes | threads | search p50 ms | GB/s read | GB/s compared |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for o in r["runs"]:
            if o["kind"] == "flat" and o["windows"] == CLIP_WINDOWS:
                threads = 2 if "2 threads" in o["variant"] else 1
                lines.append(f"| {r['n_tracks']:,} | {r['n_segments']:,} | {r['n_segments'] * 8 / 1e6:,.1f} MB | {threads} "
                             f"| {o['search_p50_ms']:.1f} | {o['read_gbps']:.1f} | {o['compared_gbps']:.1f} |")
    lines.append("\nBuild and memory (index bytes on disk, ids included; * computed as codes + int64 ids, not written):\n")
    lines.append("| tracks | index | build s | index MB | KB per hour of audio | RSS added MB | child peak RSS MB |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        for key, b in r["builds"].items():
            star = "" if b["bytes_measured"] else "*"
            lines.append(f"| {r['n_tracks']:,} | {key} | {b['build_s']:.1f} | {b['bytes'] / 1e6:,.1f}{star} "
                         f"| {b['bytes_per_hour'] / 1e3:.1f} | {b['rss_added_mb']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    lines.append("\nSetup per size (synthetic library; queries: 4 conditions alike, the exact reference scores all):\n")
    lines.append("| tracks | segments | hours of audio | generate s | queries |")
    lines.append("|---:|---:|---:|---:|---:|")
    for r in results:
        lines.append(f"| {r['n_tracks']:,} | {r['n_segments']:,} | {r['hours']:,.0f} | {r['gen_s']:.1f} "
                     f"| {r['n_queries']} |")
    seg_per_h = 3600 / SEG_HOP_S
    lines.append(f"\nCodes per hour of audio: {seg_per_h:.1f} segment codes x 8 B = {seg_per_h * 8 / 1e3:.1f} KB, "
                 f"+ 15 track codes (4 min tracks) x 8 B = {(seg_per_h * 8 + 120) / 1e3:.2f} KB; with float32 segment "
                 f"times {(seg_per_h * 12 + 120) / 1e3:.2f} KB; with the int64 ids FAISS's id map stores "
                 f"{(seg_per_h * 16 + 120) / 1e3:.2f} KB.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000],
                    help="library sizes, tracks")
    ap.add_argument("--quick", action="store_true", help="sizes 1000 and 10000, few queries (under a minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--queries", type=int, default=20, help="queries per condition (4 conditions)")
    ap.add_argument("--exact-budget", type=float, default=6e10,
                    help="fewer queries where the exact reference would compare more codes than this")
    ap.add_argument("--budget-s", type=float, default=15.0, help="timing per config, after --min-queries")
    ap.add_argument("--min-queries", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="OpenMP threads for builds and searches (on a busy 2-core machine 2 threads stall)")
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "multihash", "hnsw"],
                    choices=["flat", "ivf", "multihash", "hnsw"], help="flat always runs: it is the reference")
    ap.add_argument("--nlist", type=int, help="IVF lists (default: a power of 2 near sqrt(segments), 64..2048)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--nflip", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--ivf-max", type=float, default=25e6,
                    help="largest segment count for IVF (adding 190M codes to 2048 lists: ~15 min)")
    ap.add_argument("--multihash-max", type=float, default=25e6, help="largest segment count for multihash")
    ap.add_argument("--hnsw-max", type=float, default=2.5e5,
                    help="largest segment count for HNSW (2 cores build ~7k codes/s)")
    ap.add_argument("--core-reps", type=int, default=300, help="single search-core queries, shared among the rounds")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per config, spread over each size's run")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.kinds = ["flat", *[k for k in args.kinds if k != "flat"]]
    if args.quick:
        args.sizes, args.queries, args.budget_s, args.core_reps, args.rounds = [1000, 10000], 4, 3.0, 100, 2
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    meta = {**machine(), "faiss": faiss.__version__, "numpy": np.__version__, "threads": args.threads,
            "copy_gbps": copy_bandwidth() / 1e9, "argv": sys.argv[1:]}
    results = []
    for n in args.sizes:
        print(f"{n} tracks ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", *sys.argv[1:], "--child", str(n)],
                             check=True, stdout=subprocess.PIPE, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(render(meta, results))


if __name__ == "__main__":
    main()
