"""Query by example: encoded clips in, ranked tracks and the match decision out.

One clip goes down these stages, and none climbs back up:

1. **lookup**: every window of every clip in the batch fetches its nearest library segments in one
   FAISS search (``RERANK_FACTOR * k`` by Hamming distance), and with a CRNNH model's unquantised
   codes each window keeps the ``k`` nearest by ``bits.asymmetric_distance`` (``rerank``);
2. **vote** (``search.vote``): tracks ranked by time-consistent support, a window's weight shared
   among the tracks it hits about equally well (``DEFAULT_SHARE_SLACK``);
3. **verify**: the first ``HARMONY_CANDIDATES`` tracks re-ranked by the clip's harmony too
   (``features.chroma.harmony_agreement`` with each track's stored chroma, at the vote's alignment);
4. **decide**: ``match`` when the first track's score passes the model's match threshold and its
   harmony agreement the chroma threshold (``search.thresholds``);
5. **results**: paths and tags of the tracks from the store, in one read.

The store is read for chroma (stage 3) and tracks (stage 5) only; clips arrive encoded
(``models.encoder.encode_clip``), and the caller (``Library.search``) hands them over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from musichash.bits import asymmetric_distance
from musichash.features import chroma
from musichash.models.encoder import Encoded
from musichash.search.cache import SearchIndex
from musichash.search.results import SearchHit, SearchResult
from musichash.search.thresholds import Thresholds
from musichash.search.vote import SegmentHits, TrackVote, vote

#: library segments fetched per query window
DEFAULT_K = 10
#: a query window's weight is shared among the tracks it hits within this many bits of its best hit.
#: On the fit corpus it raised the share of in-library clips found and matched at 95 % true-negative
#: rate from 14 % to 49 %, with top-1 unchanged (benchmarks/HISTORY.md): generic textures stop
#: adding up to a match
DEFAULT_SHARE_SLACK = 2
#: with a query's unquantised codes, each window fetches this many times k segments by Hamming
#: distance and keeps the k nearest by ``asymmetric_distance``. On the fit corpus's calibration
#: clips 4 gave the same top-1 as ranking every segment (benchmarks/HISTORY.md)
RERANK_FACTOR = 4
#: shortest query clip, seconds: a clip shorter than a window (3 s) is tiled to one, as musicnn was
#: trained (``backbones.repeat_pad``); the segment head learnt such 2 s views (``--short-views``)
MIN_CLIP_S = 2.0
#: a longer query file is searched by its first this many seconds (a whole album as a "clip" took
#: minutes and gigabytes), and the result says so
MAX_CLIP_S = 60.0


def too_short(duration_s: float) -> str:
    """The one message for a clip too short to search."""
    return f"clip is {duration_s:.1f} s long; queries need at least {MIN_CLIP_S:g} s"
#: a clip's first tracks by the vote whose harmony is compared with the clip's (``verify``)
HARMONY_CANDIDATES = 3
#: they are ranked by score / best score + HARMONY_WEIGHT * chroma agreement. Chosen on the fit
#: corpus's calibration third, where it raised top-1 at 3 / 5 / 10 s from 71.4 / 87.7 / 95.9 % to
#: 77.0 / 91.8 / 97.7 % (weights 0.5 to 4 and score-ratio rules compared: benchmarks/HISTORY.md)
HARMONY_WEIGHT = 2.0


@dataclass(frozen=True)
class Query:
    """A clip to search: its name and codes (with chroma for the harmony check), or why it cannot be searched."""

    name: str
    enc: Encoded | None = None
    error: str | None = None

    def problem(self) -> str | None:
        """Why this clip gets no answer: a decoding error, or too short to search."""
        if self.error is not None:
            return self.error
        if self.enc.duration_s < MIN_CLIP_S - 0.05:
            return too_short(self.enc.duration_s)
        return None


@dataclass(frozen=True)
class Settings:
    """How a search ranks: ``top_k`` tracks shown, ``k`` segments per window, the vote's ``share_slack``
    (None: no sharing), ``relaxed``: weigh bits by the query's confidence where the model gives it."""

    top_k: int = 10
    k: int = DEFAULT_K
    share_slack: int | None = DEFAULT_SHARE_SLACK
    relaxed: bool = True


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


def lookup(index: SearchIndex, encs: Sequence[Encoded], bits: int, settings: Settings) -> list[SegmentHits]:
    """Stage 1 for a batch of clips: one FAISS search over all their windows, split back per clip."""
    if not encs:
        return []
    codes = np.concatenate([e.codes for e in encs])
    relaxed = settings.relaxed and all(e.relaxed is not None for e in encs)
    D, I = index.segments.search(codes, settings.k * (RERANK_FACTOR if relaxed else 1))
    dist = None
    if relaxed:
        D, I, dist = rerank(index.seg_codes, np.concatenate([e.relaxed for e in encs]), D, I, settings.k)
    out, start = [], 0
    for e in encs:
        rows = slice(start, start + len(e.codes))
        start = rows.stop
        out.append(SegmentHits.from_knn(e.times, D[rows], I[rows], index.seg_track, index.seg_time, bits,
                                        distance=None if dist is None else dist[rows]))
    return out


def rank(hits: SegmentHits, settings: Settings) -> list[TrackVote]:
    """Stage 2: the vote, with at least the tracks ``verify`` re-ranks, whatever ``top_k``."""
    return vote(hits, max_tracks=max(settings.top_k, HARMONY_CANDIDATES), share_slack=settings.share_slack)


ChromaOf = Callable[[int], "np.ndarray | None"]


def harmony(enc: Encoded, v: TrackVote, chroma_of: ChromaOf) -> float | None:
    """The clip's harmony agreement with a voted track at the vote's alignment; None when either
    has no chroma (the track was indexed before musichash kept it)."""
    packed = chroma_of(v.track_id)
    if packed is None or enc.chroma is None:
        return None
    return chroma.harmony_agreement(enc.chroma, chroma.unpack(packed), v.offset_s, v.rate)


def verify(enc: Encoded, votes: list[TrackVote], chroma_of: ChromaOf) -> tuple[list[TrackVote], float | None]:
    """Stage 3: the vote's ranking with its first ``HARMONY_CANDIDATES`` tracks re-ranked by harmony
    too, and the agreement of the track now first (None: not compared).

    Where one of those compared has no chroma the order is the vote's. A track is compared only if it
    could overtake the best so far (its agreement can be at most 1), so the first often settles it.
    """
    head = votes[:HARMONY_CANDIDATES]
    if not head or enc.chroma is None or head[0].score <= 0:
        return votes, None
    first = harmony(enc, head[0], chroma_of)
    if first is None:
        return votes, None
    best, best_key, best_agree = 0, 1.0 + HARMONY_WEIGHT * first, first
    for i, v in enumerate(head[1:], 1):
        ratio = v.score / head[0].score
        if ratio + HARMONY_WEIGHT <= best_key:  # could not beat the best even in perfect harmony
            continue
        a = harmony(enc, v, chroma_of)
        if a is None:
            return votes, first
        key = ratio + HARMONY_WEIGHT * a
        if key > best_key:  # the first of equals: the vote's order
            best, best_key, best_agree = i, key, a
    return [head[best], *(v for i, v in enumerate(votes) if i != best)], best_agree


def decide(votes: list[TrackVote], agree: float | None, thresholds: Thresholds, seconds: float) -> bool:
    """Stage 4: the first track's score strictly above the match threshold and, where the model has a
    harmony check and the agreement was measured, the agreement strictly above the chroma threshold;
    both those of the clip's length (``Thresholds.for_length``, the clip's ``seconds``)."""
    thresholds = thresholds.for_length(seconds)
    if not votes or votes[0].score <= thresholds.match:
        return False
    return agree is None or not thresholds.harmony_check or agree > thresholds.chroma


def search(
    queries: Sequence[Query],
    index: SearchIndex,
    store,
    thresholds: Thresholds,
    settings: Settings,
    top_tags: Callable,
) -> list[SearchResult]:
    """Stages 1-5 for a batch of clips, one result per query in order.

    store: ``indexer.store.LibraryStore`` (chroma and tracks are read from it); top_tags(track) ->
    the tags a hit shows.
    """
    problems = [q.problem() for q in queries]
    hits = iter(lookup(index, [q.enc for q, p in zip(queries, problems) if p is None], store.bits, settings))
    out = []
    for q, problem in zip(queries, problems):
        if problem is not None:
            out.append(SearchResult(q.name, False, (), 0.0 if q.enc is None else q.enc.duration_s, error=problem))
            continue
        votes, agree = verify(q.enc, rank(next(hits), settings), store.get_chroma)
        votes = votes[: settings.top_k]
        tracks = store.get_many(v.track_id for v in votes)
        shown = [v for v in votes if v.track_id in tracks]  # a track removed since the index was built drops out
        if not shown or shown[0].track_id != votes[0].track_id:
            agree = None
        results = tuple(
            SearchHit(v.track_id, tracks[v.track_id].path, v.score, v.hamming, v.offset_s, v.rate, v.votes,
                      top_tags(tracks[v.track_id]))
            for v in shown
        )
        note = f"longer than {MAX_CLIP_S:g} s: only its first {MAX_CLIP_S:g} s were searched" if q.enc.cut else None
        out.append(SearchResult(q.name, bool(shown) and decide(votes, agree, thresholds, q.enc.duration_s), results, q.enc.duration_s,
                                chroma=agree, note=note))
    return out
