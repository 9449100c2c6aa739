"""`musichash evaluate`: every code method on the same labelled windows, scored by :mod:`musichash.train.evaluate`.

Items are 3 s windows: up to ``windows`` per file, evenly spaced over its
first ``max_minutes`` (on the backbone's 16-frame grid, cut from the conv
maps of the decoded audio as the engine cuts library segments). Each
backbone runs once per file; every code model reads its maps from that run.
Methods, all on the same items:

- ``float``: cosine kNN on the feature the interim binariser reads (MTT_vgg
  ``pool5``, flattened), centred on the items' mean;
- ``lsh-B``: seeded random hyperplanes through that centred feature;
- ``itq-B``: PCA + ITQ fitted, unsupervised, on the evaluated items'
  own features (the usual protocol for data-dependent baselines);
- ``interim-B``: the shipped ``interim_vgg_itq{B}`` code models;
- code models named by the caller (default: the default code model, unless
  it is one of the interim ones already): ``crnnh-B`` for CRNNH models,
  else their registry name.

Each item is a query against the items of the *other* files
(leave-one-file-out); relevance is a shared label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from musichash.devices import torch_device
from musichash.errors import MusichashError
from musichash.features.audio import AudioError, load_audio, log_mel
from musichash.models import DEFAULT_CODE_MODEL
from musichash.models.backbones import WINDOW_FRAMES
from musichash.models.encoder import CodeModel
from musichash.train import fit_binarizer
from musichash.train.data import Dataset
from musichash.train.evaluate import (
    DEFAULT_K,
    DEFAULT_RADIUS,
    Scores,
    relevant_counts,
    score,
    tie_order,
)

#: registry names of the shipped interim code models
INTERIM = "interim_vgg_itq{bits}"


class EvaluationError(MusichashError):
    """The labelled set cannot be evaluated as asked."""


@dataclass(frozen=True)
class EvalConfig:
    bits: tuple[int, ...] = (16, 32, 64)
    code_models: tuple[str, ...] = ()  # empty: the default code model
    windows: int = 16
    max_minutes: float = 3.0
    ks: tuple[int, ...] = DEFAULT_K
    radius: int = DEFAULT_RADIUS
    seed: int = 0


@dataclass(frozen=True)
class Items:
    """The evaluated windows.

    feature: float32 [n, D]          the reference feature (the interim binariser's input)
    codes: method -> uint8 [n, bits/8]  codes of every code model
    file: int32 [n]                  index into ``files``
    labels: bool [n, C]              the file's labels
    """

    feature: np.ndarray
    codes: dict[str, np.ndarray]
    file: np.ndarray
    labels: np.ndarray
    files: tuple[Path, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason)


@dataclass(frozen=True)
class MethodResult:
    method: str
    bits: int | None
    model: str
    scores: Scores


@dataclass(frozen=True)
class EvalReport:
    """R: per-query relevant counts of the evaluated queries (R >= 1)."""

    config: EvalConfig
    dataset: Dataset
    items: int
    files: int
    labels: int
    R: np.ndarray
    results: list[MethodResult] = field(default_factory=list)
    skipped_files: tuple[tuple[str, str], ...] = ()

    @property
    def skipped_queries(self) -> int:
        return self.items - len(self.R)


def code_models(cfg: EvalConfig, device: torch.device) -> list[tuple[str, CodeModel]]:
    """(method name, model): the interim models at each of ``cfg.bits``, then the caller's code models."""
    models = [(f"interim-{b}", CodeModel(INTERIM.format(bits=b), device)) for b in cfg.bits]
    names = {m.spec.name for _, m in models}
    taken = {method for method, _ in models}
    for name in cfg.code_models or (DEFAULT_CODE_MODEL,):
        model = CodeModel(name, device)
        if model.spec.name in names:
            continue  # already evaluated under its own name
        if model.spec.name == INTERIM.format(bits=model.bits):
            base = f"interim-{model.bits}"
        else:
            base = f"crnnh-{model.bits}" if model.spec.arch == "crnnh" else model.name
        method, i = base, 1
        while method in taken:  # two checkpoints of one size
            i += 1
            method = f"{base}#{i}"
        names.add(model.spec.name)
        taken.add(method)
        models.append((method, model))
    return models


def evaluate(
    dataset: Dataset, cfg: EvalConfig = EvalConfig(), device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Score every method on ``dataset`` (labelled: classes, csv or manifest). ``progress`` gets one message per file."""
    if dataset.targets is None:
        raise EvaluationError("evaluation needs labels; give class sub-folders, a CSV of tags or a manifest (--layout)")
    if not cfg.bits:
        raise EvaluationError("no code lengths to evaluate; give --bits")
    models = code_models(cfg, torch_device(device))
    items = extract_items(dataset, models, cfg, progress)
    n = len(items.file)
    R = relevant_counts(items.labels, items.file)
    if not (R > 0).any():
        raise EvaluationError(
            f"no window has a relevant window in another file ({len(set(items.file.tolist()))} files read); "
            "relevance needs a label shared by at least two files"
        )
    too_many = [b for b in cfg.bits if n <= b]
    if too_many:
        raise EvaluationError(
            f"{n} windows are too few to fit {max(too_many)}-bit ITQ (needs more than {max(too_many)}); "
            "add files or raise --windows"
        )
    tiebreak = tie_order(n, cfg.seed)
    ref_model = models[0][1]
    ref = f"{ref_model.spec.backbone} {ref_model.spec.feature}"
    x = items.feature
    methods: list[tuple[str, int | None, str, np.ndarray]] = [("float", None, ref, x - x.mean(axis=0))]
    for kind in ("lsh", "itq"):
        for b in cfg.bits:
            fitted = fit_binarizer.fit(x, b, kind=kind, seed=cfg.seed, feature=ref_model.spec.feature)
            methods.append((f"{kind}-{b}", b, f"{ref}, fitted on the evaluated windows", fitted.encode(x)))
    methods += [(method, m.bits, m.name, items.codes[method]) for method, m in models]
    results = [
        MethodResult(method, bits, model, score(emb, items.labels, items.file, ks=cfg.ks, radius=cfg.radius, tiebreak=tiebreak))
        for method, bits, model, emb in methods
    ]
    return EvalReport(
        config=cfg, dataset=dataset, items=n, files=len(set(items.file.tolist())),
        labels=int(items.labels.any(axis=0).sum()), R=R[R > 0], results=results, skipped_files=items.skipped,
    )


# ------------------------------------------------------------------ items


@torch.inference_mode()
def extract_items(
    dataset: Dataset, models: Sequence[tuple[str, CodeModel]], cfg: EvalConfig,
    progress: Callable[[str], None] | None = None,
) -> Items:
    """Windows of every file with the reference feature and every model's codes; files that cannot be decoded are skipped."""
    ref = models[0][1]
    groups: dict[str, list[tuple[str, CodeModel]]] = {}
    for method, m in models:
        # a head with fine-tuned blocks (a branch on its backbone) gets its backbone's own pass
        plain = getattr(m.backbone, "branch", None) is None
        groups.setdefault(m.spec.backbone if plain else f"{m.spec.backbone} ({method})", []).append((method, m))
    # the same file listed twice is one file: its windows must not match each other
    paths = [p.resolve() for p in dataset.files]
    file_id = {p: i for i, p in reversed(list(enumerate(paths)))}
    feature, codes, file, labels, skipped = [], {method: [] for method, _ in models}, [], [], []
    for i, path in enumerate(dataset.files):
        try:
            wave = load_audio(path, duration_s=cfg.max_minutes * 60)
        except AudioError as e:
            skipped.append((str(path), e.reason))
            if progress:
                progress(f"skipped {path}: {e.reason}")
            continue
        mel = torch.from_numpy(log_mel(wave)).to(ref.device)
        n = 0
        for name, members in groups.items():
            feats = _windows(members[0][1].backbone, mel, cfg.windows, _wanted(members, ref if name == ref.spec.backbone else None))
            for method, m in members:
                codes[method].append(np.packbits(m.head(feats) > 0, axis=1))
            if name == ref.spec.backbone:
                feature.append(feats[ref.spec.feature].flatten(1).float().cpu().numpy())
            n = next(iter(feats.values())).shape[0]
        file.append(np.full(n, file_id[paths[i]], dtype=np.int32))
        labels.append(np.repeat(dataset.targets[i][None] >= 0.5, n, axis=0))
        if progress:
            progress(f"{path.name}: {n} windows")
    if not file:
        raise EvaluationError(f"none of the {len(dataset.files)} files could be decoded; see the reasons above")
    return Items(
        feature=np.concatenate(feature), codes={k: np.concatenate(v) for k, v in codes.items()},
        file=np.concatenate(file), labels=np.concatenate(labels), files=tuple(dataset.files), skipped=tuple(skipped),
    )


def _wanted(members, ref: CodeModel | None) -> set[str]:
    want = set().union(*(m.head.features for _, m in members))
    return want | {ref.spec.feature} if ref is not None else want


def _windows(backbone, mel: torch.Tensor, windows: int, want: set[str]) -> dict[str, torch.Tensor]:
    """Maps of up to ``windows`` windows evenly spaced over ``mel: float [T, 96]``: name -> [n, ...].

    Windows lie on a grid of ``hop`` frames (a multiple of the backbone's
    stride) fine enough to hold ``windows + 1`` of them; the ``windows``
    picked are those nearest the centres of as many equal parts. When the
    windows are far apart each one gets its own conv pass over its frames
    and margins, so the frames between them are never computed.
    """
    span = mel.shape[0] - WINDOW_FRAMES
    hop = max(backbone.align, span // windows // backbone.align * backbone.align)
    alone = 1 if hop >= WINDOW_FRAMES + 2 * backbone.margin else None
    batches = list(backbone.iter_windows(mel, hop, chunk_windows=alone, features=want))
    total = sum(len(b.starts) for b in batches)
    pick = np.unique(((np.arange(min(windows, total)) + 0.5) * total / min(windows, total)).astype(int))
    out: dict[str, list[torch.Tensor]] = {k: [] for k in want}
    lo = 0
    for b in batches:
        mine = torch.from_numpy(pick[(pick >= lo) & (pick < lo + len(b.starts))] - lo)
        for k in want:
            out[k].append(b.features[k][mine.to(b.features[k].device)])
        lo += len(b.starts)
    return {k: torch.cat(v) for k, v in out.items()}


# ------------------------------------------------------------------ output


def report_json(r: EvalReport, source: str) -> dict:
    def num(v):
        return None if v is None else round(float(v), 4)

    return {
        "data": source, "layout": r.dataset.layout, "items": r.items, "files": r.files, "labels": r.labels,
        "windows_per_file": r.config.windows, "max_minutes": r.config.max_minutes, "seed": r.config.seed,
        "radius": r.config.radius, "k": list(r.config.ks),
        "queries": len(r.R), "queries_without_relevant": r.skipped_queries,
        "R": {"mean": num(r.R.mean()), "min": int(r.R.min()), "max": int(r.R.max())},
        "skipped_files": [{"path": p, "reason": why} for p, why in r.skipped_files],
        "methods": [
            {
                "method": m.method, "bits": m.bits, "model": m.model, "map_at_r": num(m.scores.map_at_r),
                "precision_at_k": {str(k): num(v) for k, v in m.scores.precision_at_k.items()},
                "precision_within_radius": num(m.scores.precision_within_radius), "empty_ball": num(m.scores.empty_ball),
            }
            for m in r.results
        ],
    }


def report_lines(r: EvalReport, source: str) -> list[str]:
    """The header line and the method table."""
    c = r.config
    skipped = f"; {r.skipped_queries} windows with R = 0 skipped" if r.skipped_queries else ""
    lines = [
        f"{source}: {r.items} windows (up to {c.windows} per file, first {c.max_minutes:g} min) of {r.files} files, "
        f"{r.labels} labels; R mean {r.R.mean():.1f}, min {r.R.min()}, max {r.R.max()}{skipped}"
    ]
    width = max(len("method"), *(len(m.method) for m in r.results))
    heads = ["mAP@R", *(f"P@{k}" for k in c.ks), f"P@r<={c.radius}", "empty"]
    lines.append(f"{'method':<{width}}  " + "  ".join(f"{h:>7}" for h in heads))
    for m in r.results:
        s = m.scores
        cells = [f"{s.map_at_r:.3f}", *(f"{s.precision_at_k[k]:.3f}" for k in c.ks)]
        cells += ["-", "-"] if s.precision_within_radius is None else [f"{s.precision_within_radius:.3f}", f"{s.empty_ball:.1%}"]
        lines.append(f"{m.method:<{width}}  " + "  ".join(f"{x:>7}" for x in cells))
    return lines
