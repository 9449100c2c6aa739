"""Tag audio files with a pretrained backbone: decode, mel, windows, mean probabilities."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musichash.devices import torch_device
from musichash.features.audio import (
    HOP,
    SAMPLE_RATE,
    iter_audio_blocks,
    iter_mel_blocks,
)
from musichash.models import DEFAULT_TAGGER, build_backbone, get_spec, tag_names

#: frames between tagging windows: 2.816 s, the multiple of the VGG's 16-frame
#: stride closest to musicnn's own non-overlapping 3 s patches
TAG_HOP = 176


@dataclass(frozen=True)
class TagScore:
    tag: str
    p: float


@dataclass(frozen=True)
class TagResult:
    """Tags of one file. probs: float [n_tags], mean over ``n_windows`` 3 s windows."""

    path: str
    probs: np.ndarray
    vocabulary: tuple[str, ...]
    n_windows: int
    duration_s: float

    def top(self, k: int | None = None) -> list[TagScore]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [TagScore(self.vocabulary[i], float(self.probs[i])) for i in order]


class Tagger:
    """A backbone loaded once and reused for many files (the mel front end is cached per device)."""

    def __init__(self, model: str = DEFAULT_TAGGER, device: str | None = None, hop: int = TAG_HOP):
        self.spec = get_spec(model)
        self.device = torch_device(device)
        self.backbone = build_backbone(model, self.device)
        self.vocabulary = tag_names(self.spec.vocabulary)
        self.hop = hop

    @torch.inference_mode()
    def tag_mel(self, mel: torch.Tensor | Iterable[torch.Tensor]) -> tuple[np.ndarray, int]:
        """Mean tag probabilities over windows. mel: float [T, 96] or chunks of it -> (probs [n_tags], n_windows)."""
        total, n = None, 0
        for batch in self.backbone.iter_windows(mel, self.hop):
            p = torch.sigmoid(batch.logits).sum(0)
            total = p if total is None else total + p
            n += batch.logits.shape[0]
        return (total / n).double().cpu().numpy(), n

    def tag_file(self, path: str | Path, progress: Callable[[float], None] | None = None) -> TagResult:
        """Tag one file, streaming it in blocks. ``progress`` gets seconds of audio as they are decoded."""
        frames = 0

        def mel_chunks():
            nonlocal frames
            blocks = iter_audio_blocks(path)
            for chunk in iter_mel_blocks(_report(blocks, progress), device=self.device):
                frames += chunk.shape[0]
                yield torch.from_numpy(chunk).to(self.device)

        probs, n = self.tag_mel(mel_chunks())
        # T = 1 + n_samples // HOP frames for a centred STFT
        duration = max(frames - 1, 0) * HOP / SAMPLE_RATE
        return TagResult(str(path), probs, self.vocabulary, n, duration)


def _report(blocks: Iterable[np.ndarray], progress: Callable[[float], None] | None) -> Iterable[np.ndarray]:
    for block in blocks:
        if progress is not None:
            progress(len(block) / SAMPLE_RATE)
        yield block
