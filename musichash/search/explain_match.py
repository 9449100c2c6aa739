"""``explain FILE --match CLIP``: the search for the clip, then ``models.explain_match``'s attribution over
the segments of FILE the match aligned with it (see that module for the target)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from musichash.models import get_spec
from musichash.models.encoder import Clip, CodeModel, encode_clip
from musichash.models.explain import METHODS, Explanation, explain
from musichash.models.explain_match import (
    MATCH_PATCH,
    CodeNet,
    ExplainError,
    aligned_targets,
    clip_signs,
)
from musichash.search.query import MAX_CLIP_S


@dataclass(frozen=True)
class MatchExplanation:
    """``explanation`` covers ``path`` from ``start_s``; ``score`` and ``offset_s`` are the search's for the clip."""

    explanation: Explanation
    clip: str
    track_id: int
    path: str
    score: float
    offset_s: float
    start_s: float
    clip_windows: int

    def to_dict(self) -> dict:
        return {"path": self.path, "track_id": self.track_id, "match": self.clip, "score": round(self.score, 4),
                "offset_s": round(self.offset_s, 3), "start_s": round(self.start_s, 3), "clip_windows": self.clip_windows,
                **self.explanation.to_dict()}


def explain_match(lib, file: str | os.PathLike, clip: str | os.PathLike | Clip, *, seconds: float = 30.0,
                  start_s: float | None = None, methods: tuple[str, ...] = METHODS) -> MatchExplanation:
    """Why ``lib`` (a ``Library``) finds ``clip`` (a file, or audio in memory: the service's upload) in
    ``file``, a track of it: maps over ``seconds`` of the track from ``start_s`` (None: centred on where
    the clip matched)."""
    from musichash.features.audio import AudioError, load_audio, log_mel

    folder = lib.folder
    if get_spec(lib.code_model).arch != "crnnh":
        raise ExplainError(
            f"{folder}: its codes come from {lib.code_model}, a fitted linear binarizer, not CRNNH: there are no trained "
            f"relaxed codes to explain; explain --match needs a library of a CRNNH code model (crnnh64, the default)"
        )
    track = lib.store.find_by_path(str(Path(file).expanduser().absolute()))
    if track is None or track.status != "ok":
        state = "" if track is None else f" that was indexed ({track.status})"
        raise ExplainError(f"{file}: not a track of {folder}{state}; index it first: musichash index {file} --library {folder}")
    source = clip if isinstance(clip, Clip) else Path(clip).expanduser()
    clip = clip.name if isinstance(clip, Clip) else clip
    (r,) = lib.search([source], top_k=10)
    if r.error:
        raise ExplainError(f"{clip}: {r.error}")
    best = r.results[0] if r.results else None
    if not r.match or best is None or best.track_id != track.id:
        found = "no track" if best is None else f"best {best.path}, score {best.score:.2f}"
        if not r.match:
            raise ExplainError(f"{clip}: no match in {folder} ({found}; `musichash search {clip}` says why); "
                               f"explain --match needs a clip the library finds in {file}")
        raise ExplainError(f"{clip}: matches {best.path} (score {best.score:.2f}), not {file}; "
                           f"give that file, or a clip of {file}")
    model = CodeModel(lib.code_model, lib.device, precision="float32")  # gradients in float32, whatever the library's
    net = CodeNet(model)
    enc = encode_clip(model, source, track=False, max_s=MAX_CLIP_S)  # the windows the search used
    if start_s is None:
        mid = best.offset_s + min(r.duration_s, seconds) / 2
        start_s = max(0.0, min(mid - seconds / 2, track.duration_s - seconds))
    try:
        mel = log_mel(load_audio(track.path, offset_s=start_s, duration_s=seconds), model.device)
    except AudioError as e:
        raise ExplainError(f"{file}: {e.reason}") from None
    target_at = aligned_targets(clip_signs(enc.codes, model.bits), enc.times, best.offset_s, start_s)
    e = explain(net, mel, target_at, f"match of {Path(clip).name}", methods, model.device, per_window=True,
                patch=MATCH_PATCH)
    return MatchExplanation(e, str(clip), track.id, track.path, best.score, best.offset_s, start_s, len(enc.codes))
