"""CRNNH: a convolutional-recurrent hashing head over the VGG backbone's pooled maps.

For one 3 s window the frozen backbone gives five maps, ``pool1`` (fine,
[C, 92, 48]) to ``pool5`` (coarse, [C, 2, 1]). CRNNH

1. resizes each map bilinearly to one grid ``[C, H, W]`` (:func:`resize_maps`);
2. keeps ``n_select`` channels per layer, the same ones for every window, in
   one of two ways (``select``):

   - ``"similarity"``: the channels whose maps are most similar
     (cosine) to the layer's mean response over channels, averaged over the
     training windows (:func:`rank_channels`), in rank order: the channels
     that carry the layer's dominant pattern. Ranked once, on the training
     set, and stored with the weights, so a degraded copy of a window goes
     through the same channels as the original (ranking each window on its
     own let a little noise reorder the channels and moved a third of the
     bits);
   - ``"learned"`` (what ``musichash train`` uses by default):
     ``n_select`` learned mixtures of the layer's channels (a 1x1
     convolution), trained with the rest; on held-out windows of the fit
     corpus a degraded view found its own clean window 27 % of the time
     with learned mixtures, 16 % with similarity-ranked channels;

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
over the batch, apart from other audio) + ``lambda_s`` * a similarity term:
the codes' normalised inner products ``h_i . h_j / bits`` over the batch
match the cosine similarities of a float teacher feature of the same
windows (the backbone's centred ``pool5``), so that Hamming neighbours are
the backbone's neighbours and the codes serve similarity search, not only
the lookup of the same audio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from musichash.models.backbones import VGGBranch

LAYERS = ("pool1", "pool2", "pool3", "pool4", "pool5")
#: the pyramid of a head with a fine-tuned segment branch (``CRNNH(branch=...)``): the tagger's pool1-3,
#: then the branch's own pool4 and pool5
BRANCH_LAYERS = ("pool1", "pool2", "pool3", "seg_pool4", "seg_pool5")
SELECTIONS = ("similarity", "learned")


@dataclass(frozen=True)
class CRNNHOutput:
    """relaxed: float [B, bits] in (-1, 1); logits: float [B, n_classes]."""

    relaxed: torch.Tensor
    logits: torch.Tensor

    @property
    def codes(self) -> torch.Tensor:
        """Exactly +-1: float [B, bits] (a zero pre-activation counts as -1, as packbits(x > 0) does)."""
        return torch.where(self.relaxed > 0, 1.0, -1.0)


def resize_maps(maps: Mapping[str, torch.Tensor], grid: tuple[int, int], channels: int,
                layers: Sequence[str] = LAYERS) -> torch.Tensor:
    """Backbone maps -> ``float [B, len(layers), channels, H * W]``.

    maps: name -> float [B, C, T_l, F_l], each resized to ``grid`` (bilinear,
    corners not aligned); a layer with fewer than ``channels`` channels is
    zero-padded (tiny test backbones), one with more is refused.
    """
    steps = []
    for name in layers:
        m = maps[name].float()
        if tuple(m.shape[2:]) != tuple(grid):  # already resized by the backbone (VGG's "poolN@HxW")
            m = F.interpolate(m, size=tuple(grid), mode="bilinear", align_corners=False)
        m = m.flatten(2)
        if m.shape[1] > channels:
            raise ValueError(f"{name} has {m.shape[1]} channels, the model takes {channels}")
        steps.append(F.pad(m, (0, 0, 0, channels - m.shape[1])))
    return torch.stack(steps, dim=1)


def grid_features(grid: Sequence[int], layers: Sequence[str] = LAYERS) -> dict[str, str]:
    """Layer -> the name of the backbone feature that is its window map already resized to ``grid``
    (the VGG's ``"poolN@HxW"``: read from the track's maps, no window cut out first)."""
    return {name: f"{name}@{grid[0]}x{grid[1]}" for name in layers}


def rank_channels(resized: torch.Tensor) -> torch.Tensor:
    """Channels per layer, most similar to the layer's mean response first: long [L, C].

    resized: float [N, L, C, H*W] (windows of the training set). The score of
    a channel is its map's cosine similarity to the mean of the layer's maps,
    averaged over the windows; all-zero (padded or dead) channels score 0.
    """
    x = resized.float()
    mean = x.mean(dim=2, keepdim=True)
    sim = F.cosine_similarity(x, mean, dim=3, eps=1e-8).mean(dim=0)  # [L, C]
    return sim.argsort(dim=1, descending=True, stable=True)


class CRNNH(nn.Module):
    """The hashing head; the backbone stays outside (frozen, its maps cached for training).

    With ``branch`` (the VGG's width) the head carries fine-tuned copies of the VGG's blocks 4 and 5
    (``backbones.VGGBranch``, saved with its weights) and reads ``BRANCH_LAYERS``: the engine attaches
    the branch to the backbone (``VGG.attach_branch``), training runs it on cached ``pool3`` maps
    (:meth:`forward_cached`).
    """

    def __init__(
        self,
        bits: int = 64,
        n_classes: int = 50,
        *,
        grid: tuple[int, int] = (8, 4),
        n_select: int = 16,
        hidden: int = 256,
        layers: Sequence[str] = LAYERS,
        channels: int = 128,
        select: str = "similarity",
        branch: int | None = None,
    ):
        super().__init__()
        if branch is not None:
            if tuple(layers) != BRANCH_LAYERS:
                raise ValueError(f"a head with a segment branch reads {', '.join(BRANCH_LAYERS)}, got {', '.join(layers)}")
            self.branch = VGGBranch(branch)
        else:
            self.branch = None
        if bits not in (16, 32, 48, 64, 128):
            raise ValueError(f"bits must be one of 16, 32, 48, 64, 128, got {bits}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        if not 0 < n_select <= channels:
            raise ValueError(f"n_select must be in 1..{channels}, got {n_select}")
        self.bits, self.n_classes, self.channels, self.select = bits, n_classes, channels, select
        self.grid, self.n_select, self.layers = tuple(grid), n_select, tuple(layers)
        if select == "similarity":  # the first channels until set_selection ranks them
            self.register_buffer("selection", torch.arange(n_select).repeat(len(self.layers), 1))
        else:
            g = torch.randn(len(self.layers), n_select, channels) / channels**0.5
            self.mix = nn.Parameter(g)
        step = n_select * grid[0] * grid[1]
        self.norm = nn.LayerNorm(step)
        self.lstm = nn.LSTM(step, hidden, batch_first=True)
        self.hash = nn.Linear(hidden, bits)
        self.classifier = nn.Linear(bits, n_classes)

    def config(self) -> dict:
        cfg = {"bits": self.bits, "n_classes": self.n_classes, "grid": list(self.grid), "n_select": self.n_select,
               "hidden": self.lstm.hidden_size, "layers": list(self.layers), "channels": self.channels,
               "select": self.select}
        if self.branch is not None:  # checkpoints without a branch keep their config
            cfg["branch"] = self.branch.convs[0].in_channels
        return cfg

    def train(self, mode: bool = True) -> CRNNH:
        """The branch's batch norms keep the musicnn statistics: fine-tuning moves its weights, never its BN statistics."""
        super().train(mode)
        if self.branch is not None:
            self.branch.bns.eval()
        return self

    def set_selection(self, ranked: torch.Tensor) -> None:
        """Keep the first ``n_select`` channels of each layer's ranking (long [L, >= n_select])."""
        if self.select != "similarity":
            raise ValueError("set_selection applies to select='similarity' only")
        self.selection.copy_(ranked[:, : self.n_select])

    def steps(self, resized: torch.Tensor) -> torch.Tensor:
        """float [B, L, C, H*W] (:func:`resize_maps`) -> the pyramid sequence float [B, L, n_select*H*W]."""
        x = resized.float()
        if self.select == "similarity":
            index = self.selection[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[3])
            chosen = x.gather(2, index)
        else:
            chosen = torch.einsum("blch,lsc->blsh", x, self.mix)
        return chosen.flatten(2)

    def forward_resized(self, resized: torch.Tensor) -> CRNNHOutput:
        """resized: float [B, L, C, H*W] (from :func:`resize_maps`, or the feature cache)."""
        _, (h, _) = self.lstm(self.norm(self.steps(resized)))
        relaxed = torch.tanh(self.hash(h[-1]))
        return CRNNHOutput(relaxed, self.classifier(relaxed))

    def forward_cached(self, resized: torch.Tensor, context: torch.Tensor | None = None, vgg=None) -> CRNNHOutput:
        """Cached windows: ``resized`` float [B, L, C, H*W]; with a branch, the first three layers only,
        and ``context`` (the windows' ``pool3`` with margins, float [B, C, 27, F]) runs through the
        branch, with ``vgg``'s block layout, for the last two."""
        if self.branch is not None:
            if context is None or vgg is None:
                raise ValueError("a head with a segment branch needs the windows' pool3 context and the VGG")
            p4, p5 = self.branch(context.float(), vgg)
            tail = resize_maps({"seg_pool4": p4, "seg_pool5": p5}, self.grid, self.channels, BRANCH_LAYERS[3:])
            resized = torch.cat([resized.float(), tail], dim=1)
        return self.forward_resized(resized)

    def forward(self, maps: Mapping[str, torch.Tensor]) -> CRNNHOutput:
        return self.forward_resized(resize_maps(maps, self.grid, self.channels, self.layers))


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    classification: torch.Tensor
    quantization: torch.Tensor
    balance: torch.Tensor
    pairwise: torch.Tensor
    similarity: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        names = ("total", "classification", "quantization", "balance", "pairwise", "similarity")
        return {k: float(getattr(self, k).detach()) for k in names}


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


def pairwise_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2, group: torch.Tensor | None = None) -> torch.Tensor:
    """Two views of the same items (row i of a and of b): pull together, push from the batch.

    ``mean ||a - b||^2 / bits`` plus an InfoNCE term on cosine similarities,
    symmetrised; a, b: float [B, bits]. With ``group`` (long [B], e.g. the
    source file), an item's negatives are only the items of its own group:
    other moments of the same track are pushed away, other tracks are left
    to the similarity term.
    """
    pull = (a - b).pow(2).mean()
    if a.shape[0] < 2:
        return pull
    za, zb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = za @ zb.T / temperature
    if group is not None:
        logits = logits.masked_fill(group[:, None] != group[None], float("-inf"))
    target = torch.arange(a.shape[0], device=a.device)
    nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return pull + nce


def similarity_loss(h: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.0,
                    group: torch.Tensor | None = None) -> torch.Tensor:
    """The codes' agreements ``a_ij = h_i . h_j / bits`` against the teacher's cosines ``c_ij``, over pairs i != j.

    ``temperature`` 0: ``mean (a_ij - c_ij)^2``, the values themselves;
    above 0: the mean over rows i of ``KL(softmax_j(c_ij / T) || softmax_j(a_ij / T))``,
    only the order of each item's neighbours (which leaves the pairwise term
    free to set how far apart they are). h: float [B, bits] (relaxed codes);
    teacher: float [B, D], already centred. With ``group`` (long [B], the
    source file), only pairs from different groups count: how windows of one
    track relate is left to the pairwise term.
    """
    n = h.shape[0]
    pair = ~torch.eye(n, dtype=torch.bool, device=h.device)
    if group is not None:
        pair &= group[:, None] != group[None]
    rows = pair.any(dim=1)
    if not rows.any():
        return h.new_zeros(())
    t = F.normalize(teacher.float(), dim=1)
    a, c = h @ h.T / h.shape[1], t @ t.T
    if temperature <= 0:
        return (a - c)[pair].pow(2).mean()
    a = (a / temperature).masked_fill(~pair, float("-inf"))[rows]
    c = (c / temperature).masked_fill(~pair, float("-inf"))[rows]
    p, log_q = F.softmax(c, dim=1), F.log_softmax(a, dim=1)
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-30)) - log_q), 0.0).sum(dim=1).mean()


@dataclass(frozen=True)
class CRNNHLoss:
    lambda_q: float = 0.1
    lambda_b: float = 0.1
    lambda_p: float = 1.0
    multilabel: bool = True
    lambda_s: float = 0.0
    temperature_s: float = 0.0

    def __call__(self, out: CRNNHOutput, target: torch.Tensor, view: CRNNHOutput | None = None,
                 teacher: torch.Tensor | None = None, group: torch.Tensor | None = None) -> LossParts:
        """target: float [B, n_classes] in [0, 1] (multilabel / soft) or long [B] (classes); teacher: float [B, D]
        (centred); group: long [B], the pairwise term's negatives within a group and the similarity term's pairs
        across groups only (:func:`pairwise_loss`, :func:`similarity_loss`)."""
        if self.multilabel:
            cls = F.binary_cross_entropy_with_logits(out.logits, target.float())
        else:
            cls = F.cross_entropy(out.logits, target.long())
        h = out.relaxed if view is None else torch.cat([out.relaxed, view.relaxed])
        q = quantization_loss(h)
        b = balance_loss(h)
        p = pairwise_loss(out.relaxed, view.relaxed, group=group) if view is not None else h.new_zeros(())
        s = h.new_zeros(())
        if teacher is not None and self.lambda_s:
            s = similarity_loss(out.relaxed, teacher, self.temperature_s, group)
        total = cls + self.lambda_q * q + self.lambda_b * b + self.lambda_p * p + self.lambda_s * s
        return LossParts(total, cls, q, b, p, s)


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
    if "select" not in cfg:
        raise ValueError(f"{path}: a CRNNH checkpoint from an older musichash (channels chosen per window); train it again")
    model = CRNNH(cfg["bits"], cfg["n_classes"], grid=tuple(cfg["grid"]), n_select=cfg["n_select"],
                  hidden=cfg["hidden"], layers=tuple(cfg["layers"]), channels=cfg["channels"], select=cfg["select"],
                  branch=cfg.get("branch"))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()
