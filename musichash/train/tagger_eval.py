"""Scores of a tagger on held-out files, and a paired comparison of two taggers on the same files.

Songs are scored as a whole: each file's window probabilities are averaged (the
clip aggregation of the lab report; what ``Tagger.tag_file`` does too).
Tags: per-tag and macro ROC-AUC and PR-AUC (average precision); a tag with only
positives or only negatives among the files has no score and is left out of the
macro means (``undefined`` names them). Genres (one label a file): accuracy and
the confusion matrix.

The comparison is a paired bootstrap over files: both models' scores are
recomputed on the same resampled files, and ``p`` is the two-sided share of
resamples whose difference has the other sign (Efron & Tibshirani's
percentile test; the 2020 thesis used a paired t-test over runs instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def predict_files(model: nn.Module, mels: np.ndarray, owner: np.ndarray, n_files: int, multilabel: bool,
                  device: str | torch.device = "cpu", batch: int = 64) -> np.ndarray:
    """float64 [n_files, n_out]: mean over each file's windows of sigmoid (tags) or softmax (genres).
    mels: float16 [n, 187, 96]; owner: int64 [n]. Files without windows get NaN rows."""
    model.eval()
    total, count = None, np.zeros(n_files)
    with torch.inference_mode():
        for s in range(0, len(mels), batch):
            x = torch.from_numpy(mels[s : s + batch].astype(np.float32)).to(device)
            logits = model(x).float()
            p = (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).double().cpu().numpy()
            if total is None:
                total = np.zeros((n_files, p.shape[1]))
            np.add.at(total, owner[s : s + batch], p)
            np.add.at(count, owner[s : s + batch], 1)
    with np.errstate(invalid="ignore"):
        return total / count[:, None]


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve of scores ``s`` for 0/1 labels ``y`` (Mann-Whitney, ties count half); NaN
    without both classes."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(s, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    first = np.r_[True, sorted_s[1:] != sorted_s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + ends + 1) / 2.0  # 1-based ranks averaged within ties
    ranks = np.empty(len(s))
    ranks[order] = mean_rank[group]
    return ranks


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """PR-AUC as average precision (precision at each positive, ties broken against the positives); NaN
    without positives or without negatives."""
    y = np.asarray(y) > 0.5
    if y.all() or not y.any():
        return float("nan")
    order = np.lexsort((y, -np.asarray(s, dtype=np.float64)))  # among equal scores, negatives first
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@dataclass(frozen=True)
class TaggerScores:
    """Per-tag scores (NaN where undefined) and their macro means, or accuracy and confusion for genres.
    confusion: int [n_classes, n_classes], rows the true class."""

    names: tuple[str, ...]
    multilabel: bool
    n_files: int
    roc_auc: tuple[float, ...] = ()
    pr_auc: tuple[float, ...] = ()
    accuracy: float | None = None
    confusion: tuple[tuple[int, ...], ...] = ()

    @property
    def macro_roc_auc(self) -> float:
        return float(np.nanmean(self.roc_auc)) if self.roc_auc and not np.isnan(self.roc_auc).all() else float("nan")

    @property
    def macro_pr_auc(self) -> float:
        return float(np.nanmean(self.pr_auc)) if self.pr_auc and not np.isnan(self.pr_auc).all() else float("nan")

    @property
    def undefined(self) -> tuple[str, ...]:
        return tuple(n for n, a in zip(self.names, self.roc_auc) if np.isnan(a))

    def to_dict(self) -> dict:
        r = lambda v: None if v is None or np.isnan(v) else round(float(v), 6)  # noqa: E731
        out: dict = {"files": self.n_files, "multilabel": self.multilabel}
        if self.multilabel:
            out |= {"macro_roc_auc": r(self.macro_roc_auc), "macro_pr_auc": r(self.macro_pr_auc),
                    "per_tag": [{"tag": n, "roc_auc": r(a), "pr_auc": r(p)} for n, a, p in zip(self.names, self.roc_auc, self.pr_auc)],
                    "undefined": list(self.undefined)}
        else:
            out |= {"accuracy": r(self.accuracy), "classes": list(self.names), "confusion": [list(row) for row in self.confusion]}
        return out


def score(y: np.ndarray, probs: np.ndarray, names: tuple[str, ...], multilabel: bool) -> TaggerScores:
    """y: float [n, n_out] 0/1 targets; probs: float [n, n_out] (rows of NaN, files that failed, are left out)."""
    ok = ~np.isnan(probs).any(axis=1)
    y, probs = y[ok], probs[ok]
    if multilabel:
        return TaggerScores(names, True, len(y),
                            roc_auc=tuple(roc_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])),
                            pr_auc=tuple(average_precision(y[:, j], probs[:, j]) for j in range(y.shape[1])))
    truth, guess = y.argmax(axis=1), probs.argmax(axis=1)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (truth, guess), 1)
    return TaggerScores(names, False, len(y), accuracy=float((truth == guess).mean()) if len(y) else float("nan"),
                        confusion=tuple(tuple(int(v) for v in row) for row in confusion))


def headline(s: TaggerScores) -> float:
    """The one figure two models are compared by: macro ROC-AUC for tags, accuracy for genres."""
    return s.macro_roc_auc if s.multilabel else float(s.accuracy)


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` of the headline figure on the same files, with a bootstrap 95 % interval and two-sided p."""

    metric: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    resamples: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def compare(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, names: tuple[str, ...], multilabel: bool,
            resamples: int = 1000, seed: int = 0) -> PairedComparison:
    """Paired bootstrap over files of ``headline(a) - headline(b)``."""
    ok = ~(np.isnan(probs_a).any(axis=1) | np.isnan(probs_b).any(axis=1))
    y, probs_a, probs_b = y[ok], probs_a[ok], probs_b[ok]
    a = headline(score(y, probs_a, names, multilabel))
    b = headline(score(y, probs_b, names, multilabel))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        d = headline(score(y[i], probs_a[i], names, multilabel)) - headline(score(y[i], probs_b[i], names, multilabel))
        if not np.isnan(d):
            diffs.append(d)
    diffs = np.asarray(diffs)
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (float("nan"),) * 2)
    # two-sided: twice the share of resamples on the far side of zero (clipped to 1)
    p = min(1.0, 2.0 * min((diffs <= 0).mean(), (diffs >= 0).mean())) if len(diffs) else float("nan")
    return PairedComparison("macro_roc_auc" if multilabel else "accuracy", a, b, a - b, float(lo), float(hi), float(p), len(diffs))
