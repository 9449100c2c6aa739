"""The musicnn tagging CNNs (Pons & Serra, 2019) in PyTorch, inference only.

Both networks take log-mel patches ``x: float [B, 187, 96]`` (3 s at 16 kHz,
hop 256) and mirror the original TensorFlow graphs:

- TF kernels are ``[kh, kw, in, out]`` on NHWC tensors; here NCHW with
  ``H = time`` and ``W = mel band``, so weights are permuted on load.
- TF's ``'same'`` padding puts the extra row *after* for even kernels
  (pad ``(k-1)//2`` before, ``k//2`` after).
- TF max-pooling defaults to ``'valid'`` with floor rounding, as PyTorch does.
- ``tf.layers.batch_normalization`` uses ``epsilon=1e-3``.
- Dense layers after a flatten see NHWC order, so maps are permuted back
  before flattening.

Besides patch-wise ``forward`` (what the original code runs), each backbone
has ``iter_windows``: it runs the conv stack once over a whole track, in
overlapping chunks whose margins cover the receptive field, and pools 3 s
windows out of the shared maps. Away from the patch edges this equals
patch-wise inference; at the edges the track's real neighbours replace the
zero padding a lone patch sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

WINDOW_FRAMES = 187  # 3 s: librosa.time_to_frames(3, sr=16000, hop_length=256, n_fft=512) + 1
N_MELS = 96
BN_EPS = 1e-3
#: frames of windows per conv pass (~33 s); 128 VGG channels over 96 bands take ~100 MB per map at this size
CHUNK_FRAMES = 2048


@dataclass(frozen=True)
class BackboneOutput:
    """Outputs for a batch of windows.

    logits: float [B, n_tags]; features: name -> float [B, ...] (layout per backbone).
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor]


@dataclass(frozen=True)
class WindowBatch:
    """Consecutive windows of one track. starts: long [B] (frames, hop 256)."""

    starts: torch.Tensor
    logits: torch.Tensor
    features: dict[str, torch.Tensor]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def window_starts(n_frames: int, hop: int, align: int = 1) -> list[int]:
    """Start frames of the windows covering a track of ``n_frames`` frames.

    Starts are multiples of ``align``; a last window is added near the end so
    that at most ``hop`` frames of the tail go unseen. A track shorter than a
    window gets one window at 0 (the caller pads it).
    """
    if hop <= 0 or hop % align:
        raise ValueError(f"hop {hop} must be a positive multiple of {align}")
    last = n_frames - WINDOW_FRAMES
    if last <= 0:
        return [0]
    starts = list(range(0, last + 1, hop))
    tail = last - last % align
    if tail - starts[-1] >= hop // 2:
        starts.append(tail)
    return starts


def repeat_pad(mel: torch.Tensor, n_frames: int = WINDOW_FRAMES) -> torch.Tensor:
    """Tile a short spectrogram ``[T, 96]`` up to ``n_frames`` frames, as musicnn's training did."""
    if mel.shape[0] >= n_frames:
        return mel
    reps = -(-n_frames // mel.shape[0])
    return mel.repeat(reps, 1)[:n_frames]


class _Backbone(nn.Module):
    """Shared windowing logic; subclasses define the stack and the head."""

    #: time stride of the maps the windows are cut from; window starts are multiples of it
    align: int = 1
    #: frames of context each chunk carries on both sides (covers the receptive field)
    margin: int = 128
    #: dtype of the convolutions where a backbone supports another than float32 (VGG: bfloat16;
    #: set by ``build_backbone(..., precision=)``)
    compute_dtype: torch.dtype = torch.float32

    def trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Conv stack over ``x: float [B, T, 96]`` for any ``T``; maps keyed by name."""
        raise NotImplementedError

    def head(self, maps: dict[str, torch.Tensor], starts: list[int], want: frozenset[str] | None = None) -> BackboneOutput:
        """Cut one window per start (in frames relative to the maps' origin) and classify.

        ``want``: the feature maps to return (None: all); cutting maps nobody
        uses costs more than the convolutions that made them.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        """Patch-wise inference, as the original code does: ``x: float [B, 187, 96]``."""
        return self.head(self.trunk(x), [0] * x.shape[0]) if x.shape[0] else self._empty(x)

    def _empty(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(x.new_zeros(0, self.n_tags), {})

    @torch.inference_mode()
    def iter_windows(
        self,
        mel: torch.Tensor | Iterable[torch.Tensor],
        hop: int,
        *,
        chunk_windows: int | None = None,
        features: bool | Iterable[str] = False,
    ) -> Iterator[WindowBatch]:
        """Windows of one track, the conv stack run once over it in chunks.

        mel: float [T, 96], or an iterable of consecutive [t_i, 96] chunks so
        that a long track streams through in bounded memory (a track shorter
        than 187 frames is repeat-padded). hop: frames between window starts,
        a multiple of ``self.align``. Yields batches of at most
        ``chunk_windows`` consecutive windows (default: as many as fit in
        ``CHUNK_FRAMES``, which bounds the conv maps held at once to a few
        hundred MB at most); ``features`` adds the
        per-window maps: True for all, or the names wanted (large: only ask
        for what is needed). Results do not depend on how the input is chunked.
        """
        window_starts(WINDOW_FRAMES, hop, self.align)  # validates hop
        want = None if features is True else frozenset(features or ())
        if chunk_windows is None:
            chunk_windows = max(1, (CHUNK_FRAMES - WINDOW_FRAMES) // hop + 1)
        chunks = [mel] if isinstance(mel, torch.Tensor) else mel
        buf: torch.Tensor | None = None
        off = 0  # track frame of buf[0]
        next_start = 0
        for chunk in chunks:
            buf = chunk if buf is None else torch.cat([buf, chunk.to(buf.device)])
            while True:
                group = [next_start + k * hop for k in range(chunk_windows)]
                if off + buf.shape[0] < group[-1] + WINDOW_FRAMES + self.margin:
                    break
                yield self._run(buf, off, group, want)
                next_start = group[-1] + hop
                keep = max(0, next_start - self.margin)
                buf, off = buf[keep - off :], keep
        if buf is None:
            raise ValueError("empty spectrogram")
        if off == 0:
            buf = repeat_pad(buf)
        rest = [s for s in window_starts(off + buf.shape[0], hop, self.align) if s >= next_start]
        for i in range(0, len(rest), chunk_windows):
            yield self._run(buf, off, rest[i : i + chunk_windows], want)

    def _run(self, buf: torch.Tensor, off: int, group: list[int], want: frozenset[str] | None) -> WindowBatch:
        """Run the stack over the frames around ``group`` (track frames) and classify its windows."""
        lo = max(off, group[0] - self.margin)
        hi = min(off + buf.shape[0], group[-1] + WINDOW_FRAMES + self.margin)
        maps = self.trunk(buf[lo - off : hi - off].unsqueeze(0))
        out = self.head(maps, [s - lo for s in group], want)
        feats = out.features if want is None else {k: v for k, v in out.features.items() if k in want}
        return WindowBatch(torch.tensor(group), out.logits, feats)


def _parse_grid(key: str, grid: str) -> tuple[int, int]:
    h, x, w = grid.partition("x")
    if not (x and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise ValueError(f"feature {key!r}: the grid must be HxW, for example pool1@8x4")
    return int(h), int(w)


def _source(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear resampling of ``n_in`` points to ``n_out`` (corners not aligned), as ``F.interpolate``:
    output j = ``w0[j] * x[i0[j]] + w1[j] * x[i1[j]]``."""
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.long()
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = src - i0
    return i0, i1, 1 - w1, w1


def _resized(m: torch.Tensor, starts: list[int], stride: int, length: int, grid: tuple[int, int]) -> torch.Tensor:
    """Windows ``m[:, :, s // stride : s // stride + length]`` of a map ``[1 or B, C, T, F]``, each
    resized to ``grid``: float [B, C, H, W].

    Bilinear resizing is separable: the bands are resized once for the whole
    map, then each window's H output frames mix two of its frames each,
    gathered by index. Equal to resizing the cut windows up to float rounding.
    """
    h, w = grid
    m = F.interpolate(m, size=(m.shape[2], w), mode="bilinear", align_corners=False)  # bands only: [b, C, T, W]
    i0, i1, w0, w1 = _source(length, h)
    first = torch.tensor([s // stride for s in starts])[:, None]  # [B, 1]
    if m.shape[0] == 1:
        rows = m[0].transpose(0, 1)  # [T, C, W]
        a, b = rows[(first + i0).flatten()], rows[(first + i1).flatten()]  # [B*H, C, W]
        a, b = a.unflatten(0, (len(starts), h)), b.unflatten(0, (len(starts), h))  # [B, H, C, W]
    else:  # one map per window (a patch batch)
        batch = torch.arange(len(starts))[:, None]
        rows = m.transpose(1, 2)  # [B, T, C, W]
        a, b = rows[batch, first + i0], rows[batch, first + i1]
    out = w0.to(m)[:, None, None] * a + w1.to(m)[:, None, None] * b
    return out.transpose(1, 2).contiguous()  # [B, C, H, W]


def _max_pool(y: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """``F.max_pool2d(y, kernel, stride)`` (no padding, floor) as the running max of strided views of ``y``.

    Equal to it, and on the VGG's channels-last maps about twice as fast: PyTorch's CPU kernel
    also works out the argmax indices, which inference never reads (with autograd on it is used).
    """
    if y.requires_grad:
        return F.max_pool2d(y, kernel, stride)
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (y.shape[2] - kh) // sh + 1, (y.shape[3] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            view = y[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            out = view.clone() if out is None else torch.maximum(out, view, out=out)
    return out


class VGG(_Backbone):
    """musicnn's VGG-like baseline (MTT_vgg / MSD_vgg): five conv+BN+max-pool blocks.

    Feature maps (NCHW, per 187-frame window): pool1 [128, 92, 48],
    pool2 [128, 46, 24], pool3 [128, 23, 12], pool4 [128, 11, 6], pool5 [128, 2, 1].
    """

    POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)))
    STRIDES = (2, 4, 8, 16)  # time stride of pool1..pool4
    LENGTHS = (92, 46, 23, 11)  # frames of pool1..pool4 in one window
    align = 16

    def __init__(self, n_filters: int = 128, n_tags: int = 50):
        super().__init__()
        self.n_filters, self.n_tags = n_filters, n_tags
        self.branch: VGGBranch | None = None
        self.bn_in = _bn(1)
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else n_filters, n_filters, 3, padding=1) for i in range(5)
        )
        self.bns = nn.ModuleList(_bn(n_filters) for _ in range(5))
        self.dense = nn.Linear(n_filters * 2, n_tags)

    def _block(self, i: int, x: torch.Tensor, conv: nn.Conv2d | None = None, bn: nn.BatchNorm2d | None = None) -> torch.Tensor:
        """``maxpool(bn(relu(conv(x))))``, computed as ``bn(relu(sign * pool(conv'(x))))``; block ``i``'s pooling
        with its own conv and BN, or with ``conv`` and ``bn`` (a segment branch's copies, :class:`VGGBranch`).

        ReLU and BN are monotone per channel, so they commute with the max over
        a pooling window: exactly, with max-pooling where BN's scale is
        positive and min-pooling where it is negative. The min-pooled channels
        come from one max-pooling as well, of a conv ``conv'`` whose weights and
        bias are negated there (``conv'(x) = -conv(x)`` to the bit), the sign
        restored after pooling. Pooling first runs the elementwise ops on a
        quarter of the values. Tested bit-exact against the plain order in
        tests/test_models.py.

        The conv and the pooling run in ``compute_dtype``, ReLU and BN in
        float32 on the pooled map, which is what the next block and the
        features read.
        """
        kernel, stride = self.POOLS[i]
        conv = self.convs[i] if conv is None else conv
        bn = self.bns[i] if bn is None else bn
        sign = torch.where(bn.weight < 0, -1.0, 1.0)
        weight, bias = conv.weight * sign[:, None, None, None], conv.bias * sign
        conv_stride = (1, 1)
        if kernel[1] == 1 and stride[1] > 1:
            # pool1 keeps every other band and looks at no neighbours across bands: only
            # compute the conv outputs it keeps (a strided conv gives exactly those)
            conv_stride, stride = (1, stride[1]), (stride[0], 1)
        dt = self.compute_dtype
        y = F.conv2d(x.to(dt), weight.to(dt), bias.to(dt), stride=conv_stride, padding=conv.padding)
        p = _max_pool(y, kernel, stride).float().mul_(sign[:, None, None])
        return bn(F.relu_(p))

    def trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bn_in(x.unsqueeze(1))
        if h.is_contiguous():
            # One channel: the same memory read as NHWC. Strided so, the first conv takes oneDNN's
            # channels-last path and hands NHWC maps on (as NCHW, 3-6x slower, with reorders after)
            h = h.as_strided(h.shape, (h.shape[2] * h.shape[3], 1, h.shape[3], 1))
        maps = {}
        for i in range(4):  # pool5 is taken per window, in ``head``
            h = self._block(i, h)
            maps[f"pool{i + 1}"] = h
        if self.branch is not None:
            b = self.branch
            maps["seg_pool4"] = self._block(3, maps[f"pool{BRANCH_FROM}"], b.convs[0], b.bns[0])
        return maps

    def attach_branch(self, branch: VGGBranch | None) -> None:
        """Run ``branch`` (fine-tuned copies of blocks 4 and 5 for segment codes) beside blocks 4 and 5.

        It reads the shared ``pool3``; its maps are ``seg_pool4`` and ``seg_pool5`` (also resized:
        ``"seg_pool4@8x4"``). The tagger's own blocks and logits are untouched.
        """
        if branch is not None and branch.convs[0].in_channels != self.n_filters:
            raise ValueError(f"the branch has {branch.convs[0].in_channels} channels, the VGG {self.n_filters}")
        if branch is not None:
            branch = branch.to(next(self.parameters()).device).to(memory_format=torch.channels_last).eval()
        self.branch = branch

    def head(self, maps: dict[str, torch.Tensor], starts: list[int], want: frozenset[str] | None = None) -> BackboneOutput:
        """Besides the maps by name, ``want`` may ask for ``"poolN@HxW"``: the window's map resized
        bilinearly (corners not aligned) to ``H x W``, as ``F.interpolate`` would resize the cut map,
        but read straight from the track's maps: the per-window crops of ``pool1`` alone are 2.3 MB
        each, and cutting and resizing them cost more than the convolutions (see ``_resized``)."""
        grids = {}
        names = ("pool1", "pool2", "pool3", "pool4", "pool5") + (BRANCH_MAPS if self.branch is not None else ())
        for key in want or ():
            name, at, grid = key.partition("@")
            if name in BRANCH_MAPS and self.branch is None:
                raise ValueError(f"feature {key!r}: this VGG has no segment branch (attach_branch)")
            if at:
                if name not in names:
                    raise ValueError(f"feature {key!r}: only pool1 ... pool5 come resized, for example pool1@8x4")
                grids[key] = (name, _parse_grid(key, grid))
        plain = None if want is None else {key for key in want if key not in grids}
        cut = {}
        for i, (stride, length) in enumerate(zip(self.STRIDES, self.LENGTHS)):
            name = f"pool{i + 1}"
            if name != "pool4" and plain is not None and name not in plain:
                continue  # pool4 feeds pool5
            m = maps[name]
            # one map for a patch batch, or one track map shared by all windows
            cut[name] = torch.stack(
                [m[b if m.shape[0] > 1 else 0, :, s // stride : s // stride + length] for b, s in enumerate(starts)]
            )
        pool5 = self._block(4, cut["pool4"])
        cut["pool5"] = pool5
        if self.branch is not None and (want is None or any(k.split("@")[0] in BRANCH_MAPS for k in want)):
            m = maps["seg_pool4"]
            cut["seg_pool4"] = torch.stack(
                [m[b if m.shape[0] > 1 else 0, :, s // self.STRIDES[3] : s // self.STRIDES[3] + self.LENGTHS[3]] for b, s in enumerate(starts)]
            )
            cut["seg_pool5"] = self._block(4, cut["seg_pool4"], self.branch.convs[1], self.branch.bns[1])
        for key, (name, grid) in grids.items():
            if name.endswith("pool5"):
                cut[key] = F.interpolate(cut[name], size=grid, mode="bilinear", align_corners=False)
            else:
                i = int(name[-1]) - 1
                cut[key] = _resized(maps[name], starts, self.STRIDES[i], self.LENGTHS[i], grid)
        # TF flattens NHWC: (time, band, channel)
        logits = self.dense(pool5.permute(0, 2, 3, 1).flatten(1))
        return BackboneOutput(logits, cut)


#: the VGG blocks a segment branch shares with the tagger (it reads their last map, ``pool3``)
BRANCH_FROM = 3
#: the maps a segment branch adds
BRANCH_MAPS = ("seg_pool4", "seg_pool5")
#: pool3 frames a cached branch input holds per window: its 23, and 2 before and after, so that the
#: branch's pool4 of the window is what the track's conv maps give (the first conv reads one frame beyond)
BRANCH_CONTEXT = 2


class VGGBranch(nn.Module):
    """Copies of the VGG's blocks 4 and 5 (conv + BN), fine-tuned for segment codes (``musichash train
    --tune-backbone``). The tagger keeps the exact musicnn weights; blocks 1-3 are shared, so the branch
    costs the track's pool4 convolutions once more and each window's pool5.
    """

    def __init__(self, n_filters: int = 128):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(n_filters, n_filters, 3, padding=1) for _ in range(2))
        self.bns = nn.ModuleList(_bn(n_filters) for _ in range(2))

    @classmethod
    def from_vgg(cls, vgg: VGG) -> VGGBranch:
        """A branch that starts as the VGG's own blocks 4 and 5 (the same maps until it is trained)."""
        branch = cls(vgg.n_filters)
        for i in range(2):
            branch.convs[i].load_state_dict(vgg.convs[BRANCH_FROM + i].state_dict())
            branch.bns[i].load_state_dict(vgg.bns[BRANCH_FROM + i].state_dict())
        return branch.to(next(vgg.parameters()).device)

    def forward(self, context: torch.Tensor, vgg: VGG) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows' ``pool3`` with ``BRANCH_CONTEXT`` frames each side, float [B, C, 23 + 4, F]
        -> ``seg_pool4`` [B, C, 11, F/2] and ``seg_pool5`` [B, C, 2, 1], as the engine cuts them from a track's maps."""
        p4 = vgg._block(3, context, self.convs[0], self.bns[0])
        lo = BRANCH_CONTEXT // 2
        p4 = p4[:, :, lo : lo + vgg.LENGTHS[3]]
        return p4, vgg._block(4, p4, self.convs[1], self.bns[1])


class Musicnn(_Backbone):
    """musicnn (MTT_musicnn / MSD_musicnn): musically motivated front end, dense mid end, pooled back end.

    Per-window features: timbral [187, 408], temporal [187, 153], cnn1..cnn3
    [187, 64] (time, channels), mean_pool and max_pool [753], penultimate [200].
    """

    TEMPORAL_KERNELS = (128, 64, 32)

    def __init__(self, n_tags: int = 50, n_filt_frontend: float = 1.6, n_filt_midend: int = 64, n_units: int = 200):
        super().__init__()
        self.n_tags = n_tags
        timbral = int(n_filt_frontend * 128)
        temporal = int(n_filt_frontend * 32)
        self.bn_in = _bn(1)
        # timbral: [7, 0.4*96] and [7, 0.7*96] kernels over a time-padded input
        self.timbral = nn.ModuleList(nn.Conv2d(1, timbral, (7, int(f * N_MELS))) for f in (0.4, 0.7))
        self.timbral_bn = nn.ModuleList(_bn(timbral) for _ in range(2))
        self.temporal = nn.ModuleList(nn.Conv2d(1, temporal, (k, 1)) for k in self.TEMPORAL_KERNELS)
        self.temporal_bn = nn.ModuleList(_bn(temporal) for _ in range(3))
        front = 2 * timbral + 3 * temporal
        self.mid = nn.ModuleList(
            nn.Conv1d(front if i == 0 else n_filt_midend, n_filt_midend, 7, padding=3) for i in range(3)
        )
        self.mid_bn = nn.ModuleList(nn.BatchNorm1d(n_filt_midend, eps=BN_EPS) for _ in range(3))
        pooled = 2 * (front + 3 * n_filt_midend)
        self.bn_flat = nn.BatchNorm1d(pooled, eps=BN_EPS)
        self.dense = nn.Linear(pooled, n_units)
        self.bn_dense = nn.BatchNorm1d(n_units, eps=BN_EPS)
        self.out = nn.Linear(n_units, n_tags)

    def trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bn_in(x.unsqueeze(1))  # [B, 1, T, 96]
        padded = F.pad(h, (0, 0, 3, 3))
        front = []
        for conv, bn in zip(self.timbral, self.timbral_bn):
            front.append(bn(F.relu(conv(padded))).amax(dim=3))  # [B, C, T]
        for conv, bn, k in zip(self.temporal, self.temporal_bn, self.TEMPORAL_KERNELS):
            same = F.pad(h, (0, 0, (k - 1) // 2, k // 2))
            front.append(bn(F.relu(conv(same))).amax(dim=3))
        f = torch.cat(front, dim=1)  # [B, 561, T]
        c1 = self.mid_bn[0](F.relu(self.mid[0](f)))
        c2 = self.mid_bn[1](F.relu(self.mid[1](c1))) + c1
        c3 = self.mid_bn[2](F.relu(self.mid[2](c2))) + c2
        return {"front": f, "cnn1": c1, "cnn2": c2, "cnn3": c3}

    def head(self, maps: dict[str, torch.Tensor], starts: list[int], want: frozenset[str] | None = None) -> BackboneOutput:
        mid = torch.cat([maps["front"], maps["cnn1"], maps["cnn2"], maps["cnn3"]], dim=1)
        shared = mid.shape[0] == 1 and len(starts) > 1
        win = torch.stack([mid[0 if shared else b, :, s : s + WINDOW_FRAMES] for b, s in enumerate(starts)])
        max_pool, mean_pool = win.amax(dim=2), win.mean(dim=2)
        # TF concatenates [max, mean] on a trailing axis, so flattening interleaves them
        flat = torch.stack([max_pool, mean_pool], dim=2).flatten(1)
        penultimate = self.bn_dense(F.relu(self.dense(self.bn_flat(flat))))
        logits = self.out(penultimate)
        n_timbral = self.timbral[0].out_channels * 2
        n_front = n_timbral + 3 * self.temporal[0].out_channels
        n_mid = self.mid[0].out_channels
        t = win.transpose(1, 2)  # [B, 187, C]
        features = {
            "timbral": t[..., :n_timbral],
            "temporal": t[..., n_timbral:n_front],
            "cnn1": t[..., n_front : n_front + n_mid],
            "cnn2": t[..., n_front + n_mid : n_front + 2 * n_mid],
            "cnn3": t[..., n_front + 2 * n_mid :],
            "mean_pool": mean_pool,
            "max_pool": max_pool,
            "penultimate": penultimate,
        }
        return BackboneOutput(logits, features)
