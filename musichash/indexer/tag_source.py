"""Which network tags a library's tracks: the code model's tag head (the default), or a trained tagger.

``musichash index --tagger NAME`` (a shipped tagger such as ``fcn4_rendered``, or a
checkpoint of ``musichash train-tagger``) records the tagger in the library's
``meta`` (``tagger``, and ``tagger_digest`` of its weights), so every later
index run tags new tracks with it and every result names its labels. A
library's tags all come from one network: the choice is made when the library
has no tracks yet, and cannot be changed after (index into a new library).

A tagger's tags for a track are the mean over its 3 s windows (non-overlapping,
the last aligned to the end, as ``evaluate-tagger`` scores files) of sigmoid
(tags) or softmax (genres) outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from musichash.indexer.records import LibraryError, _Meta, _Track
from musichash.models.backbones import WINDOW_FRAMES
from musichash.models.explain import window_starts
from musichash.models.taggers import load_tagger, shipped_taggers, sidecar

TAGGER_KEY, DIGEST_KEY = "tagger", "tagger_digest"


class TaggerTags:
    """A loaded tagger: ``names`` and ``__call__(mel float [T, 96]) -> float32 [len(names)]``."""

    def __init__(self, name: str, device: str | torch.device = "cpu"):
        self.name = name
        self.ckpt = load_tagger(name, device)
        self.names = self.ckpt.names
        self.device = device

    @torch.inference_mode()
    def __call__(self, mel: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel, dtype=np.float32)
        padded = np.pad(mel, ((0, max(0, WINDOW_FRAMES - len(mel))), (0, 0)))
        x = torch.from_numpy(np.stack([padded[s : s + WINDOW_FRAMES] for s in window_starts(len(padded))]))
        logits = self.ckpt.model(x.to(self.device)).float()
        p = torch.sigmoid(logits) if self.ckpt.multilabel else torch.softmax(logits, dim=1)
        return p.mean(dim=0).cpu().numpy().astype(np.float32)


def recorded_name(tagger: str) -> str:
    """A shipped tagger by its name, a checkpoint by its absolute path (as code models are)."""
    if tagger in shipped_taggers() and not Path(tagger).exists():
        return tagger
    return str(Path(tagger).expanduser().absolute())


def weights_path(tagger: str) -> Path:
    """The ``.safetensors`` of a recorded tagger (its ``.json`` lies beside it)."""
    from musichash.models.registry import weights_file

    if tagger in shipped_taggers() and not Path(tagger).exists():
        return weights_file(f"tagger_{tagger}.safetensors")
    return Path(tagger)


def names(tagger: str) -> tuple[str, ...]:
    """A recorded tagger's labels, read from its JSON (no weights loaded)."""
    return tuple(json.loads(sidecar(weights_path(tagger)).read_text())["names"])


def weights_digest(tagger: str) -> str:
    return hashlib.sha256(weights_path(tagger).read_bytes()).hexdigest()[:16]


def stored(engine) -> tuple[str | None, str | None]:
    """The library's tagger and its weights' digest (None, None: the code model's tag head)."""
    with Session(engine) as s:
        rows = {m.key: m.value for m in s.scalars(select(_Meta).where(_Meta.key.in_((TAGGER_KEY, DIGEST_KEY))))}
    return rows.get(TAGGER_KEY), rows.get(DIGEST_KEY)


def check(tagger: str) -> None:
    """Refuse a missing or broken checkpoint before the library is opened (or made)."""
    load_tagger(recorded_name(tagger))


def choose(engine, folder: Path, tagger: str) -> str:
    """Record ``tagger`` for a library without tracks, or check it is the one recorded; returns the recorded name."""
    name = recorded_name(tagger)
    current, _ = stored(engine)
    if current == name:
        return name
    if current is not None:
        raise LibraryError(f"{folder}: its tags come from the tagger {current}, not {tagger}; leave out --tagger to keep "
                           f"using it, or give another --library for {tagger}")
    with Session(engine) as s, s.begin():
        n = s.query(_Track).count()
        if n:
            raise LibraryError(f"{folder}: its {n} tracks were tagged by the code model's tag head; a library's tags come "
                               f"from one network: index into a new --library to tag with {tagger}")
        s.add_all([_Meta(key=TAGGER_KEY, value=name), _Meta(key=DIGEST_KEY, value=weights_digest(name))])
    return name


def load(engine, folder: Path, device: str | torch.device = "cpu") -> TaggerTags | None:
    """The library's tagger, loaded (None: the code model's tag head); refused if its weights changed since."""
    name, digest = stored(engine)
    if name is None:
        return None
    try:
        current = weights_digest(name)
    except OSError:
        current = None
    if current != digest:
        what = "is gone" if current is None else f"has other weights (digest {current}) than when it tagged this library ({digest})"
        raise LibraryError(f"{folder}: its tagger {name} {what}; restore it, or index the music again into a new --library")
    return TaggerTags(name, device)
