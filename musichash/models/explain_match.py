"""Why a clip matched a track: attribution over the track's mel for the segment codes that matched.

``explain FILE --match CLIP`` explains the segments of FILE the search aligned
with the clip: each 3 s window of FILE that the match's offset puts over the
clip gets as its target how far its **relaxed** segment code agrees with the
aligned clip window's code, ``mean(z * sign(c))`` (z: the CRNNH segment head's
pre-activations, whose sign is the code: a relaxed, unsaturated form of the
bits the search's Hamming vote counts). Windows of FILE outside the match have
no target and stay dark: that is where the match found nothing. The code
model's backbone and segment head run as one differentiable network
(``CodeNet``), so ``models.explain``'s Grad-CAM (on the VGG's pool3 map) and
occlusion apply unchanged.

Taking the best-agreeing clip window for every window of FILE instead of the
aligned one was tried first: on generated songs, windows of another song agree
with some clip window about as well as the matched ones (0.41-0.48 against
0.44-0.52), and the map did not single out the matched part.

Interim (binarizer) code models have no relaxed codes to differentiate
through that were trained for clips, and are refused.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from musichash.errors import MusichashError
from musichash.features.audio import HOP, SAMPLE_RATE
from musichash.models.backbones import WINDOW_FRAMES
from musichash.models.crnnh import resize_maps
from musichash.models.encoder import CodeModel, _CRNNHHead
from musichash.models.explain import Target

FRAME_S = HOP / SAMPLE_RATE
WINDOW_S = WINDOW_FRAMES * FRAME_S
#: occlusion patch (frames, bands) for a code model: a VGG pass costs ~10x a tagger's, so patches 4x the
#: tagger's area (0.4 s x 24 bands) keep a clip's explanation to about a minute on a CPU
MATCH_PATCH = (24, 24)

#: the VGG block whose map Grad-CAM reads: pool3 is 23 x 12 a window (pool4 11 x 6 is coarser than
#: a clip's evidence, pool1-2 are edges and onsets more than sound)
CAM_BLOCK = 2


class ExplainError(MusichashError):
    """An explanation that cannot be made as asked."""


class CodeNet(nn.Module):
    """A code model's backbone and segment head as one network: ``x: float [B, 187, 96]`` -> the segment head's
    pre-activations ``[B, bits]`` (the relaxed code is their tanh, the code their sign)."""

    def __init__(self, model: CodeModel):
        super().__init__()
        head = model.segment_head
        if not isinstance(head, _CRNNHHead):
            raise ExplainError(
                f"{model.name} makes its codes with a fitted linear binarizer, not CRNNH: it has no trained relaxed "
                f"codes to explain; explain --match needs a library of a CRNNH code model (crnnh64, the default)"
            )
        if not hasattr(model.backbone, "bns"):
            raise ExplainError(f"{model.name}: explain --match reads the VGG backbone's maps, and its backbone is not a VGG")
        self.backbone, self.head = model.backbone, head.model
        self.layers = tuple(head.model.layers)

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone.bns[CAM_BLOCK]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cuDNN's LSTM has no backward pass in eval mode; the plain kernels have, and give the same codes
        with torch.backends.cudnn.flags(enabled=False):
            maps = self.backbone(x).features
            resized = resize_maps({name: maps[name] for name in self.layers}, self.head.grid, self.head.channels, self.layers)
            _, (h, _) = self.head.lstm(self.head.norm(self.head.steps(resized)))
            return self.head.hash(h[-1])  # CRNNH.forward_resized, but before its tanh: it saturates, and with it the gradient


def clip_signs(packed: np.ndarray, bits: int) -> torch.Tensor:
    """Packed segment codes ``uint8 [n, bits / 8]`` -> ``float [n, bits]`` of +-1."""
    b = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1)[:, :bits].astype(np.float32)
    return torch.from_numpy(2 * b - 1)


def agreement(signs: torch.Tensor) -> Target:
    """How far each window's pre-activations agree with one clip code's signs: ``mean(z * sign(c))``."""

    def target(z: torch.Tensor) -> torch.Tensor:
        return (z * signs.to(z.device, z.dtype)).mean(dim=1)

    return target


def aligned_targets(signs: torch.Tensor, clip_times: np.ndarray, offset_s: float, start_s: float):
    """Start frame of a window of the explained part -> the agreement with the clip window the match aligned
    with it (the search's ``offset_s``), or None where no clip window lies within half a window of it."""

    def target_at(frame: int) -> Target | None:
        u = start_s + frame * FRAME_S - offset_s  # where this window sits in the clip
        j = int(np.argmin(np.abs(clip_times - u)))
        return agreement(signs[j]) if abs(float(clip_times[j]) - u) <= WINDOW_S / 2 else None

    return target_at
