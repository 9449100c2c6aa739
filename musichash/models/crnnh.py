"""CRNNH: a convolutional-recurrent hashing head over the VGG backbone's pooled maps.

For one 3 s window the frozen backbone gives five maps, ``pool1`` (fine,
[C, 92, 48]) to ``pool5`` (coarse, [C, 2, 1]). CRNNH

1. resizes each map bilinearly to one grid ``[C, H, W]``;
2. keeps, per layer and per window, the ``n_select`` channels whose map is
   most similar (cosine) to the layer's mean response over channels, in
   that order: the channels that carry the layer's dominant pattern, a
   fixed-size summary whatever the channel count;
3. reads the layers as a sequence from fine to coarse (the "pyramid") with
   an LSTM, whose final hidden state
4. goes to a hash layer of ``bits`` units: ``tanh`` while training, sign at
   inference;
5. a classifier on the hash layer gives ``n_classes`` logits (tags or classes).

Losses (``CRNNHLoss``): classification (sigmoid cross-entropy on tag or soft
targets, softmax cross-entropy on class indices) + ``lambda_q`` * quantization
error ``||h - sign(h)||^2 / bits`` + ``lambda_b`` * bit balance (bit means
near 0, bits decorrelated) + ``lambda_p`` * a pairwise term pulling two
augmented views of the same audio together (and, through an InfoNCE term
over the batch, apart from other audio).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = ("pool1", "pool2", "pool3", "pool4", "pool5")


@dataclass(frozen=True)
class CRNNHOutput:
    """relaxed: float [B, bits] in (-1, 1); logits: float [B, n_classes]."""

    relaxed: torch.Tensor
    logits: torch.Tensor

    @property
    def codes(self) -> torch.Tensor:
        """Exactly +-1: float [B, bits] (a zero pre-activation counts as -1, as packbits(x > 0) does)."""
        return torch.where(self.relaxed > 0, 1.0, -1.0)


def pyramid(maps: Mapping[str, torch.Tensor], grid: tuple[int, int], n_select: int, layers: Sequence[str] = LAYERS) -> torch.Tensor:
    """Backbone maps -> the pyramid sequence ``float [B, len(layers), n_select * H * W]``.

    maps: name -> float [B, C, T_l, F_l]. Each map is resized to ``grid``
    (bilinear, corners not aligned), its channels ranked by cosine similarity
    to their mean, and the top ``n_select`` kept in rank order.
    """
    steps = []
    for name in layers:
        m = F.interpolate(maps[name].float(), size=grid, mode="bilinear", align_corners=False)  # [B, C, H, W]
        flat = m.flatten(2)  # [B, C, H*W]
        mean = flat.mean(dim=1, keepdim=True)
        sim = F.cosine_similarity(flat, mean, dim=2, eps=1e-8)  # [B, C]
        k = min(n_select, flat.shape[1])
        top = sim.topk(k, dim=1).indices  # [B, k], most similar first
        chosen = flat.gather(1, top.unsqueeze(-1).expand(-1, -1, flat.shape[2]))
        if k < n_select:  # fewer channels than asked (tiny test backbones): pad
            chosen = F.pad(chosen, (0, 0, 0, n_select - k))
        steps.append(chosen.flatten(1))
    return torch.stack(steps, dim=1)


class CRNNH(nn.Module):
    """The hashing head; the backbone stays outside (frozen, its maps cached for training)."""

    def __init__(
        self,
        bits: int = 64,
        n_classes: int = 50,
        *,
        grid: tuple[int, int] = (8, 4),
        n_select: int = 16,
        hidden: int = 256,
        layers: Sequence[str] = LAYERS,
    ):
        super().__init__()
        if bits not in (16, 32, 48, 64, 128):
            raise ValueError(f"bits must be one of 16, 32, 48, 64, 128, got {bits}")
        self.bits, self.n_classes = bits, n_classes
        self.grid, self.n_select, self.layers = tuple(grid), n_select, tuple(layers)
        step = n_select * grid[0] * grid[1]
        self.norm = nn.LayerNorm(step)
        self.lstm = nn.LSTM(step, hidden, batch_first=True)
        self.hash = nn.Linear(hidden, bits)
        self.classifier = nn.Linear(bits, n_classes)

    def config(self) -> dict:
        return {"bits": self.bits, "n_classes": self.n_classes, "grid": list(self.grid), "n_select": self.n_select,
                "hidden": self.lstm.hidden_size, "layers": list(self.layers)}

    def forward_pyramid(self, seq: torch.Tensor) -> CRNNHOutput:
        """seq: float [B, n_layers, n_select * H * W] (from :func:`pyramid`, or the feature cache)."""
        _, (h, _) = self.lstm(self.norm(seq))
        relaxed = torch.tanh(self.hash(h[-1]))
        return CRNNHOutput(relaxed, self.classifier(relaxed))

    def forward(self, maps: Mapping[str, torch.Tensor]) -> CRNNHOutput:
        return self.forward_pyramid(pyramid(maps, self.grid, self.n_select, self.layers))


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    classification: torch.Tensor
    quantization: torch.Tensor
    balance: torch.Tensor
    pairwise: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "classification", "quantization", "balance", "pairwise")}


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """Mean over items of ``||h - sign(h)||^2 / bits``; h: float [B, bits]."""
    return (h - torch.where(h > 0, 1.0, -1.0)).pow(2).mean()


def balance_loss(h: torch.Tensor) -> torch.Tensor:
    """Each bit's batch mean near 0, and bits decorrelated: ``mean(mu^2) + ||C - I||_F^2 / bits^2``.

    h: float [B, bits]; C is the bits' correlation-like matrix ``h^T h / B``.
    """
    mu = h.mean(dim=0)
    c = h.T @ h / h.shape[0]
    eye = torch.eye(h.shape[1], device=h.device, dtype=h.dtype)
    return mu.pow(2).mean() + (c - eye).pow(2).mean()


def pairwise_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Two views of the same items (row i of a and of b): pull together, push from the batch.

    ``mean ||a - b||^2 / bits`` plus an InfoNCE term on cosine similarities,
    symmetrised; a, b: float [B, bits].
    """
    pull = (a - b).pow(2).mean()
    if a.shape[0] < 2:
        return pull
    za, zb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = za @ zb.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return pull + nce


@dataclass(frozen=True)
class CRNNHLoss:
    lambda_q: float = 0.1
    lambda_b: float = 0.1
    lambda_p: float = 1.0
    multilabel: bool = True

    def __call__(self, out: CRNNHOutput, target: torch.Tensor, view: CRNNHOutput | None = None) -> LossParts:
        """target: float [B, n_classes] in [0, 1] (multilabel / soft) or long [B] (classes)."""
        if self.multilabel:
            cls = F.binary_cross_entropy_with_logits(out.logits, target.float())
        else:
            cls = F.cross_entropy(out.logits, target.long())
        h = out.relaxed if view is None else torch.cat([out.relaxed, view.relaxed])
        q = quantization_loss(h)
        b = balance_loss(h)
        p = pairwise_loss(out.relaxed, view.relaxed) if view is not None else h.new_zeros(())
        total = cls + self.lambda_q * q + self.lambda_b * b + self.lambda_p * p
        return LossParts(total, cls, q, b, p)


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(model: CRNNH, path, meta: Mapping | None = None) -> None:
    """Weights to ``path`` (.safetensors, config in its metadata) and ``meta`` (+ config) beside it as .json.

    Never a pickle: the class comes from the registry, the numbers from safetensors.
    """
    import json
    import os
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    config = model.config()
    info = {"format": "musichash.crnnh", "version": 1, "config": config, **dict(meta or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "musichash.crnnh", "config": json.dumps(config)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a checkpoint is meant to be shared
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def load_checkpoint(path) -> CRNNH:
    """A CRNNH from a .safetensors written by :func:`save_checkpoint` (config from its metadata)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "musichash.crnnh":
        raise ValueError(f"{path}: not a CRNNH checkpoint (no musichash.crnnh metadata)")
    cfg = json.loads(meta["config"])
    model = CRNNH(cfg["bits"], cfg["n_classes"], grid=tuple(cfg["grid"]), n_select=cfg["n_select"],
                  hidden=cfg["hidden"], layers=tuple(cfg["layers"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()
