"""Which parts of a mel spectrogram drove a network's output: Grad-CAM and occlusion.

Both explain one scalar ``target(model output)`` per 3 s window (a tag's logit,
or how close a window's code is to a matched clip's) and give a map
``float [T, 96]`` over the window's mel frames and bands, >= 0, larger where the
evidence is:

- **Grad-CAM** (Selvaraju et al. 2017): the ``cam_layer``'s activations
  weighted by the spatial mean of the target's gradient, summed over channels,
  ReLU, upsampled bilinearly to the mel's grid. Cheap (one backward pass) and
  as coarse as that layer.
- **Occlusion** (Zeiler & Fergus 2014): patches of ``PATCH`` frames x bands are
  set to the window's median level, and each bin gets the mean drop of the
  target over the patches that covered it, ReLU. Model-agnostic, sharper, and
  one forward pass per patch.

A file is explained in 3 s windows (non-overlapping, the last aligned to the
end, as the taggers were trained); overlapping frames get the mean of their
windows. Maps are scaled by one maximum over the whole file, so a window without
evidence stays dark.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musichash.features.audio import HOP, SAMPLE_RATE
from musichash.models.backbones import WINDOW_FRAMES

METHODS = ("gradcam", "occlusion")
#: occlusion patch (frames, bands) and stride: 0.2 s x 12 bands
PATCH = (12, 12)
STRIDE = (6, 6)

Target = Callable[[torch.Tensor], torch.Tensor]  # model output [B, ...] -> float [B]


@dataclass(frozen=True)
class Explanation:
    """maps: method -> float32 [T, 96] in [0, 1]; mel: float32 [T, 96]; ``score`` the target per window."""

    what: str
    mel: np.ndarray
    maps: dict[str, np.ndarray]
    window_scores: tuple[float, ...]

    @property
    def seconds_per_frame(self) -> float:
        return HOP / SAMPLE_RATE

    def to_dict(self) -> dict:
        return {"explains": self.what, "frames": int(self.mel.shape[0]), "bands": int(self.mel.shape[1]),
                "seconds_per_frame": self.seconds_per_frame, "window_scores": [None if math.isnan(s) else round(s, 6) for s in self.window_scores],
                "maps": {m: np.round(v, 4).tolist() for m, v in self.maps.items()}}


def window_starts(n_frames: int) -> list[int]:
    if n_frames <= WINDOW_FRAMES:
        return [0]
    starts = list(range(0, n_frames - WINDOW_FRAMES + 1, WINDOW_FRAMES))
    if starts[-1] != n_frames - WINDOW_FRAMES:
        starts.append(n_frames - WINDOW_FRAMES)
    return starts


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """x: float [B, T, 96] -> float [B, T, 96] (not yet scaled)."""
    acts: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score = target(model(x))
            a = acts[-1]
            (g,) = torch.autograd.grad(score.sum(), a)
    finally:
        hook.remove()
    weights = g.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    cam = F.relu((weights * a).sum(dim=1, keepdim=True))  # [B, 1, T', F']
    return F.interpolate(cam, size=x.shape[1:], mode="bilinear", align_corners=False)[:, 0].detach()


@torch.no_grad()
def occlusion(model: nn.Module, x: torch.Tensor, target: Target, batch: int = 64,
              patch: tuple[int, int] = PATCH) -> torch.Tensor:
    """x: float [1, T, 96] -> float [1, T, 96] (not yet scaled); patches of ``patch`` bins, half a patch apart."""
    stride = (max(1, patch[0] // 2), max(1, patch[1] // 2))
    _, t, f = x.shape
    base = target(model(x))[0]
    fill = x.median()
    boxes = [(i, j) for i in range(0, max(t - patch[0], 0) + 1, stride[0]) for j in range(0, max(f - patch[1], 0) + 1, stride[1])]
    drop = torch.zeros(t, f, device=x.device)
    cover = torch.zeros(t, f, device=x.device)
    for s in range(0, len(boxes), batch):
        part = boxes[s : s + batch]
        xs = x.repeat(len(part), 1, 1)
        for k, (i, j) in enumerate(part):
            xs[k, i : i + patch[0], j : j + patch[1]] = fill
        d = base - target(model(xs))
        for k, (i, j) in enumerate(part):
            drop[i : i + patch[0], j : j + patch[1]] += d[k]
            cover[i : i + patch[0], j : j + patch[1]] += 1
    return F.relu(drop / cover.clamp(min=1))[None]


def explain(model: nn.Module, mel: np.ndarray, target: Target | Callable[[int], Target | None], what: str,
            methods: tuple[str, ...] = METHODS, device: str | torch.device = "cpu", *, per_window: bool = False,
            patch: tuple[int, int] = PATCH) -> Explanation:
    """Maps of ``methods`` for ``mel: float [T, 96]`` (a whole file's model log-mel).

    ``per_window``: ``target`` is a function of a window's start frame giving that window's target, or
    None for a window with nothing to explain (its map stays 0, its score NaN). ``patch``: occlusion's.
    """
    model.eval()
    n = len(mel)
    padded = np.pad(mel, ((0, max(0, WINDOW_FRAMES - n)), (0, 0))).astype(np.float32)
    starts = window_starts(len(padded))
    total = {m: np.zeros(padded.shape, np.float64) for m in methods}
    count = np.zeros((len(padded), 1))
    scores = []
    for s in starts:
        count[s : s + WINDOW_FRAMES] += 1
        t = target(s) if per_window else target
        if t is None:
            scores.append(float("nan"))
            continue
        x = torch.from_numpy(padded[s : s + WINDOW_FRAMES][None]).to(device)
        with torch.no_grad():
            scores.append(float(t(model(x))[0]))
        for m in methods:
            cam = grad_cam(model, model.cam_layer, x, t) if m == "gradcam" else occlusion(model, x, t, patch=patch)
            total[m][s : s + WINDOW_FRAMES] += cam[0].double().cpu().numpy()
    maps = {}
    for m in methods:
        v = (total[m] / np.maximum(count, 1))[:n]
        maps[m] = (v / v.max() if v.max() > 0 else v).astype(np.float32)
    return Explanation(what, mel.astype(np.float32), maps, tuple(scores))


def tag_target(index: int, multilabel: bool) -> Target:
    """A tag's logit (multi-label), or a class's log-probability (one label a file)."""
    if multilabel:
        return lambda out: out[:, index]
    return lambda out: torch.log_softmax(out, dim=1)[:, index]


def save_png(e: Explanation, path, title: str | None = None, start_s: float = 0.0) -> None:
    """The mel spectrogram with each map over it, time in seconds (from ``start_s``: the file's time) and mel
    bands on the axes."""
    import matplotlib  # noqa: PLC0415  (an optional extra: pip install 'musichash[explain]')

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = 1 + len(e.maps)
    seconds = len(e.mel) * e.seconds_per_frame
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.2 * rows), sharex=True, squeeze=False)
    extent = (start_s, start_s + seconds, 0, e.mel.shape[1])
    axes[0, 0].imshow(e.mel.T, origin="lower", aspect="auto", extent=extent, cmap="magma")
    axes[0, 0].set_title(title or e.what, fontsize=10)
    axes[0, 0].set_ylabel("mel band")
    for ax, (method, v) in zip(axes[1:, 0], e.maps.items()):
        ax.imshow(e.mel.T, origin="lower", aspect="auto", extent=extent, cmap="gray")
        ax.imshow(v.T, origin="lower", aspect="auto", extent=extent, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_ylabel("mel band")
        ax.set_title(method, fontsize=9)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
