"""The CRNNH training loop over a feature cache: seeded, resumable, one checkpoint per epoch.

One file in ``VAL_EVERY`` (by index) is held out. After each epoch its
degraded views are encoded and looked up among its clean windows by Hamming
distance, as the engine looks up a query: ``val_top1`` is the share of views
whose nearest clean window (ties counted against) is their own,
``val_file_top1`` the share whose nearest clean window is from their own
file, ``val_flips`` the mean share of bits a degradation flips. They go into the
checkpoint's history, so runs can be compared before any library is built.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from musichash.models.backbones import VGGBranch
from musichash.models.crnnh import (
    BRANCH_LAYERS,
    CRNNH,
    CRNNHLoss,
    load_checkpoint,
    rank_channels,
    save_checkpoint,
)
from musichash.train.cache import Features


@dataclass(frozen=True)
class TrainConfig:
    bits: int = 64
    epochs: int = 30
    batch: int = 128
    lr: float = 1e-3
    hidden: int = 256
    n_select: int = 16
    select: str = "learned"
    #: windows of one file per batch (the rest of the batch: other files); 0 = batches drawn at random.
    #: Other moments of the same track are then among each window's negatives, which keeps codes
    #: telling positions in a track apart, as the engine's time-consistent vote needs
    per_file: int = 8
    lambda_q: float = 0.1
    lambda_b: float = 0.1
    lambda_p: float = 1.0
    #: weight of the similarity term (codes' inner products match the teacher's cosines, ``teacher_features``);
    #: 20 balances similarity search against query by example; the shipped track heads, which serve
    #: similarity only, use 5 with lambda_p 0 and random batches (benchmarks/HISTORY.md)
    lambda_s: float = 20.0
    #: 0: the similarity term matches values; > 0: only each window's order of neighbours (``similarity_loss``)
    temperature_s: float = 0.0
    #: the pairwise term's negatives: "batch" (every other window of the batch) or "file" (only
    #: other windows of the same file; other files are left to the similarity term)
    negatives: str = "batch"
    #: the classification term's classes: "labels" (the dataset's labels or tags) or "files" (one class
    #: per training file: codes that tell tracks apart, also tracks with the same labels; segment heads)
    classes: str = "labels"
    #: with ``per_file``, which files' runs share a batch: "any" (drawn at random) or "labels" (files
    #: with the same labels, e.g. one soundtrack: each other's hardest negatives)
    batch_by: str = "any"
    seed: int = 0
    #: learning rate of the fine-tuned VGG blocks (caches built with ``tune_backbone``)
    tune_lr: float = 1e-4


VAL_EVERY = 10
NEGATIVES = ("batch", "file")
CLASSES = ("labels", "files")
BATCH_BY = ("any", "labels")
CHECKPOINT = "crnnh.safetensors"
STATE = "train_state.json"


def train(
    feats: Features,
    out: str | Path,
    cfg: TrainConfig,
    *,
    grid: tuple[int, int],
    multilabel: bool,
    meta: dict | None = None,
    resume: bool = False,
    progress: Callable[[int, dict], None] | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train and write ``out/crnnh.safetensors`` (+ .json) after every epoch; returns its path.

    With ``resume``, training continues from the last finished epoch in
    ``out`` (weights and the RNG stream; the optimiser restarts its moments).
    ``init``: a CRNNH checkpoint whose head weights the new model starts from (those of the same
    name and shape). A cache built with ``tune_backbone`` (``feats.clean_ctx``) trains, besides the
    head, copies of the VGG's blocks 4 and 5 (``backbones.VGGBranch``), started from the backbone's own,
    at ``cfg.tune_lr``.
    """
    for name, allowed in (("negatives", NEGATIVES), ("classes", CLASSES), ("batch_by", BATCH_BY)):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    file_index = np.unique(feats.item, return_inverse=True)[1].reshape(-1)  # each row's file, numbered 0..n_files-1
    n_files = int(file_index.max()) + 1
    label_group = None
    if cfg.batch_by == "labels":
        label_group = np.unique(feats.targets, axis=0, return_inverse=True)[1].reshape(-1)
        if np.unique(np.stack([file_index, label_group]), axis=1).shape[1] != n_files:
            raise ValueError("batch_by='labels' needs labelled files (one label set per file); these targets vary within files")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, state_path = out / CHECKPOINT, out / STATE
    start = 0
    torch.manual_seed(cfg.seed)
    held = feats.item % VAL_EVERY == VAL_EVERY - 1
    if held.all() or not held.any():
        held = np.zeros_like(held)
    fit = np.flatnonzero(~held)
    vgg = None
    if feats.clean_ctx is not None:
        from musichash.models import build_backbone

        vgg = build_backbone(feats.backbone)
    if resume and ckpt.is_file() and state_path.is_file():
        state = json.loads(state_path.read_text())
        before = {**asdict(TrainConfig()), **state["config"]}  # settings added since then had their defaults
        if {k: v for k, v in before.items() if k != "epochs"} != {k: v for k, v in asdict(cfg).items() if k != "epochs"}:
            raise ValueError(f"{out} holds a run with other settings; use another --out or the same settings")
        model = load_checkpoint(ckpt)
        start = state["epoch"]
    else:
        n_classes = n_files if cfg.classes == "files" else feats.targets.shape[1]
        branch = {} if vgg is None else {"layers": BRANCH_LAYERS, "branch": vgg.n_filters}
        model = CRNNH(cfg.bits, n_classes, grid=grid, n_select=cfg.n_select, hidden=cfg.hidden,
                      channels=feats.clean.shape[2], select=cfg.select, **branch)
        if vgg is not None:
            model.branch.load_state_dict(VGGBranch.from_vgg(vgg).state_dict())
        if init is not None:
            start_from(model, load_checkpoint(init))
        if cfg.select == "similarity":  # ranked once, on (a sample of) the training windows
            sample = np.sort(np.random.default_rng(cfg.seed).permutation(fit)[:4096])
            model.set_selection(rank_channels(torch.from_numpy(feats.clean[sample].astype(np.float32))))
    model.train()
    tuned = [] if model.branch is None else list(model.branch.parameters())
    head = [p for name, p in model.named_parameters() if not name.startswith("branch.")]
    opt = torch.optim.Adam([{"params": head}] + ([{"params": tuned, "lr": cfg.tune_lr}] if tuned else []), lr=cfg.lr)
    if cfg.classes == "files":
        multilabel = False
        targets = torch.from_numpy(file_index.astype(np.int64))
    else:
        targets = torch.from_numpy(feats.targets) if multilabel else torch.from_numpy(feats.targets.argmax(1))
    loss_fn = CRNNHLoss(cfg.lambda_q, cfg.lambda_b, cfg.lambda_p, multilabel=multilabel, lambda_s=cfg.lambda_s,
                        temperature_s=cfg.temperature_s)
    teacher = None
    if cfg.lambda_s:
        teacher = torch.from_numpy(teacher_features(feats.clean))
        teacher -= teacher[fit].mean(dim=0)
    n = len(fit)
    history = json.loads(state_path.read_text())["history"] if start else []
    for epoch in range(start, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])  # an epoch's batches do not depend on earlier epochs
        order = batch_order(fit, feats.item, rng, cfg.per_file, label_group)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for b in range(0, n - 1, cfg.batch):
            idx = order[b : b + cfg.batch]
            if len(idx) < 2:
                continue
            v = rng.integers(feats.views.shape[1], size=len(idx))
            group = torch.from_numpy(feats.item[idx].astype(np.int64)) if cfg.negatives == "file" else None
            parts = loss_fn(cached_forward(model, feats, idx, None, vgg), targets[idx],
                            cached_forward(model, feats, idx, v, vgg), None if teacher is None else teacher[idx], group)
            opt.zero_grad()
            parts.total.backward()
            opt.step()
            for k, val in parts.as_floats().items():
                sums[k] = sums.get(k, 0.0) + val * len(idx)
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 2), **{k: v / n for k, v in sums.items()}}
        history.append(record)
        model.eval()
        record.update(validate(model, feats, np.flatnonzero(held), vgg))
        metrics = {k: v for k, v in record.items() if k.startswith("val_")}
        info = {"registry_name": f"crnnh{cfg.bits}", "backbone": feats.backbone, **(meta or {}),
                **({"init": str(init)} if init is not None else {})}
        save_checkpoint(model, ckpt, {**info, "train": asdict(cfg), "metrics": metrics, "history": history})
        state_path.write_text(json.dumps({"epoch": epoch + 1, "config": asdict(cfg), "history": history}))
        model.train()
        if progress:
            progress(epoch + 1, record)
    return ckpt


def teacher_features(x: np.ndarray) -> np.ndarray:
    """The float teacher of cached windows ``float16 [n, L, C, H*W]``: the last layer's first and last grid rows, ``float32 [n, 2C]``.

    For MTT_vgg the last layer is ``pool5``, ``[C, 2, 1]`` before resizing, and
    bilinear up-sampling keeps its two rows as the grid's edge rows, so this
    is exactly ``pool5.flatten(1)`` (channel by channel, both rows each), the
    feature the interim binariser and ``musichash evaluate``'s float reference read.
    """
    last = x[:, -1].astype(np.float32)
    return np.stack([last[:, :, 0], last[:, :, -1]], axis=2).reshape(len(x), -1)


def batch_order(rows: np.ndarray, item: np.ndarray, rng: np.random.Generator, per_file: int,
                group: np.ndarray | None = None) -> np.ndarray:
    """An epoch's order of ``rows``: shuffled, in runs of up to ``per_file`` windows of one file (0: no runs).

    With ``group`` (int [N], by row, the same for all windows of a file; e.g. the files' label sets) the
    runs of a group come together, in random order, and the groups in random order: consecutive
    batches hold runs of files of one group.
    """
    order = rows[rng.permutation(len(rows))]
    if per_file <= 0:
        return order
    order = order[np.argsort(item[order], kind="stable")]  # by file, shuffled within
    cuts = np.flatnonzero(np.diff(item[order])) + 1
    runs = [run for file in np.split(order, cuts) for run in np.array_split(file, -(-len(file) // per_file))]
    shuffled = rng.permutation(len(runs))
    if group is not None:
        rank = rng.permutation(int(group.max()) + 1)  # groups in random order
        shuffled = shuffled[np.argsort(rank[group[[runs[i][0] for i in shuffled]]], kind="stable")]
    return np.concatenate([runs[i] for i in shuffled])


def start_from(model: CRNNH, trained: CRNNH) -> list[str]:
    """Copy ``trained``'s weights into ``model`` where name and shape agree (a head trained before, on the
    tagger's maps, starts a head with fine-tuned blocks); returns the names copied."""
    mine = model.state_dict()
    copied = {k: v for k, v in trained.state_dict().items() if k in mine and mine[k].shape == v.shape}
    if not any(k.startswith("lstm.") for k in copied):
        from musichash.models import ModelError

        raise ModelError("the --init checkpoint's head does not fit this model (other --bits, or another grid); "
                         "start from a checkpoint of the same size")
    model.load_state_dict(copied, strict=False)
    return sorted(copied)


def cached_forward(model: CRNNH, feats: Features, idx: np.ndarray, view: np.ndarray | int | None = None, vgg=None):
    """``model`` on cached windows ``idx``: clean (``view`` None) or view ``view`` (one per window, or one for all).
    A head with a fine-tuned branch reads the cache's first three layers and runs its branch on the windows'
    pool3 context with ``vgg``'s block layout."""
    if view is None:
        x, ctx = feats.clean[idx], None if model.branch is None else feats.clean_ctx[idx]
    else:
        x, ctx = feats.views[idx, view], None if model.branch is None else feats.views_ctx[idx, view]
    x = torch.from_numpy(x.astype(np.float32))
    if model.branch is None:
        return model.forward_resized(x)
    return model.forward_cached(x[:, : len(BRANCH_LAYERS) - 2], torch.from_numpy(ctx.astype(np.float32)), vgg)


def validate(model: CRNNH, feats: Features, rows: np.ndarray, vgg=None) -> dict:
    """``val_top1``, ``val_file_top1`` and ``val_flips`` (module docstring) over the held-out windows ``rows``; {} when none."""

    return validate_codes(lambda r, v: cached_codes(model, feats, r, v, vgg), feats, rows)


@torch.inference_mode()
def cached_codes(model: CRNNH, feats: Features, rows: np.ndarray, view: int | None = None, vgg=None,
                 chunk: int = 512) -> torch.Tensor:
    """+-1 codes ``float [n, bits]`` of cached windows ``rows`` (clean, or view ``view``), ``chunk`` at a time."""
    return torch.cat([cached_forward(model, feats, rows[i : i + chunk], view, vgg).codes
                      for i in range(0, len(rows), chunk)])


@torch.inference_mode()
def validate_codes(codes: Callable[[np.ndarray, int | None], torch.Tensor], feats: Features, rows: np.ndarray) -> dict:
    """:func:`validate` for any code: ``codes(rows, view)`` gives the +-1 codes ``float [n, bits]`` of cached windows
    ``rows``, clean (``view`` None) or their view ``view``."""
    if len(rows) < 2:
        return {}
    clean = codes(rows, None)
    hits, file_hits, flips, total = 0, 0, 0.0, 0
    item = torch.from_numpy(feats.item[rows].astype(np.int64))
    for v in range(feats.views.shape[1]):
        view = codes(rows, v)
        dist = (view.shape[1] - view @ clean.T) / 2  # Hamming distance of +-1 codes, [n, n]
        own = dist.diagonal()
        others = dist + torch.diag(torch.full_like(own, float("inf")))
        hits += int((own < others.min(dim=1).values).sum())
        file_hits += int((item[dist.argmin(dim=1)] == item).sum())
        flips += float(own.mean()) / view.shape[1] * len(rows)
        total += len(rows)
    return {"val_top1": round(hits / total, 4), "val_file_top1": round(file_hits / total, 4), "val_flips": round(flips / total, 4),
            "val_windows": len(rows)}
