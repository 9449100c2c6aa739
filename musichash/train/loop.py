"""The CRNNH training loop over a feature cache: seeded, resumable, one checkpoint per epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from musichash.models.crnnh import CRNNH, CRNNHLoss, load_checkpoint, save_checkpoint
from musichash.train.cache import Features


@dataclass(frozen=True)
class TrainConfig:
    bits: int = 64
    epochs: int = 30
    batch: int = 128
    lr: float = 1e-3
    hidden: int = 256
    lambda_q: float = 0.1
    lambda_b: float = 0.1
    lambda_p: float = 1.0
    seed: int = 0


CHECKPOINT = "crnnh.safetensors"
STATE = "train_state.json"


def train(
    feats: Features,
    out: str | Path,
    cfg: TrainConfig,
    *,
    grid: tuple[int, int],
    n_select: int,
    multilabel: bool,
    meta: dict | None = None,
    resume: bool = False,
    progress: Callable[[int, dict], None] | None = None,
) -> Path:
    """Train and write ``out/crnnh.safetensors`` (+ .json) after every epoch; returns its path.

    With ``resume``, training continues from the last finished epoch in
    ``out`` (weights and the RNG stream; the optimiser restarts its moments).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, state_path = out / CHECKPOINT, out / STATE
    start = 0
    torch.manual_seed(cfg.seed)
    model = CRNNH(cfg.bits, feats.targets.shape[1], grid=grid, n_select=n_select, hidden=cfg.hidden)
    if resume and ckpt.is_file() and state_path.is_file():
        state = json.loads(state_path.read_text())
        if {k: v for k, v in state["config"].items() if k != "epochs"} != {k: v for k, v in asdict(cfg).items() if k != "epochs"}:
            raise ValueError(f"{out} holds a run with other settings; use another --out or the same settings")
        model = load_checkpoint(ckpt)
        start = state["epoch"]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = CRNNHLoss(cfg.lambda_q, cfg.lambda_b, cfg.lambda_p, multilabel=multilabel)
    n = len(feats.clean)
    targets = torch.from_numpy(feats.targets) if multilabel else torch.from_numpy(feats.targets.argmax(1))
    history = json.loads(state_path.read_text())["history"] if start else []
    for epoch in range(start, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])  # an epoch's batches do not depend on earlier epochs
        order = rng.permutation(n)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for b in range(0, n - 1, cfg.batch):
            idx = order[b : b + cfg.batch]
            if len(idx) < 2:
                continue
            v = rng.integers(feats.views.shape[1], size=len(idx))
            clean = torch.from_numpy(feats.clean[idx].astype(np.float32))
            view = torch.from_numpy(feats.views[idx, v].astype(np.float32))
            parts = loss_fn(model.forward_pyramid(clean), targets[idx], model.forward_pyramid(view))
            opt.zero_grad()
            parts.total.backward()
            opt.step()
            for k, val in parts.as_floats().items():
                sums[k] = sums.get(k, 0.0) + val * len(idx)
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 2), **{k: v / n for k, v in sums.items()}}
        history.append(record)
        model.eval()
        save_checkpoint(model, ckpt, {**(meta or {}), "train": asdict(cfg), "history": history})
        state_path.write_text(json.dumps({"epoch": epoch + 1, "config": asdict(cfg), "history": history}))
        model.train()
        if progress:
            progress(epoch + 1, record)
    return ckpt
