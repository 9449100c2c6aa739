"""Deduplication: groups of library tracks that hold the same recording, with the aligned spans.

Down the layers, like a query:

1. **pairs**: every track's segment codes look up their ``DEDUP_K`` nearest library segments, and
   only close hits (``DEDUP_MAX_HAMMING``) vote for an alignment with another track (small speed
   changes only); a pair is kept when at least ``threshold`` of the track's windows line up;
2. **verify**: each pair's best alignment is checked on the two files' audio
   (``features.spectra.spectrogram_agreement``), so an alternate arrangement of a score, which codes
   made to survive timbre changes cannot tell from a copy, stays out;
3. **group**: files with the same bytes join whatever the codes say, and pairs chain into groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from musichash.features import spectra
from musichash.search.cache import SearchIndex
from musichash.search.results import DuplicateGroup, GroupMember
from musichash.search.thresholds import DEFAULT_DEDUP_THRESHOLD
from musichash.search.vote import SegmentHits, vote

#: per window in dedup: the track's own neighbouring segments and every other copy take slots.
#: With crnnh64's segment head, 50 instead of 20 raised the weakest true pair's coverage on
#: the evaluation corpus's dedup set from 0.06 to 0.13 and the best pair F1 from 0.968 to
#: 0.976 (benchmarks/HISTORY.md); the vote over 50 hits per window stays a few ms per track
DEDUP_K = 50
#: dedup tolerates small speed changes only (a 5 % faster file is a different edit)
DEDUP_MAX_RATE_CHANGE = 0.03
#: dedup counts only close hits, so chance alignments between different pieces do not
#: add up. With crnnh64's segment head, a cut at 25 % of the bits is the one at which
#: copies and other recordings (alternate arrangements of one score included) are
#: separable on both dedup sets when every segment pair is compared
#: (benchmarks/HISTORY.md); at 20 % or 30 % one of the two sets is not
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
    """Stage 1: tracks holding the same recording as these segments (one track's, or a file's)."""
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


def same_recording(
    pairs: list[DuplicatePair], paths: dict[int, str], progress: Callable[[int, int], None] | None = None
) -> list[DuplicatePair]:
    """Stage 2: each pair's best alignment, kept when the two files' audio agrees along it (or a file
    cannot be read now: the codes' word stands). progress(done, total) follows the checks."""
    best = best_pairs(pairs)
    cache = spectra.Spectra()
    kept = []
    for done, p in enumerate(sorted(best.values(), key=lambda p: (p.a, p.b)), 1):
        a, b = cache.get(paths[p.a]), cache.get(paths[p.b])
        agree = None if a is None or b is None else spectra.spectrogram_agreement(a, b, p.offset_s, p.rate)
        if agree is None or agree >= spectra.SAME_RECORDING:
            kept.append(p)
        if progress:
            progress(done, len(best))
    return kept


def find_groups(
    index: SearchIndex,
    store,
    threshold: float,
    *,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[DuplicateGroup]:
    """Groups of tracks of ``store`` (``indexer.store.LibraryStore``) that are the same recording, largest first."""
    tracks = {t.id: t for t in store.tracks("ok")}
    pairs = []
    for tid, t in tracks.items():
        codes = store.get_codes(tid)
        pairs += duplicates_of(index, codes.segment_codes, codes.segment_times, store.bits,
                               self_id=tid, duration_s=t.duration_s, threshold=threshold)
    pairs = [p for p in pairs if p.a in tracks and p.b in tracks and tracks[p.a].content_hash != tracks[p.b].content_hash]
    if verify:
        pairs = same_recording(pairs, {tid: t.path for tid, t in tracks.items()}, progress)
    by_hash: dict[str, list[int]] = {}
    for t in tracks.values():
        by_hash.setdefault(t.content_hash, []).append(t.id)
    for ids in by_hash.values():  # the same bytes: the same recording whatever the codes say
        for other in ids[1:]:
            full = (0.0, float(tracks[ids[0]].duration_s or 0.0))
            pairs.append(DuplicatePair(ids[0], other, 1.0, full, full))
    return [DuplicateGroup(tuple(GroupMember(i, tracks[i].path, spans[i]) for i in ids), score)
            for ids, score, spans in group_pairs(pairs)]
