"""``musichash train-tagger``: train a named architecture (``models.taggers``) on labelled music.

Seeded and resumable: after every epoch the weights (safetensors), the
optimiser's state (``NAME.state.safetensors``) and the config, history and
provenance (``NAME.json``) are written; run the same command again and it goes
on from the last finished epoch. Multi-label data is trained with binary
cross-entropy whose positives weigh ``penalty`` times as much as negatives (the
2020 thesis' penalty factor: tags are sparse); one label a file with softmax
cross-entropy. The learning rate drops tenfold when the validation loss stops
improving for ``patience`` epochs (the thesis' dynamic learning rate). On CUDA
the forward and backward passes run under bfloat16 autocast.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from musichash import __version__
from musichash.errors import MusichashError
from musichash.models.taggers import arch_spec, build_tagger, load_tagger, n_parameters, save_tagger, sidecar
from musichash.train.tagger_data import LabelledSet, Windows
from musichash.train.tagger_eval import headline, predict_files, score


class TaggerTrainError(MusichashError):
    """The checkpoint to resume does not fit the run asked for."""


@dataclass(frozen=True)
class TaggerTrainConfig:
    epochs: int = 20
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: weight of positive targets in the multi-label loss
    penalty: float = 1.0
    patience: int = 2
    seed: int = 0


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    val_loss: float
    val_score: float  # macro ROC-AUC (tags) or accuracy (genres) of the validation files
    lr: float
    seconds: float


@dataclass(frozen=True)
class TaggerTrainReport:
    checkpoint: Path
    arch_name: str
    parameters: int
    epochs: int
    resumed_from: int
    history: tuple[EpochRecord, ...]


def state_path(out: Path) -> Path:
    return out.with_suffix(".state.safetensors")


def train_tagger(data: LabelledSet, windows: Windows, arch_name: str, out: str | Path, cfg: TaggerTrainConfig,
                 device: str | torch.device = "cpu", provenance: dict | None = None,
                 on_epoch: Callable[[EpochRecord], None] | None = None) -> TaggerTrainReport:
    """Train (or go on training) ``arch_name`` on ``data``'s train split, scored on its valid split.
    windows: the mel windows of ``data.files`` (``tagger_data.mel_windows``)."""
    out = Path(out)
    spec = arch_spec(arch_name)
    device = torch.device(device)
    model = build_tagger(spec.arch, spec.config, len(data.names), seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=cfg.patience)
    history: list[dict] = []
    start = 0
    if out.is_file():
        start, history = _resume(out, arch_name, data, model, opt, sched, device)
    split = np.asarray(data.split)
    train_idx = np.flatnonzero(split[windows.file] == "train")
    valid_files = set(np.flatnonzero(split == "valid").tolist())
    valid_idx = np.flatnonzero([f in valid_files for f in windows.file])
    if len(train_idx) == 0:
        raise TaggerTrainError("no training windows: the split has no decodable train files")
    targets = torch.from_numpy(data.targets).to(device)
    loss_fn = _loss(data.multilabel, cfg.penalty, len(data.names), device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])  # per epoch: a resumed run draws the same batches
        torch.manual_seed(cfg.seed * 1000 + epoch)
        order = rng.permutation(train_idx)
        total, n = 0.0, 0
        for s in range(0, len(order), cfg.batch):
            idx = order[s : s + cfg.batch]
            if len(idx) < 2:
                continue  # batch norm needs two windows
            x = torch.from_numpy(windows.mels[idx].astype(np.float32)).to(device)
            with autocast:
                loss = loss_fn(model(x).float(), targets[windows.file[idx]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        val_loss, val_score = _validate(model, data, windows, valid_idx, loss_fn, targets, device)
        sched.step(val_loss if not np.isnan(val_loss) else total / max(n, 1))
        rec = EpochRecord(epoch + 1, total / max(n, 1), val_loss, val_score, opt.param_groups[0]["lr"], time.perf_counter() - t0)
        history.append(asdict(rec))
        meta = {
            "arch_name": arch_name, "arch": spec.arch, "config": spec.config, "names": list(data.names),
            "multilabel": data.multilabel, "epoch": epoch + 1, "train": asdict(cfg), "history": history,
            "parameters": n_parameters(model), "scheduler": _plain(sched.state_dict()),
            "provenance": {
                **(provenance or {}), "layout": data.layout, "files": len(data.files),
                "split_files": {w: int((split == w).sum()) for w in ("train", "valid", "test")},
                "windows": len(windows.mels), "undecodable": len(windows.failed),
                "musichash": __version__, "torch": torch.__version__, "device": str(device), "machine": platform.machine(),
            },
        }
        _save_state(state_path(out), opt)
        save_tagger(out, model, meta)
        if on_epoch is not None:
            on_epoch(rec)
    return TaggerTrainReport(out, arch_name, n_parameters(model), cfg.epochs, start, tuple(EpochRecord(**h) for h in history))


def _loss(multilabel: bool, penalty: float, n_out: int, device: torch.device) -> Callable:
    if multilabel:
        return nn.BCEWithLogitsLoss(pos_weight=torch.full((n_out,), float(penalty), device=device))
    ce = nn.CrossEntropyLoss()
    return lambda logits, y: ce(logits, y.argmax(dim=1))


@torch.no_grad()
def _validate(model, data, windows, valid_idx, loss_fn, targets, device) -> tuple[float, float]:
    if len(valid_idx) == 0:
        return float("nan"), float("nan")
    model.eval()
    losses = []
    for s in range(0, len(valid_idx), 64):
        idx = valid_idx[s : s + 64]
        x = torch.from_numpy(windows.mels[idx].astype(np.float32)).to(device)
        losses.append(float(loss_fn(model(x).float(), targets[windows.file[idx]])) * len(idx))
    probs = predict_files(model, windows.mels[valid_idx], windows.file[valid_idx], len(data.files), data.multilabel, device)
    return sum(losses) / len(valid_idx), headline(score(data.targets, probs, data.names, data.multilabel))


def _resume(out: Path, arch_name: str, data: LabelledSet, model, opt, sched, device) -> tuple[int, list[dict]]:
    ckpt = load_tagger(out, device)
    meta = ckpt.meta
    if meta.get("arch_name") != arch_name or tuple(meta["names"]) != data.names:
        raise TaggerTrainError(
            f"{out} holds {meta.get('arch_name')} trained on {len(meta['names'])} other labels; "
            "to start afresh give another --out or delete it and its .json")
    model.load_state_dict(ckpt.model.state_dict())
    st = state_path(out)
    if st.is_file():
        _load_state(st, opt, device)
    if "scheduler" in meta:
        sched.load_state_dict(meta["scheduler"])
    return int(meta["epoch"]), list(meta.get("history", []))


def _plain(state: dict) -> dict:
    """A scheduler's state with only JSON values (no tensors, infinities as floats json writes)."""
    return {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, list, type(None)))}


def _save_state(path: Path, opt: torch.optim.Optimizer) -> None:
    """The optimiser's tensors as safetensors (``{param}.{key}``); its hyper-parameters go in the metadata."""
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
               for i, st in sd["state"].items() for k, v in st.items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"param_groups": repr(groups)})
    tmp.replace(path)


def _load_state(path: Path, opt: torch.optim.Optimizer, device) -> None:
    import ast

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        groups = ast.literal_eval(f.metadata()["param_groups"])
    tensors = load_file(str(path), device=str(device))
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v.cpu() if k == "step" else v
    sd = opt.state_dict()
    for g, saved in zip(sd["param_groups"], groups):
        g.update({k: v for k, v in saved.items() if k in g})
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def windows_digest(windows: Windows) -> str:
    """What the model saw: sha256 (16 hex digits) of the windows' mels and owners."""
    import hashlib

    h = hashlib.sha256(windows.mels.tobytes())
    h.update(windows.file.tobytes())
    return h.hexdigest()[:16]


__all__ = ["TaggerTrainConfig", "TaggerTrainReport", "EpochRecord", "train_tagger", "state_path", "sidecar", "windows_digest"]
