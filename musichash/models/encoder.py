"""Code models: log-mel in, tags and binary codes out.

A code model is a registered ``hash`` model (see ``musichash models``): the
backbone it names runs once over the whole track (``iter_windows``), every
3 s window becomes a segment code, and the track code is the sign of the
windows' mean embedding. The head is an interim linear binarizer of the
VGG's pool5 map, or CRNNH; a CRNNH model may have two heads on the one
backbone pass, one for segment codes (finding clips) and one for the track
code (similar music), as clip finding and similarity pull codes apart.
"""

from __future__ import annotations

from collections.abc import Iterable
import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from musichash.devices import torch_device
from musichash.features import chroma
from musichash.features.audio import HOP, SAMPLE_RATE, iter_audio_blocks, iter_mel_blocks, log_mel
from musichash.features.segments import DEFAULT_SEGMENT_HOP, LEGACY_SEGMENT_HOP  # noqa: F401 (re-exported)
from musichash.models import (
    DEFAULT_CODE_MODEL,
    ModelError,
    build_backbone,
    get_spec,
    tag_names,
)
from musichash.models.binarizer import Binarizer, BinarizerError
from musichash.models.gpu import chunk_windows, exact_float32
from musichash.models.registry import missing_weights, weights_file

#: frames between the segments of a new library (each library records its own:
#: ``LibraryStore.segment_hop``; ``LEGACY_SEGMENT_HOP`` when it predates the setting)
LIBRARY_HOP = DEFAULT_SEGMENT_HOP
#: frames between the windows of a query clip shorter than ``LONG_QUERY_S``: 0.256 s, so some
#: query window lies within 0.128 s of every library segment start
QUERY_HOP = 16
#: clips at least this long are queried with windows every ``LONG_QUERY_HOP`` frames (0.512 s):
#: half the windows to encode, search and vote on, about 5 ms of a 10 s query at 100k tracks.
#: 10 s top-1 at 100k tracks: 98.2 / 98.6 % against 97.3 / 99.1 % at QUERY_HOP (two grown libraries,
#: 220 clips); on the evaluation corpus's 17 tracks 96.1 % against 98.2 % (440 clips). 5 s clips
#: would lose 1-4 points at 100k, so they keep QUERY_HOP (benchmarks/HISTORY.md). The libraries
#: grown to 100k hold the evaluation corpus's tracks: this choice was made with its outcomes in view
LONG_QUERY_S = 8.0
LONG_QUERY_HOP = 32


def query_hop(duration_s: float) -> int:
    """Frames between the windows of a query clip this long."""
    return QUERY_HOP if duration_s < LONG_QUERY_S else LONG_QUERY_HOP
#: seconds per mel frame
FRAME_S = HOP / SAMPLE_RATE
#: seconds covered by one window (187 frames)
WINDOW_S = 3.0


@dataclass(frozen=True)
class Encoded:
    """Tags and codes of one piece of audio.

    tags: float32 [n_tags]       mean tag probabilities over the windows
    track_code: uint8 [bits/8]   sign of the mean embedding (of the track head); None when
                                 encoded with ``track=False`` (queries need only segment codes)
    codes: uint8 [n, bits/8]     one code per window
    times: float32 [n]           window starts, seconds
    relaxed: float32 [n, bits]   a CRNNH head's tanh outputs, whose signs are ``codes`` (bit set
                                 where > 0): a query's search weighs its bits by their magnitudes.
                                 None for the interim codes (their thresholds were fitted on
                                 Hamming distances alone)
    chroma: float32 [3, F, 12]   a query's ``musichash.features.chroma.clip_chroma``, for the harmony check
                                 of its match (set by ``encode_clip(..., harmony=True)``)
    """

    tags: np.ndarray
    track_code: np.ndarray | None
    codes: np.ndarray
    times: np.ndarray
    duration_s: float
    relaxed: np.ndarray | None = None
    chroma: np.ndarray | None = None
    cut: bool = False  # the audio went on past ``encode_clip``'s max_s, and only that much was encoded


@dataclass(frozen=True)
class Clip:
    """Audio already in memory: ``wave: float32 [n]`` at 16 kHz, named for the results."""

    name: str
    wave: np.ndarray


class CodeModel:
    """A registered ``hash`` model, loaded once and used for many tracks and queries."""

    def __init__(self, name: str = DEFAULT_CODE_MODEL, device: str | None = None, precision: str | None = "auto"):
        """``precision``: the backbone's convolutions (``musichash.models.registry.resolve_precision``)."""
        spec = get_spec(name)
        if spec.kind != "hash":
            raise ModelError(
                f"{name} is a {spec.kind} model, not a code model; pick a model of kind 'hash' "
                f"from `musichash models` (default {DEFAULT_CODE_MODEL})"
            )
        self.spec = spec
        self.name = name
        self.bits = int(spec.bits)
        self.device = torch_device(device)
        self.backbone = build_backbone(spec.backbone, self.device, precision)
        self.vocabulary = tag_names(get_spec(spec.backbone).vocabulary)
        #: the track code's head (similarity); ``segment_head`` makes the segment codes
        self.head = _load_head(spec, self.backbone, self.device, len(self.vocabulary), spec.weights)
        self.segment_head = self.head
        if spec.segment_weights is not None:
            self.segment_head = _load_head(spec, self.backbone, self.device, len(self.vocabulary), spec.segment_weights)
        self.features = tuple(dict.fromkeys(self.segment_head.features + self.head.features))

    @torch.inference_mode()
    def encode(
        self, mel: torch.Tensor | np.ndarray | Iterable[torch.Tensor], hop: int = LIBRARY_HOP, *, track: bool = True
    ) -> Encoded:
        """mel: float [T, 96] (or consecutive chunks of it) -> tags and codes of windows every ``hop`` frames.

        ``track=False`` leaves out the track code, and with it a separate track head's work.
        """
        if isinstance(mel, np.ndarray):
            mel = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
        n_frames = 0

        def counted(chunks):
            nonlocal n_frames
            for c in [chunks] if isinstance(chunks, torch.Tensor) else chunks:
                c = torch.as_tensor(c).to(self.device)
                n_frames += c.shape[0]
                yield c

        split = track and self.segment_head is not self.head
        starts, probs, seg, trk = [], [], [], []
        with exact_float32(self.device):
            chunk = chunk_windows(self.device, hop)
            for wb in self.backbone.iter_windows(counted(mel), hop, chunk_windows=chunk, features=self.features):
                starts.append(wb.starts.numpy())
                probs.append(torch.sigmoid(wb.logits).double().sum(0).cpu().numpy())
                seg.append(self.segment_head(wb.features))
                if split:
                    trk.append(self.head(wb.features))
        x = np.concatenate(seg)  # float [n, bits], before the sign
        t = np.concatenate(trk) if split else x
        # T = 1 + n_samples // HOP frames for a centred STFT
        duration = max(n_frames - 1, 0) * FRAME_S
        return Encoded(
            tags=(np.sum(probs, axis=0) / len(x)).astype(np.float32),
            # the sign of the mean embedding (for a linear binariser, the code of the mean feature)
            track_code=np.packbits(t.mean(axis=0) > 0) if track else None,
            codes=np.packbits(x > 0, axis=1),
            times=(np.concatenate(starts) * FRAME_S).astype(np.float32),
            duration_s=float(duration),
            relaxed=x.astype(np.float32, copy=False) if isinstance(self.segment_head, _CRNNHHead) else None,
        )


class _BinarizerHead:
    """Interim codes: a fitted linear map of one backbone feature."""

    def __init__(self, binarizer: Binarizer, feature: str):
        self.binarizer, self.features = binarizer, (feature,)

    def __call__(self, feats: dict[str, torch.Tensor]) -> np.ndarray:
        return self.binarizer.project(feats[self.features[0]].flatten(1).float().cpu().numpy())


class _CRNNHHead:
    """CRNNH: the pyramid of the backbone's pooled maps through the LSTM hash head.

    The backbone hands over each map already resized to CRNNH's grid
    (``"pool1@8x4"``, ...), read from the track's maps without cutting the windows out.
    """

    def __init__(self, model):
        from musichash.models.crnnh import grid_features

        self.model, self.keys = model, grid_features(model.grid, model.layers)
        self.features = tuple(self.keys.values())

    def __call__(self, feats: dict[str, torch.Tensor]) -> np.ndarray:
        return self.model({name: feats[key] for name, key in self.keys.items()}).relaxed.float().cpu().numpy()


def _load_head(spec, backbone, device, n_tags: int, weights: str | None):
    if spec.arch == "binarizer":
        return _BinarizerHead(_load_binarizer(spec, backbone), spec.feature)
    if spec.arch == "crnnh":
        from musichash.models.crnnh import CRNNH, load_checkpoint

        if weights is None:  # test config: seeded random head
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = CRNNH(spec.bits, n_tags, **spec.config.get("crnnh", {}))
        elif Path(weights).is_absolute():  # a checkpoint named by its path
            try:
                model = load_checkpoint(weights)
            except ValueError as e:
                raise ModelError(str(e)) from None
        else:
            path = weights_file(weights)
            if not path.is_file():
                raise missing_weights(spec, weights)
            model = load_checkpoint(path)
        if model.bits != spec.bits:
            raise ModelError(f"{weights} holds a {model.bits}-bit CRNNH head, {spec.name} needs {spec.bits}")
        model = model.eval().to(device)
        if model.branch is not None:  # fine-tuned blocks 4-5 (``musichash train --tune-backbone``) run in the backbone's pass
            if getattr(backbone, "branch", None) is not None or not hasattr(backbone, "attach_branch"):
                raise ModelError(f"{weights}: a head with fine-tuned VGG blocks needs a VGG backbone without another branch")
            try:
                backbone.attach_branch(model.branch)
            except ValueError as e:
                raise ModelError(f"{weights}: {e}") from None
        return _CRNNHHead(model)
    raise ModelError(f"code model {spec.name}: unknown architecture {spec.arch!r}")


def _load_binarizer(spec, backbone) -> Binarizer:
    if spec.weights is None:
        return _random_projection(spec, backbone)
    path = weights_file(spec.weights)
    if not path.is_file():
        raise missing_weights(spec, spec.weights)
    try:
        b = Binarizer.load(path)
    except BinarizerError as e:
        raise ModelError(f"{spec.name}: {e}") from e
    if b.bits != spec.bits:
        raise ModelError(f"{spec.weights} holds a {b.bits}-bit binarizer, {spec.name} needs {spec.bits}")
    return b


def _random_projection(spec, backbone) -> Binarizer:
    """Seeded Gaussian projection (test configs), centred and scaled on seeded noise windows."""
    dev = next(backbone.parameters()).device
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 187, 96, generator=g).to(dev)
    with torch.inference_mode(), exact_float32(dev):
        x = backbone(noise).features[spec.feature].flatten(1).double().cpu().numpy()
    rng = np.random.default_rng(0)
    return Binarizer(
        kind="lsh",
        bits=int(spec.bits),
        mean=x.mean(axis=0).astype(np.float32),
        scale=np.maximum(x.std(axis=0), 1e-6).astype(np.float32),
        components=rng.standard_normal((x.shape[1], int(spec.bits))).astype(np.float32),
        rotation=np.eye(int(spec.bits), dtype=np.float32),
        feature=spec.feature,
    )


def encode_clip(
    model: CodeModel,
    clip: str | os.PathLike | Clip,
    hop: int | None = None,
    *,
    track: bool = True,
    harmony: bool = False,
    max_s: float | None = None,
) -> Encoded:
    """Codes of a file or an in-memory clip, windows every ``hop`` frames.

    ``hop=None``: a query's (``query_hop`` of the clip's length); ``track=False``: no track code;
    ``harmony=True``: with the clip's chroma (``Encoded.chroma``); ``max_s``: only the first
    ``max_s`` seconds (``Encoded.cut`` says whether there was more). A file that cannot be decoded
    raises ``features.audio.AudioError``.
    """
    if isinstance(clip, Clip):
        wave = clip.wave if max_s is None else clip.wave[: round(max_s * SAMPLE_RATE)]
        hop = query_hop(len(wave) / SAMPLE_RATE) if hop is None else hop
        enc = model.encode(log_mel(wave), hop, track=track)
        enc = replace(enc, cut=len(wave) < len(clip.wave))
        return replace(enc, chroma=chroma.clip_chroma([wave])) if harmony else enc
    cut = []
    waves = iter_audio_blocks(clip)
    if max_s is not None:
        waves = _first_seconds(waves, max_s, cut)
    if hop is None:
        # blocks are a minute long but for the last: the first tells whether the clip is long
        head = next(waves, None)
        hop = query_hop(0.0 if head is None else len(head) / SAMPLE_RATE)
        waves = itertools.chain([] if head is None else [head], waves)
    cc = chroma.ClipChroma()
    waves = cc.tap(waves) if harmony else waves
    enc = model.encode((torch.from_numpy(c) for c in iter_mel_blocks(waves)), hop, track=track)
    enc = replace(enc, cut=bool(cut))
    return replace(enc, chroma=cc.frames()) if harmony else enc


def _first_seconds(blocks, max_s: float, cut: list) -> Iterable[np.ndarray]:
    """The first ``max_s`` seconds of 16 kHz blocks; appends True to ``cut`` when more audio followed."""
    left = round(max_s * SAMPLE_RATE)
    for x in blocks:
        if left <= 0:
            cut.append(True)
            blocks.close()
            return
        yield x[:left]
        if len(x) > left:
            cut.append(True)
            blocks.close()
            return
        left -= len(x)
