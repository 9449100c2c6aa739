"""Deduplication: groups of library tracks that hold the same recording, with the aligned spans.

Down the layers, like a query:

1. **pairs**: every track's segment codes look up their ``DEDUP_K`` nearest library segments, and
   only close hits (``DEDUP_MAX_HAMMING``) vote for an alignment with another track (small speed
   changes only); a pair is kept when at least ``threshold`` of the track's windows line up;
2. **plausible**: the alignment must cover ``MIN_COVER`` of the shorter file, and a short file
   (a jingle, under ``SHORT_S``) pairs only with files of about its own length, so a few seconds
   that a long track shares with another never make them one recording;
3. **verify**: each remaining pair's alignment is checked on the two tracks' stored sketches
   (``features.spectra``), so an alternate arrangement of a score, which codes made to survive
   timbre changes cannot tell from a copy, stays out; no file is decoded again;
4. **group**: complete linkage: two groups join only when every member of one is a verified pair
   of every member of the other (a pair the nearest-neighbour stage missed is checked directly
   on the two tracks' codes), so no chain of links ever joins two recordings. Files with the same
   bytes are always one recording.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from musichash.bits import hamming
from musichash.features import spectra
from musichash.search.cache import SearchIndex
from musichash.search.results import DuplicateGroup, GroupMember
from musichash.search.thresholds import DEFAULT_DEDUP_THRESHOLD
from musichash.search.vote import SegmentHits, vote

#: per window in dedup: the track's own neighbouring segments and every other copy take slots.
#: With crnnh64's segment head, 50 instead of 20 raised the weakest true pair's coverage on
#: the evaluation corpus's dedup set from 0.06 to 0.13 and the best pair F1 from 0.968 to
#: 0.976 (benchmarks/HISTORY.md); the vote over 50 hits per window stays a few ms per track.
#: Chosen on the evaluation corpus, so its dedup figures are not independent of this choice
DEDUP_K = 50
#: dedup tolerates small speed changes only (a 5 % faster file is a different edit)
DEDUP_MAX_RATE_CHANGE = 0.03
#: dedup counts only close hits, so chance alignments between different pieces do not
#: add up. With crnnh64's segment head, a cut at 25 % of the bits is the one at which
#: copies and other recordings (alternate arrangements of one score included) are
#: separable on both dedup sets when every segment pair is compared
#: (benchmarks/HISTORY.md); at 20 % or 30 % one of the two sets is not. One of the two is the
#: evaluation corpus's, so its dedup figures are not independent of this choice
DEDUP_MAX_HAMMING = 0.25
WINDOW_S = 3.0
#: a duplicate pair's alignment covers at least this share of the shorter file (an independent
#: evaluation found two songs joined on a 3 s span, and a 5 s jingle on a 5-minute track)
MIN_COVER = 0.8
#: files shorter than this are duplicates only of files at most ``SHORT_RATIO`` times as long
SHORT_S = 30.0
SHORT_RATIO = 1.5


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
    return _pairs(hits, segment_times, self_id, duration_s, threshold)


def pair_of(a: int, a_codes, b: int, b_codes, bits: int, duration_a: float | None,
            threshold: float) -> DuplicatePair | None:
    """Stage 1 for two given tracks (``TrackCodes`` each): their best alignment, by brute force over
    their segments, or None. For pairs the nearest-neighbour stage did not bring back."""
    xq, xb = a_codes.segment_codes, b_codes.segment_codes
    if len(xq) == 0 or len(xb) == 0:
        return None
    k = min(DEDUP_K, len(xb))
    D = hamming(xq[:, None], xb[None])  # [nq, nb]
    I = np.argsort(D, axis=1, kind="stable")[:, :k]
    hits = SegmentHits.from_knn(a_codes.segment_times, np.take_along_axis(D, I, axis=1), I,
                                np.full(len(xb), b, np.int64), b_codes.segment_times, bits)
    found = [p for p in _pairs(hits, a_codes.segment_times, a, duration_a, threshold) if p.b == b]
    return found[0] if found else None


def _pairs(hits: SegmentHits, segment_times: np.ndarray, self_id: int | None, duration_s: float | None,
           threshold: float) -> list[DuplicatePair]:
    keep = hits.hamming <= DEDUP_MAX_HAMMING * hits.bits
    if self_id is not None:
        keep &= hits.track_id != self_id
    if not keep.all():
        hits = hits.select(keep)
    end_a = duration_s if duration_s is not None else float(segment_times[-1]) + WINDOW_S
    out = []
    n = len(segment_times)
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


def plausible(p: DuplicatePair, duration_a: float | None, duration_b: float | None) -> bool:
    """Stage 2: whether pair p's alignment can make its tracks one recording: it covers ``MIN_COVER``
    of the shorter one, and a short one (``SHORT_S``) is paired only with one of about its length.
    Unknown durations are taken from the spans."""
    da = duration_a or p.span_a[1]
    db = duration_b or p.span_b[1]
    if da <= 0 or db <= 0:
        return False
    span, shorter = (p.span_a, da) if da <= db else (p.span_b, db)
    if (span[1] - span[0]) < MIN_COVER * shorter:
        return False
    return shorter >= SHORT_S or max(da, db) <= SHORT_RATIO * shorter


def best_pairs(pairs: Iterable[DuplicatePair]) -> dict[frozenset, DuplicatePair]:
    """Each pair of tracks once, at its highest-scoring alignment (of either direction)."""
    best: dict[frozenset, DuplicatePair] = {}
    for p in pairs:
        key = frozenset((p.a, p.b))
        if key not in best or p.score > best[key].score:
            best[key] = p
    return best


def same_recording(
    pairs: list[DuplicatePair],
    sketches: spectra.Sketches,
    paths: dict[int, str],
    progress: Callable[[int, int], None] | None = None,
) -> list[DuplicatePair]:
    """Stage 3: each pair's best alignment, kept when the two tracks' sketches agree along it (or a
    sketch cannot be had: no stored one and the file cannot be read now; the codes' word stands).
    progress(done, total) follows the checks."""
    best = best_pairs(pairs)
    kept = []
    for done, p in enumerate(sorted(best.values(), key=lambda p: (p.a, p.b)), 1):
        if agrees(p, sketches, paths):
            kept.append(p)
        if progress:
            progress(done, len(best))
    return kept


def agrees(p: DuplicatePair, sketches: spectra.Sketches, paths: dict[int, str]) -> bool:
    a, b = sketches.get(p.a, paths[p.a]), sketches.get(p.b, paths[p.b])
    agree = None if a is None or b is None else spectra.spectrogram_agreement(a, b, p.offset_s, p.rate)
    return agree is None or agree >= spectra.SAME_RECORDING


def store_sketches(store) -> spectra.Sketches:
    """Sketches of ``store``'s tracks (``indexer.store.LibraryStore``); ids below 0 are files outside it."""
    return spectra.Sketches(lambda tid: store.get_sketch(tid) if tid >= 0 else None)


def link(
    pairs: Iterable[DuplicatePair], check: Callable[[int, int], DuplicatePair | None]
) -> list[tuple[list[int], float, dict[int, tuple[float, float]]]]:
    """Stage 4, complete linkage: groups as (sorted ids, weakest score inside, span per id), largest first.

    Pairs join groups strongest first; two groups join only when every cross pair is linked,
    ``check(x, y)`` deciding those not in ``pairs`` (None: not the same recording).
    """
    linked = best_pairs(pairs)
    group: dict[int, frozenset[int]] = {}
    for p in sorted(linked.values(), key=lambda p: (-p.score, min(p.a, p.b), max(p.a, p.b))):
        A, B = group.get(p.a, frozenset((p.a,))), group.get(p.b, frozenset((p.b,)))
        if A is B:
            continue
        joined = True
        for x in A:
            for y in B:
                key = frozenset((x, y))
                if key not in linked:
                    found = check(x, y)
                    if found is None:
                        joined = False
                        break
                    linked[key] = found
            if not joined:
                break
        if joined:
            merged = A | B
            for t in merged:
                group[t] = merged
    out = []
    for members in {id(g): g for g in group.values()}.values():
        ids = sorted(members)
        inside = [linked[frozenset((x, y))] for i, x in enumerate(ids) for y in ids[i + 1 :]]
        spans: dict[int, tuple[float, float]] = {}
        for q in inside:
            for t, sp in ((q.a, q.span_a), (q.b, q.span_b)):
                old = spans.get(t)
                spans[t] = sp if old is None else (min(old[0], sp[0]), max(old[1], sp[1]))
        out.append((ids, min(q.score for q in inside), spans))
    out.sort(key=lambda g: (-len(g[0]), g[0][0]))
    return out


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
    dur = {tid: t.duration_s for tid, t in tracks.items()}
    paths = {tid: t.path for tid, t in tracks.items()}
    sketches = store_sketches(store)
    codes = {tid: store.get_codes(tid) for tid in tracks}  # read once: a direct check needs them again
    pairs = []
    for tid, t in tracks.items():
        pairs += duplicates_of(index, codes[tid].segment_codes, codes[tid].segment_times, store.bits,
                               self_id=tid, duration_s=t.duration_s, threshold=threshold)
    pairs = [p for p in pairs if p.a in tracks and p.b in tracks and tracks[p.a].content_hash != tracks[p.b].content_hash]
    pairs = list(best_pairs(p for p in pairs if plausible(p, dur[p.a], dur[p.b])).values())
    if verify:
        pairs = same_recording(pairs, sketches, paths, progress)
    for ids in _same_bytes(tracks.values()):  # the same bytes: the same recording whatever the codes say
        for i, x in enumerate(ids):
            full = (0.0, float(tracks[x].duration_s or 0.0))
            pairs += [DuplicatePair(x, y, 1.0, full, full) for y in ids[i + 1 :]]

    def check(x: int, y: int) -> DuplicatePair | None:
        if dur[x] > dur[y]:  # from the shorter one's windows, as coverage is the shorter file's
            x, y = y, x
        p = pair_of(x, codes[x], y, codes[y], store.bits, dur[x], threshold)
        if p is None or not plausible(p, dur[x], dur[y]):
            return None
        return p if not verify or agrees(p, sketches, paths) else None

    return [DuplicateGroup(tuple(GroupMember(i, tracks[i].path, spans[i]) for i in ids), score)
            for ids, score, spans in link(pairs, check)]


def _same_bytes(tracks) -> list[list[int]]:
    by_hash: dict[str, list[int]] = {}
    for t in tracks:
        by_hash.setdefault(t.content_hash, []).append(t.id)
    return [sorted(ids) for ids in by_hash.values() if len(ids) > 1]
