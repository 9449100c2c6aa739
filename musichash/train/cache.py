"""The feature cache: backbone pyramids of clean windows and of augmented views, computed once, in HDF5.

Each file is cut into pieces of ``piece_s`` seconds (its first
``max_minutes``); windows of 3 s start every ``hop`` frames inside a piece.
Each piece also gets ``views`` degraded copies (``augment.random_view``:
noise 0-20 dB, low-bitrate re-encoding, gain, EQ or telephone band, tempo
±5 %, pitch ±1 semitone), and every clean window is paired with the window
of each view that holds the same music (start scaled by the tempo change,
plus up to ``jitter`` frames of offset, as a query window sits off the
library grid; the offset is rounded to the backbone's stride where windows
are cut, so only identification views, whose audio is also shifted by part of
the stride, lie off the grid). Identification views (``view_kind``) draw
issue 22's query conditions instead (``augment.identification_view``), and
the last ``short_views`` of them are 2 s clips tiled to a window. Windows go
through the frozen backbone (cut from the conv maps of the whole piece, as
the engine does; short views each alone) and every channel of every
layer is stored resized to the CRNNH grid (``float16 [n, layers, C, H*W]``),
so epochs never touch audio or the CNN, and the channel selection is made
at training time.

The file is written one source file at a time (group ``files/<i>``, flushed),
so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from musichash.features.audio import (
    HOP,
    N_MELS,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    log_mel,
)
from musichash.models import build_backbone
from musichash.models.backbones import (
    BRANCH_CONTEXT,
    BRANCH_FROM,
    VGG,
    WINDOW_FRAMES,
    repeat_pad,
)
from musichash.models.crnnh import LAYERS, grid_features, resize_maps
from musichash.train import augment
from musichash.train.data import Dataset


@dataclass(frozen=True)
class CacheConfig:
    backbone: str = "MTT_vgg"
    grid: tuple[int, int] = (8, 4)
    piece_s: float = 12.0
    hop: int = 80
    views: int = 2
    max_minutes: float = 3.0
    jitter: int = 8
    seed: int = 0
    #: "piece": windows cut from the conv maps of the whole piece, as the engine cuts them from a
    #: track's (starts on the VGG's 16-frame grid); "patch": each window alone, zero-padded
    context: str = "piece"
    #: how views are drawn (``augment.VIEW_KINDS``): "random" (``augment.random_view``, the shipped
    #: heads' caches) or "identification" (``augment.identification_view``: issue 22's conditions,
    #: other music underneath taken from the file cached before)
    view_kind: str = "random"
    #: the last ``short_views`` views of each window are short clips (``SHORT_CLIP_FRAMES``) from
    #: where the view's window starts, tiled to a window as a short query clip is encoded
    short_views: int = 0
    #: also keep each window's ``pool3`` with ``BRANCH_CONTEXT`` frames each side (``clean_ctx``,
    #: ``views_ctx``, float16 [.., C, 27, F]): what a fine-tuned copy of blocks 4 and 5 reads
    #: (``musichash train --tune-backbone``); about three times the cache
    tune_backbone: bool = False

    def __post_init__(self):
        if self.view_kind not in augment.VIEW_KINDS:
            raise ValueError(f"view_kind must be one of {', '.join(augment.VIEW_KINDS)}, got {self.view_kind!r}")
        if not 0 <= self.short_views <= self.views:
            raise ValueError(f"short_views must be in 0..views ({self.views}), got {self.short_views}")

    def key(self) -> str:
        d = asdict(self)
        for name, default in (("view_kind", "random"), ("short_views", 0), ("tune_backbone", False)):
            if d[name] == default:  # caches made before these settings keep their key
                del d[name]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Features:
    """clean: float16 [N, L, C, H*W]; views: float16 [N, V, L, C, H*W]; targets: float32 [N, K]; item: int32 [N] (file index).

    backbone: the registry name of the model whose maps these are. clean_ctx, views_ctx: the windows'
    ``pool3`` with margins, float16 [N, C, 27, F] and [N, V, C, 27, F] (caches built with ``tune_backbone``).
    """

    clean: np.ndarray
    views: np.ndarray
    targets: np.ndarray
    item: np.ndarray
    backbone: str = "MTT_vgg"
    clean_ctx: np.ndarray | None = None
    views_ctx: np.ndarray | None = None


def build_cache(
    dataset: Dataset,
    path: str | Path,
    cfg: CacheConfig = CacheConfig(),
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Compute (or finish computing) the cache at ``path``; returns it. Files that cannot be decoded are skipped."""
    path = Path(path)
    if _complete(path, cfg, dataset):  # read-only: runs may share a finished cache
        return path
    model = build_backbone(cfg.backbone)
    if cfg.tune_backbone and not isinstance(model, VGG):
        raise ValueError(f"tune_backbone fine-tunes VGG blocks; {cfg.backbone} is not a VGG")
    channels = backbone_channels(model)
    with h5py.File(path, "a") as h5:
        if not _same_data(h5, cfg, dataset, fresh=True):
            raise ValueError(f"{path} was built with other settings or data; delete it or use another --cache")
        h5.attrs["config_key"] = cfg.key()
        h5.attrs["config"] = json.dumps(asdict(cfg))
        h5.attrs["n_files"] = len(dataset.files)
        h5.attrs["files_key"] = files_key(dataset)
        h5.attrs["names"] = json.dumps(list(dataset.names))
        files = h5.require_group("files")
        background = None  # the music underneath identification views: the file decoded before
        for i, f in enumerate(dataset.files):
            if str(i) in files and files[str(i)].attrs.get("done", False):
                continue
            rng = np.random.default_rng([cfg.seed, i])
            try:
                wave = load_audio(f, duration_s=None)[: int(cfg.max_minutes * 60 * SAMPLE_RATE)]
            except AudioError as e:
                if progress:
                    progress(f"skipped {f}: {e.reason}")
                continue
            clean, views, probs, ctx = _file_features(model, channels, wave, cfg, rng, background)
            background = wave
            if str(i) in files:
                del files[str(i)]
            g = files.create_group(str(i))
            g.create_dataset("clean", data=clean)
            g.create_dataset("views", data=views)
            g.create_dataset("tag_probs", data=probs)
            if ctx is not None:  # a file without windows has none (load_cache reads the groups that have them)
                g.create_dataset("clean_ctx", data=ctx[0])
                g.create_dataset("views_ctx", data=ctx[1])
            g.attrs["done"] = True
            h5.flush()
            if progress:
                progress(f"{f.name}: {len(clean)} windows")
    return path


def files_key(dataset: Dataset) -> str:
    """The files in cache order, relative to their common folder, hashed: a cache holds windows by file index."""
    root = Path(os.path.commonpath([str(f) for f in dataset.files])) if dataset.files else Path()
    root = root.parent if len(dataset.files) == 1 else root
    names = [str(Path(f).relative_to(root)) for f in dataset.files]
    return hashlib.sha1(json.dumps(names).encode()).hexdigest()[:12]


def _same_data(h5: h5py.File, cfg: CacheConfig, dataset: Dataset, *, fresh: bool = False) -> bool:
    """Settings and files match (``fresh``: an empty file matches too; a cache from before files_key: by count)."""
    attrs = h5.attrs
    if "config_key" not in attrs:
        return fresh
    key = files_key(dataset)
    return attrs["config_key"] == cfg.key() and attrs.get("n_files") == len(dataset.files) and attrs.get("files_key", key) == key


def _complete(path: Path, cfg: CacheConfig, dataset: Dataset) -> bool:
    if not path.is_file():
        return False
    with h5py.File(path, "r") as h5:
        if not _same_data(h5, cfg, dataset):
            return False  # build_cache says why
        files = h5.get("files", {})
        return all(str(i) in files and files[str(i)].attrs.get("done", False) for i in range(len(dataset.files)))


def load_cache(path: str | Path, dataset: Dataset) -> Features:
    """All cached windows; targets from the dataset's labels, or the tagger's probabilities when unlabelled."""
    clean, views, targets, item, clean_ctx, views_ctx = [], [], [], [], [], []
    with h5py.File(path, "r") as h5:
        backbone = json.loads(h5.attrs["config"])["backbone"]
        for name, g in sorted(h5["files"].items(), key=lambda kv: int(kv[0])):
            if not g.attrs.get("done", False):
                continue
            i = int(name)
            c = g["clean"][()]
            clean.append(c)
            views.append(g["views"][()])
            if "clean_ctx" in g:
                clean_ctx.append(g["clean_ctx"][()])
                views_ctx.append(g["views_ctx"][()])
            t = g["tag_probs"][()] if dataset.targets is None else np.repeat(dataset.targets[i][None], len(c), axis=0)
            targets.append(t.astype(np.float32))
            item.append(np.full(len(c), i, dtype=np.int32))
    if not clean:
        raise ValueError(f"{path}: no cached windows; the training files could not be decoded")
    ctx = (np.concatenate(clean_ctx), np.concatenate(views_ctx)) if clean_ctx else (None, None)
    return Features(np.concatenate(clean), np.concatenate(views), np.concatenate(targets), np.concatenate(item), backbone, *ctx)


@torch.inference_mode()
def backbone_channels(model) -> int:
    """The most channels of any CRNNH layer of ``model`` (the cache's and the head's channel axis)."""
    out = model(torch.zeros(1, WINDOW_FRAMES, N_MELS))
    return max(out.features[name].shape[1] for name in LAYERS)


@torch.inference_mode()
def _file_features(model, channels: int, wave: np.ndarray, cfg: CacheConfig, rng: np.random.Generator,
                   background: np.ndarray | None = None):
    piece = int(cfg.piece_s * SAMPLE_RATE)
    clean, views, probs, clean_ctx, views_ctx = [], [], [], [], []
    for lo in range(0, max(len(wave) - SAMPLE_RATE * 4, 1), piece):
        x = wave[lo : lo + piece]
        if len(x) < SAMPLE_RATE * 4:
            break
        mel = log_mel(x)
        starts = list(range(0, mel.shape[0] - WINDOW_FRAMES + 1, cfg.hop))
        if not starts:
            continue
        p_clean, logits, c_ctx = _resized(model, channels, mel, starts, cfg)
        clean.append(p_clean)
        clean_ctx.append(c_ctx)
        probs.append(torch.sigmoid(logits).numpy())
        per_view, per_view_ctx = [], []
        for v in range(cfg.views):
            if cfg.view_kind == "identification":
                steps = augment.identification_view(rng, background)
            else:
                steps = augment.random_view(rng)
            rate = augment.time_scale(steps)
            y = augment.chain(*steps).apply(x, rng)
            if cfg.view_kind == "identification":
                # identification views: the view's windows lie at any offset from the clean ones, not only at
                # multiples of the backbone's stride (where the windows are cut): a query clip starts
                # anywhere, and its windows lie up to half the library's hop from the nearest segment
                shift = int(rng.integers(model.align * HOP))
                y = y[shift:]
                within = max(cfg.jitter - model.align // 2, 0)
                wanted = [s / rate - shift / HOP + rng.uniform(-within, within) for s in starts]
            else:
                wanted = [s / rate + rng.integers(-cfg.jitter, cfg.jitter + 1) for s in starts]
            vmel = log_mel(y)
            if v >= cfg.views - cfg.short_views:
                seq, v_ctx = _short_resized(model, channels, vmel, wanted, cfg)
            else:
                last = vmel.shape[0] - WINDOW_FRAMES
                vstarts = [int(np.clip(round(w), 0, max(last, 0))) for w in wanted]
                seq, _, v_ctx = _resized(model, channels, vmel, vstarts, cfg)
            per_view.append(seq)
            per_view_ctx.append(v_ctx)
        views.append(np.stack(per_view, axis=1))
        if cfg.tune_backbone:
            views_ctx.append(np.stack(per_view_ctx, axis=1))
    if not clean:
        n, c, hw = len(LAYERS), channels, cfg.grid[0] * cfg.grid[1]
        return (np.zeros((0, n, c, hw), np.float16), np.zeros((0, cfg.views, n, c, hw), np.float16),
                np.zeros((0, 50), np.float32), None)
    ctx = (np.concatenate(clean_ctx), np.concatenate(views_ctx)) if cfg.tune_backbone else None
    return np.concatenate(clean), np.concatenate(views), np.concatenate(probs), ctx


def _context(pool3: torch.Tensor, starts: list[int]) -> np.ndarray:
    """Each window's ``pool3`` frames with ``BRANCH_CONTEXT`` more on each side (zeros past the map's ends, as the
    conv pads a track's map): float16 [B, C, 23 + 2 * BRANCH_CONTEXT, F]. ``pool3``: one map [1, C, T, F] whose
    windows start at ``starts`` (mel frames, multiples of 16), or one map per window [B, C, 23, F] (starts 0)."""
    m = F.pad(pool3, (0, 0, BRANCH_CONTEXT, BRANCH_CONTEXT))
    n = VGG.LENGTHS[2] + 2 * BRANCH_CONTEXT
    stride = VGG.STRIDES[2]
    cut = [m[b if m.shape[0] > 1 else 0, :, s // stride : s // stride + n] for b, s in enumerate(starts)]
    return torch.stack(cut).numpy().astype(np.float16)


#: frames of a short view: a 2 s query clip's log-mel (``SAMPLE_RATE * 2 // HOP + 1``)
SHORT_CLIP_FRAMES = SAMPLE_RATE * 2 // HOP + 1


def _short_resized(model, channels: int, mel: np.ndarray, starts: list[float], cfg: CacheConfig) -> np.ndarray:
    """Short views: ``SHORT_CLIP_FRAMES`` from each start, alone and tiled to a window (``repeat_pad``), as the
    encoder reads a clip shorter than a window."""
    keys = grid_features(cfg.grid)
    m = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
    last = max(m.shape[0] - SHORT_CLIP_FRAMES, 0)
    clips = [repeat_pad(m[s : s + SHORT_CLIP_FRAMES]) for s in (int(np.clip(round(w), 0, last)) for w in starts)]
    maps = model.trunk(torch.stack(clips))
    out = model.head(maps, [0] * len(clips), frozenset(keys.values()))
    seq = resize_maps({name: out.features[key] for name, key in keys.items()}, tuple(cfg.grid), channels)
    ctx = _context(maps[f"pool{BRANCH_FROM}"], [0] * len(clips)) if cfg.tune_backbone else None
    return seq.numpy().astype(np.float16), ctx


def _resized(model, channels: int, mel: np.ndarray, starts: list[int], cfg: CacheConfig) -> tuple[np.ndarray, torch.Tensor]:
    keys = grid_features(cfg.grid)  # the maps come resized from the backbone, as the encoder gets them
    want = frozenset(keys.values())
    m = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
    if m.shape[0] < WINDOW_FRAMES:
        m = torch.cat([m, m.new_zeros(WINDOW_FRAMES - m.shape[0], m.shape[1])])
    if cfg.context == "piece":
        align = model.align
        last = (m.shape[0] - WINDOW_FRAMES) // align * align
        starts = [min(int(round(s / align)) * align, last) for s in starts]
        maps = model.trunk(m[None])
    else:
        maps = model.trunk(torch.stack([m[s : s + WINDOW_FRAMES] for s in starts]))
        starts = [0] * len(starts)
    out = model.head(maps, starts, want)
    seq = resize_maps({name: out.features[key] for name, key in keys.items()}, tuple(cfg.grid), channels)
    ctx = _context(maps[f"pool{BRANCH_FROM}"], starts) if cfg.tune_backbone else None
    return seq.numpy().astype(np.float16), out.logits, ctx
