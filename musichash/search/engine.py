"""Query by example, deduplication and similar-track candidates over a ``SearchIndex``.

Plain numpy and FAISS: clips arrive already encoded (``indexer.encoder``),
tracks are known by id, and the caller (``musichash.library``) attaches
paths and tags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from musichash.bits import asymmetric_distance, hamming
from musichash.search.cache import SearchIndex
from musichash.search.vote import (
    DEFAULT_MATCH_THRESHOLD,
    SegmentHits,
    TrackVote,
    match_decision,
    vote,
)

#: library segments fetched per query window
DEFAULT_K = 10
#: a query window's weight is shared among the tracks it hits within this many
#: bits of its best hit. On the fit corpus it raised the share of in-library
#: clips found and matched at 95 % true-negative rate from 14 % to 49 %, with
#: top-1 unchanged (benchmarks/HISTORY.md): generic textures stop adding up to a match
DEFAULT_SHARE_SLACK = 2
#: with a query's unquantised codes, each window fetches this many times k segments by Hamming
#: distance and keeps the k nearest by ``asymmetric_distance``. On the fit corpus's calibration
#: clips 4 gave the same top-1 as ranking every segment (benchmarks/HISTORY.md)
RERANK_FACTOR = 4
#: per window in dedup: the track's own neighbouring segments and every other copy take slots.
#: With crnnh64's segment head, 50 instead of 20 raised the weakest true pair's coverage on
#: the evaluation corpus's dedup set from 0.06 to 0.13 and the best pair F1 from 0.968 to
#: 0.976 (benchmarks/HISTORY.md); the vote over 50 hits per window stays a few ms per track
DEDUP_K = 50
#: a pair of tracks is one recording when this fraction of one track's
#: windows line up with the other at one offset (and rate). 0.2 gave the best
#: pair F1 (0.91, with the hit cut-off below) on the fit corpus's dedup set with the interim codes
#: (benchmarks/HISTORY.md); weighted scores did worse (0.89 at best) because trimmed
#: or padded copies sit up to half a segment hop off the grid
DEFAULT_DEDUP_THRESHOLD = 0.2
#: dedup tolerates small speed changes only (a 5 % faster file is a different edit)
DEDUP_MAX_RATE_CHANGE = 0.03
#: dedup counts only close hits, so chance alignments between different pieces do not
#: add up. With crnnh64's segment head, a cut at 25 % of the bits is the one at which
#: copies and other recordings (alternate arrangements of one score included) are
#: separable on both dedup sets when every segment pair is compared
#: (benchmarks/dedup_ceiling.py); at 20 % or 30 % one of the two sets is not
DEDUP_MAX_HAMMING = 0.25
WINDOW_S = 3.0


@dataclass(frozen=True)
class DuplicatePair:
    """Tracks a and b hold the same recording; spans are the aligned parts, seconds.

    score: coverage, the fraction of a's windows that line up with b at one offset and rate.
    offset_s, rate: that alignment, a time t in a is ``offset_s + rate * t`` in b.
    """

    a: int
    b: int
    score: float
    span_a: tuple[float, float]
    span_b: tuple[float, float]
    offset_s: float = 0.0
    rate: float = 1.0


def query_codes(
    index: SearchIndex,
    codes: np.ndarray,
    times: np.ndarray,
    bits: int,
    *,
    top_k: int = 10,
    k: int = DEFAULT_K,
    threshold: float = DEFAULT_MATCH_THRESHOLD,
    share_slack: int | None = DEFAULT_SHARE_SLACK,
    relaxed: np.ndarray | None = None,
) -> tuple[list[TrackVote], bool]:
    """Rank tracks for one clip. codes: uint8 [nq, bits/8], times: float [nq] -> (votes, match).

    relaxed: float [nq, bits], the values the codes are the signs of (``Encoded.relaxed``).
    With them each window's neighbours are re-ranked by ``asymmetric_distance`` and the
    vote weighs hits by it: a bit the query is unsure of counts for less.
    """
    if relaxed is None:
        D, I = index.segments.search(codes, k)
        hits = SegmentHits.from_knn(times, D, I, index.seg_track, index.seg_time, bits)
    else:
        D, I = index.segments.search(codes, k * RERANK_FACTOR)
        D, I, dist = rerank(index.seg_codes, relaxed, D, I, k)
        hits = SegmentHits.from_knn(times, D, I, index.seg_track, index.seg_time, bits, distance=dist)
    votes = vote(hits, max_tracks=top_k, share_slack=share_slack)
    return votes, match_decision(votes, threshold)


def rerank(
    seg_codes: np.ndarray, relaxed: np.ndarray, D: np.ndarray, I: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each window's k nearest of its Hamming neighbours by ``asymmetric_distance``.

    seg_codes: uint8 [N, bits/8] by segment id; relaxed: float [nq, bits];
    D, I: [nq, k'] from the segment index (I == -1: no neighbour) -> D, I, dist: [nq, k].
    """
    dist = asymmetric_distance(relaxed, seg_codes[np.maximum(I, 0)])
    dist[I < 0] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return tuple(np.take_along_axis(a, order, axis=1) for a in (D, I, dist))


def duplicates_of(
    index: SearchIndex,
    segment_codes: np.ndarray,
    segment_times: np.ndarray,
    bits: int,
    *,
    self_id: int | None = None,
    duration_s: float | None = None,
    threshold: float = DEFAULT_DEDUP_THRESHOLD,
) -> list[DuplicatePair]:
    """Tracks holding the same recording as these segments (one track's, or a file's)."""
    if len(segment_codes) == 0:
        return []
    D, I = index.segments.search(segment_codes, DEDUP_K)
    hits = SegmentHits.from_knn(segment_times, D, I, index.seg_track, index.seg_time, bits)
    keep = hits.hamming <= DEDUP_MAX_HAMMING * bits
    if self_id is not None:
        keep &= hits.track_id != self_id
    if not keep.all():
        hits = hits.select(keep)
    end_a = duration_s if duration_s is not None else float(segment_times[-1]) + WINDOW_S
    out = []
    n = len(segment_codes)
    for v in vote(hits, max_tracks=10, max_rate_change=DEDUP_MAX_RATE_CHANGE):
        coverage = v.votes / n
        if coverage < threshold:
            continue
        lo_a = max(0.0, (v.span[0] - v.offset_s) / v.rate)
        hi_a = min(end_a, (v.span[1] - v.offset_s) / v.rate + WINDOW_S)
        out.append(
            DuplicatePair(self_id if self_id is not None else -1, v.track_id, coverage, (lo_a, hi_a),
                          (v.span[0], v.span[1] + WINDOW_S), v.offset_s, v.rate)
        )
    return out


def best_pairs(pairs: Iterable[DuplicatePair]) -> dict[frozenset, DuplicatePair]:
    """Each pair of tracks once, at its highest-scoring alignment (of either direction)."""
    best: dict[frozenset, DuplicatePair] = {}
    for p in pairs:
        key = frozenset((p.a, p.b))
        if key not in best or p.score > best[key].score:
            best[key] = p
    return best


def group_pairs(pairs: Iterable[DuplicatePair]) -> list[tuple[list[int], float, dict[int, tuple[float, float]]]]:
    """Connected groups of tracks: (sorted ids, weakest joining score, span per id), largest first."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best = best_pairs(pairs)
    spans: dict[int, tuple[float, float]] = {}
    for p in best.values():
        parent[find(p.a)] = find(p.b)
        for t, s in ((p.a, p.span_a), (p.b, p.span_b)):
            old = spans.get(t)
            spans[t] = s if old is None else (min(old[0], s[0]), max(old[1], s[1]))
    members: dict[int, list[int]] = {}
    for t in parent:
        members.setdefault(find(t), []).append(t)
    groups = []
    for ids in members.values():
        ids = sorted(ids)
        weakest = min(p.score for p in best.values() if find(p.a) == find(ids[0]))
        groups.append((ids, weakest, {t: spans[t] for t in ids}))
    groups.sort(key=lambda g: (-len(g[0]), g[0][0]))
    return groups


def similar_tracks(
    index: SearchIndex,
    seed_codes: np.ndarray,
    bits: int,
    *,
    top_k: int,
    exclude: set[int],
    keep: Callable[[int], bool] = lambda _tid: True,
) -> list[tuple[int, float, int]]:
    """Tracks nearest to the seeds' track codes: (track id, score, mean Hamming), best first.

    seed_codes: uint8 [n_seeds, bits/8]. A candidate's score is its mean
    similarity ``1 - hamming / bits`` to the seeds; candidates come from each
    seed's nearest neighbours, widened until ``top_k`` pass ``exclude`` and ``keep``.
    """
    n = index.tracks.ntotal
    k = min(n, max(4 * top_k, 32) + len(exclude))
    kept: dict[int, bool] = {}  # keep() may query the database: once per track, even as k widens
    while True:
        _, I = index.tracks.search(seed_codes, max(k, 1))
        for c in np.unique(I[I >= 0]).tolist():
            if c not in kept:
                kept[c] = c not in exclude and keep(c)
        cand = np.array(sorted(c for c, ok in kept.items() if ok), dtype=np.int64)
        if len(cand) >= top_k or k >= n:
            break
        k = min(n, 4 * k)
    if len(cand) == 0:
        return []
    xb = index.track_xb[np.searchsorted(index.track_ids, cand)]
    d = np.stack([hamming(seed[None, :], xb) for seed in seed_codes]).astype(np.float64)  # [n_seeds, n_cand]
    mean_d = d.mean(axis=0)
    order = np.lexsort((cand, mean_d))[:top_k]
    return [(int(cand[i]), float(1.0 - mean_d[i] / bits), int(round(mean_d[i]))) for i in order]
