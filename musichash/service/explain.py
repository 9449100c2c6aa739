"""``GET /tracks/{id}/explain``: a tagger's evidence over a track's mel spectrogram, for the page.

The tagger is the library's own (``musichash index --tagger``) or a shipped one
named by ``model``: a request never names a file, so checkpoints outside the
package cannot be loaded through it. Grad-CAM is the default method: one
backward pass a window, where occlusion costs a forward pass a patch.
"""

from __future__ import annotations

import io
from functools import lru_cache

from musichash.models.explain import Explanation, explain, save_png, tag_target
from musichash.models.taggers import TaggerCheckpoint, load_tagger, shipped_taggers
from musichash.service.runtime import ServiceError


@lru_cache(maxsize=4)
def _tagger(name: str) -> TaggerCheckpoint:
    return load_tagger(name)  # on the CPU: the page explains one track at a time


def explain_track(lib, track, tag: str, model: str | None, start_s: float, seconds: float,
                  methods: tuple[str, ...]) -> tuple[Explanation, str]:
    """The explanation of ``tag`` over ``seconds`` of ``track`` from ``start_s``, and the tagger's name."""
    from musichash.features.audio import AudioError, load_audio, log_mel

    name = model or lib.tagger
    if name is None:
        raise ServiceError(f"this library's tags come from its code model's tag head, which has no map to show; "
                                  f"name a tagger: model=one of {', '.join(shipped_taggers())}")
    if name != lib.tagger and name not in shipped_taggers():
        raise ServiceError(f"model={name!r}: not this library's tagger nor a shipped one "
                                  f"({', '.join(shipped_taggers())})")
    ckpt = _tagger(name)
    if tag not in ckpt.names:
        raise ServiceError(f"tag={tag!r}: {ckpt.meta.get('arch_name', name)} ({name}) knows {', '.join(ckpt.names)}")
    try:
        mel = log_mel(load_audio(track.path, offset_s=start_s, duration_s=seconds))
    except AudioError as e:
        raise ServiceError(f"track {track.id}: {e.reason}", 409) from None
    return explain(ckpt.model, mel, tag_target(ckpt.names.index(tag), ckpt.multilabel), tag, methods), name


def png_bytes(e: Explanation, title: str, start_s: float = 0.0) -> bytes:
    buf = io.BytesIO()
    try:
        save_png(e, buf, title, start_s)
    except ImportError:
        raise ServiceError("the PNG needs matplotlib on the server: pip install 'musichash[explain]'; "
                                  "ask for format=json") from None
    return buf.getvalue()
