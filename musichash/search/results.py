"""Typed results of the engine's queries, and their JSON shapes (DESIGN.md's contract)."""

from __future__ import annotations

from dataclasses import dataclass

from musichash.models.tagging import TagScore


@dataclass(frozen=True)
class SearchHit:
    """One library track matched by a query clip.

    score: time-consistent support in [0, 1]; hamming: median distance of the
    supporting windows; offset_s: where the clip starts in the track; rate:
    track seconds per clip second (1.05 = the clip is 5 % faster).
    """

    track_id: int
    path: str
    score: float
    hamming: int
    offset_s: float
    rate: float
    votes: int
    tags: tuple[TagScore, ...]


@dataclass(frozen=True)
class SearchResult:
    """chroma: how well the clip's harmony follows the first result's at the voted alignment
    (``musichash.features.chroma.harmony_agreement``, in [-1, 1]); None without results or without the track's chroma."""

    query: str
    match: bool
    results: tuple[SearchHit, ...]
    duration_s: float
    error: str | None = None  # the clip could not be used (the CLI reports it)
    chroma: float | None = None
    note: str | None = None  # how the clip was searched, when not whole (a long file: its first minute)


@dataclass(frozen=True)
class GroupMember:
    track_id: int
    path: str
    span_s: tuple[float, float]  # the part of this file that matches the others


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are the same recording. score: weakest link that joined the group."""

    tracks: tuple[GroupMember, ...]
    score: float


@dataclass(frozen=True)
class SimilarHit:
    track_id: int
    path: str
    score: float  # 1 - hamming / bits of the track codes
    hamming: int
    tags: tuple[TagScore, ...]


@dataclass(frozen=True)
class SimilarResult:
    seed: str
    results: tuple[SimilarHit, ...]
    excluded: tuple[str, ...] = ()  # duplicates of the seeds left out


def _tags(tags: tuple[TagScore, ...]) -> list[dict]:
    return [{"tag": t.tag, "p": round(t.p, 4)} for t in tags]


def search_json(r: SearchResult) -> dict:
    out = {
        "query": r.query,
        "match": r.match,
        "results": [
            {
                "path": h.path,
                "track_id": h.track_id,
                "score": round(h.score, 4),
                "hamming": h.hamming,
                "offset_s": round(h.offset_s, 2),
                "rate": round(h.rate, 4),
                "tags": _tags(h.tags),
            }
            for h in r.results
        ],
    }
    if r.chroma is not None:
        out["chroma"] = round(r.chroma, 4)
    if r.error is not None:
        out["error"] = r.error
    if r.note is not None:
        out["note"] = r.note
    return out


def dedup_json(groups: list[DuplicateGroup]) -> dict:
    return {
        "groups": [
            {
                "score": round(g.score, 4),
                "tracks": [
                    {"path": m.path, "track_id": m.track_id, "span_s": [round(m.span_s[0], 2), round(m.span_s[1], 2)]}
                    for m in g.tracks
                ],
            }
            for g in groups
        ]
    }


def similar_json(r: SimilarResult) -> dict:
    return {
        "seed": r.seed,
        "results": [
            {"path": h.path, "track_id": h.track_id, "score": round(h.score, 4), "hamming": h.hamming, "tags": _tags(h.tags)}
            for h in r.results
        ],
        "excluded": list(r.excluded),
    }
