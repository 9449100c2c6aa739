"""Recommendation candidates: tracks whose track codes lie near the seeds', minus the seeds' duplicates.

1. **seeds**: a library track's stored codes, or an audio file encoded now (``Seed``);
2. **exclude**: the seeds themselves, files with the same bytes, and tracks that hold the same
   recording: those whose codes ``search.dedup`` aligns with a seed's and whose audio agrees along
   that alignment (``dedup.same_recording``; codes alone also align unrelated tracks that share a
   texture);
3. **nearest**: candidates from each seed's nearest track codes, widened until ``top_k`` pass the
   exclusions and the tag filters, ranked by mean similarity to all seeds (``similar_tracks``);
4. **one per recording**: a candidate that holds the same recording as a better one is left out too,
   so a track and its MP3 copy never fill two places.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from musichash.bits import hamming
from musichash.search import dedup
from musichash.search.cache import SearchIndex
from musichash.search.results import SimilarHit, SimilarResult

#: a track "has" a tag for --tag / --exclude-tag when its probability reaches this
DEFAULT_TAG_P = 0.2


@dataclass(frozen=True)
class Seed:
    """A seed's audio file and codes: track code uint8 [bits/8], segment codes and times, and its
    library track id (None: an audio file from outside the library) and duration."""

    name: str
    path: str
    code: np.ndarray
    segment_codes: np.ndarray
    segment_times: np.ndarray
    track_id: int | None
    duration_s: float | None


def tag_filter(vocabulary: Sequence[str], tags: Sequence[str], exclude_tags: Sequence[str], min_p: float,
               tags_of: Callable[[int], "Sequence[float] | None"]) -> Callable[[int], bool]:
    """keep(track_id): the track has every tag of ``tags`` and none of ``exclude_tags`` (p >= min_p).
    Unknown tag names raise ValueError with the vocabulary."""
    index = {name: i for i, name in enumerate(vocabulary)}
    for tag in (*tags, *exclude_tags):
        if tag not in index:
            raise ValueError(f"unknown tag {tag!r}; the tags are: {', '.join(vocabulary)}")
    need = [index[t] for t in tags]
    avoid = [index[t] for t in exclude_tags]
    if not need and not avoid:
        return lambda _tid: True

    def keep(tid: int) -> bool:
        p = tags_of(tid)
        if p is None:
            return False
        return all(p[i] >= min_p for i in need) and not any(p[i] >= min_p for i in avoid)

    return keep


def same_recording_as(
    path: str, track_id: int | None, codes: np.ndarray, times: np.ndarray, duration_s: float | None,
    index: SearchIndex, store, dedup_threshold: float, among: set[int] | None = None,
) -> list[int]:
    """Library tracks (of ``among``, if given) that hold the same recording as the audio at ``path``:
    their codes align with these (``dedup.duplicates_of``) over most of the shorter one
    (``dedup.plausible``) and their sketches agree along the alignment."""
    pairs = dedup.duplicates_of(index, codes, times, store.bits, self_id=track_id, duration_s=duration_s,
                                threshold=dedup_threshold)
    pairs = [p for p in pairs if among is None or p.b in among]
    if not pairs:
        return []
    tracks = store.get_many(p.b for p in pairs)
    pairs = [p for p in pairs if p.b in tracks and dedup.plausible(p, duration_s, tracks[p.b].duration_s)]
    paths = {p.b: tracks[p.b].path for p in pairs}
    paths[-1 if track_id is None else track_id] = path
    return [p.b for p in dedup.same_recording(pairs, dedup.store_sketches(store), paths)]


def recommend(
    seeds: Sequence[Seed],
    index: SearchIndex,
    store,
    dedup_threshold: float,
    keep: Callable[[int], bool],
    top_k: int,
    top_tags: Callable,
) -> SimilarResult:
    """Stages 2-4 for seeds already resolved; store: ``indexer.store.LibraryStore``."""
    exclude, excluded_paths = set(), []

    def leave_out(track) -> None:
        if track.id not in exclude:
            exclude.add(track.id)
            excluded_paths.append(track.path)

    for seed in seeds:
        if seed.track_id is not None:
            exclude.add(seed.track_id)
            for t in store.find_by_hash(store.get(seed.track_id).content_hash):
                if t.status == "ok":
                    leave_out(t)
        for tid in same_recording_as(seed.path, seed.track_id, seed.segment_codes, seed.segment_times,
                                     seed.duration_s, index, store, dedup_threshold):
            leave_out(store.get(tid))
    # twice as many candidates as shown: some may turn out to be copies of better ones
    found = similar_tracks(index, np.stack([s.code for s in seeds]), store.bits, top_k=2 * top_k, exclude=exclude,
                           keep=keep)
    tracks = store.get_many(tid for tid, _, _ in found)
    found = [f for f in found if f[0] in tracks]
    hits, copies = [], set()
    for tid, score, d in found:
        if len(hits) == top_k:
            break
        if tid in copies:
            leave_out(tracks[tid])
            continue
        hits.append(SimilarHit(tid, tracks[tid].path, score, d, top_tags(tracks[tid])))
        later = {f[0] for f in found} - {h.track_id for h in hits} - copies
        t = tracks[tid]
        copies |= {o for o in later if tracks[o].content_hash == t.content_hash}
        c = store.get_codes(tid)
        copies |= set(same_recording_as(t.path, tid, c.segment_codes, c.segment_times, t.duration_s, index, store,
                                        dedup_threshold, among=later))
    return SimilarResult(", ".join(s.name for s in seeds), tuple(hits), tuple(excluded_paths))


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
