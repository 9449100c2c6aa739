"""A code model's decision thresholds, resolved once from the model into one typed record.

Where they come from, first that exists:

1. the ``thresholds`` record in the model's JSON (the segment head's for CRNNH models, a trained
   checkpoint's own), written by ``musichash.search.calibrate.write_thresholds`` from a
   calibration set, with ``source`` saying which. A library whose segments lie at another hop
   than the record's (``segment_hop``) reads ``thresholds_by_hop[hop]`` when there is one: a
   denser library gives every clip more close hits, so its scores run higher, in and out of
   library;
2. the registry's ``config`` (the interim models' match threshold, and test configs);
3. the defaults below, which no calibration set chose: ``source`` is None and ``musichash
   models`` says the model is not calibrated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

#: the match threshold of a model no calibration set fitted. From the seeded synthetic model of
#: the vote (64-bit codes, random neighbours at 14..26 bits, true hits at 2..12 bits): the best
#: random-only score stays below 0.12, and a clip whose true track is hit by half its windows
#: scores at least 0.195; 0.15 sits between the two. A model fitted on real music replaces it
DEFAULT_MATCH_THRESHOLD = 0.15
#: a pair of tracks is one recording when this fraction of one track's windows line up with the
#: other at one offset (and rate): the best pair F1 (0.91) on the fit corpus's dedup set with the
#: interim codes (benchmarks/HISTORY.md)
DEFAULT_DEDUP_THRESHOLD = 0.2


@dataclass(frozen=True)
class Thresholds:
    """match: the first track's score must exceed it; chroma: the clip's harmony agreement with that
    track must exceed it (None or -1: no harmony check); dedup: the coverage two tracks need to be one
    recording; source: what they were fitted on (None: defaults, not calibrated); target_tnr: the share
    of out-of-library clips the fit rejects.

    by_length: ``(up_to_s, match, chroma)`` rows, shortest first: a clip of at most ``up_to_s`` seconds
    is decided by that row's thresholds (a short clip's score spreads wider, out of library too), a
    longer one by ``match`` and ``chroma`` (``for_length``).
    """

    match: float = DEFAULT_MATCH_THRESHOLD
    chroma: float | None = None
    dedup: float = DEFAULT_DEDUP_THRESHOLD
    source: str | None = None
    target_tnr: float | None = None
    by_length: tuple[tuple[float, float, float | None], ...] = ()
    #: frames between the segments of the library they were fitted on (None: not recorded)
    segment_hop: int | None = None

    def __post_init__(self) -> None:
        rows = tuple(tuple(r) for r in self.by_length)
        if [r[0] for r in rows] != sorted(r[0] for r in rows):
            raise ValueError("Thresholds.by_length rows must be sorted by their length")
        object.__setattr__(self, "by_length", rows)

    @property
    def harmony_check(self) -> bool:
        return self.chroma is not None and self.chroma > -1

    def for_length(self, seconds: float) -> Thresholds:
        """The thresholds that decide a clip of ``seconds``: its length's row, else these."""
        for up_to, match, chroma in self.by_length:
            if seconds <= up_to:
                return replace(self, match=match, chroma=chroma, by_length=())
        return replace(self, by_length=()) if self.by_length else self

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.by_length:
            d["by_length"] = [list(r) for r in self.by_length]
        else:
            d.pop("by_length", None)
        return d

    @staticmethod
    @lru_cache(maxsize=64)
    def of(model: str, segment_hop: int | None = None) -> Thresholds:
        """The thresholds of a code model (registered name or checkpoint path) for a library with
        segments every ``segment_hop`` frames (None: the model's main record)."""
        from musichash.models.registry import get_spec

        spec = get_spec(model)
        t = Thresholds()
        path = thresholds_file(spec)
        if path is not None and path.is_file():
            meta = json.loads(path.read_text())
            stored = meta.get("thresholds")
            other = meta.get("thresholds_by_hop", {}).get(str(segment_hop)) if segment_hop is not None else None
            if other and (not stored or stored.get("segment_hop") != segment_hop):
                stored = other
            if stored:
                t = Thresholds(**stored)
        keys = {"match_threshold": "match", "chroma_threshold": "chroma", "dedup_threshold": "dedup",
                "thresholds_source": "source"}
        override = {field: spec.config[key] for key, field in keys.items() if key in spec.config}
        return replace(t, **override) if override else t

    def describe(self) -> str:
        """One line for ``musichash models``."""
        if self.source is None:
            return "thresholds: defaults, not calibrated"
        lengths = f" (by clip length: up to {', '.join(f'{r[0]:g}' for r in self.by_length)} s, and longer)" \
            if self.by_length else ""
        return f"thresholds calibrated on {self.source}{lengths}"


def thresholds_file(spec) -> Path | None:
    """The JSON a code model's thresholds live in: its segment head's (or only head's) JSON."""
    from musichash.models.registry import weights_file

    if spec.kind != "hash" or spec.arch != "crnnh":
        return None
    weights = spec.segment_weights or spec.weights
    return None if weights is None else weights_file(weights).with_suffix(".json")
