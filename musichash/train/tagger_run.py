"""What ``musichash train-tagger`` and ``evaluate-tagger`` run: data in, checkpoint or scores out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musichash.models.taggers import load_tagger
from musichash.train.data import DatasetError
from musichash.train.tagger import EpochRecord, TaggerTrainConfig, TaggerTrainReport, train_tagger, windows_digest
from musichash.train.tagger_data import LabelledSet, Windows, load_labelled, mel_windows
from musichash.train.tagger_eval import PairedComparison, TaggerScores, compare, predict_files, score


def prepare(data: str | Path, layout: str, split_file: str | Path | None, seed: int, max_windows: int,
            which: tuple[str, ...] = ("train", "valid", "test"), device: str = "cpu",
            progress: Callable[[int, int], None] | None = None) -> tuple[LabelledSet, Windows]:
    """The labelled set and the mel windows of its files in the splits ``which`` (other files get none)."""
    labelled = load_labelled(data, layout, split_file, seed)
    wanted = [i for i, s in enumerate(labelled.split) if s in which]
    w = mel_windows(tuple(labelled.files[i] for i in wanted), max_windows, device, progress)
    return labelled, Windows(w.mels, np.asarray(wanted, dtype=np.int64)[w.file], w.failed)


def run_train(data: str | Path, arch: str, out: str | Path, cfg: TaggerTrainConfig, layout: str = "auto",
              split_file: str | Path | None = None, max_windows: int = 8, device: str = "cpu",
              progress: Callable[[int, int], None] | None = None,
              on_epoch: Callable[[EpochRecord], None] | None = None) -> tuple[TaggerTrainReport, Windows]:
    labelled, windows = prepare(data, layout, split_file, cfg.seed, max_windows, ("train", "valid"), device, progress)
    provenance = {"data": str(Path(data).resolve()), "split_file": None if split_file is None else str(split_file),
                  "max_windows": max_windows, "windows_sha256": windows_digest(windows)}
    return train_tagger(labelled, windows, arch, out, cfg, device, provenance, on_epoch), windows


@dataclass(frozen=True)
class TaggerEvaluation:
    checkpoint: str
    scores: TaggerScores
    against: str | None = None
    against_scores: TaggerScores | None = None
    comparison: PairedComparison | None = None
    failed: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"checkpoint": self.checkpoint, **self.scores.to_dict(), "undecodable": list(self.failed)}
        if self.against is not None:
            out["against"] = {"checkpoint": self.against, **self.against_scores.to_dict()}
            out["comparison"] = self.comparison.to_dict()
        return out


def run_evaluate(checkpoint: str | Path, data: str | Path, layout: str = "auto", split_file: str | Path | None = None,
                 against: str | Path | None = None, seed: int | None = None, max_windows: int = 8, resamples: int = 1000,
                 device: str = "cpu", progress: Callable[[int, int], None] | None = None) -> TaggerEvaluation:
    """Scores of ``checkpoint`` on the test split of ``data`` (the split seed: the checkpoint's own, so a
    random split is the one it was trained beside), and a paired bootstrap against ``against``."""
    ckpts = [load_tagger(checkpoint, device)] + ([load_tagger(against, device)] if against is not None else [])
    if seed is None:
        seed = int(ckpts[0].meta.get("train", {}).get("seed", 0))
    labelled, windows = prepare(data, layout, split_file, seed, max_windows, ("test",), device, progress)
    for c, path in zip(ckpts, (checkpoint, against)):
        if c.names != labelled.names:
            raise DatasetError(f"{path} was trained on other labels ({len(c.names)}: {', '.join(c.names[:5])}, ...) "
                               f"than {data} has ({len(labelled.names)}: {', '.join(labelled.names[:5])}, ...)")
    test = np.flatnonzero(np.asarray(labelled.split) == "test")
    pos = {f: k for k, f in enumerate(test)}
    owner = np.asarray([pos[f] for f in windows.file])
    y = labelled.targets[test]
    probs = [predict_files(c.model, windows.mels, owner, len(test), labelled.multilabel, device) for c in ckpts]
    scores = [score(y, p, labelled.names, labelled.multilabel) for p in probs]
    if against is None:
        return TaggerEvaluation(str(checkpoint), scores[0], failed=windows.failed)
    comparison = compare(y, probs[0], probs[1], labelled.names, labelled.multilabel, resamples, seed)
    return TaggerEvaluation(str(checkpoint), scores[0], str(against), scores[1], comparison, windows.failed)
