"""Training and evaluation data: four layouts, one record.

- ``classes``: a folder of class sub-folders (GTZAN layout), one label per file;
- ``csv``: an MTT-style annotation CSV, a clip path column then binary tag
  columns (paths relative to the CSV's folder);
- ``manifest``: a JSON Lines manifest as ``benchmarks/corpus.py`` writes it,
  one object per file with ``path`` (relative to the manifest's folder) and
  ``labels``, e.g. ``{"composer": "bach", "instrument_family": "choir"}``;
  every ``key=value`` pair is one label (multi-label; a list value gives one
  label per element);
- ``unlabelled``: a folder of music, or the files of a manifest (its labels
  ignored); the targets are the pretrained tagger's tag probabilities of
  each window (soft, filled in by the feature cache), and positives are
  augmented views of the same window.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musichash.errors import MusichashError
from musichash.indexer.pipeline import scan

LAYOUTS = ("classes", "csv", "manifest", "unlabelled")


class DatasetError(MusichashError):
    """The training data cannot be read as the layout says."""


@dataclass(frozen=True)
class Dataset:
    """files: [n]; targets: float32 [n, n_classes] (multi-hot or one-hot), None when unlabelled."""

    layout: str
    files: tuple[Path, ...]
    names: tuple[str, ...]  # class or tag names
    targets: np.ndarray | None
    multilabel: bool

    def summary(self) -> dict:
        out = {"layout": self.layout, "files": len(self.files), "classes": len(self.names)}
        if self.targets is not None:
            out["per_class"] = {n: int(c) for n, c in zip(self.names, self.targets.sum(axis=0))}
        return out


def load_dataset(source: str | Path, layout: str) -> Dataset:
    source = Path(source)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if layout == "csv":
        return _from_csv(source)
    if layout == "manifest":
        return _from_manifest(source)
    if layout == "unlabelled" and source.suffix.lower() == ".jsonl" and source.is_file():
        return Dataset("unlabelled", _from_manifest(source).files, (), None, True)  # its files, without their labels
    if not source.is_dir():
        also = " or a .jsonl manifest" if layout == "unlabelled" else ""
        raise DatasetError(f"{source}: not a folder; the {layout} layout needs a folder of audio files{also}")
    if layout == "classes":
        return _from_classes(source)
    files, _ = scan([source])
    if not files:
        raise DatasetError(f"{source}: no audio files found (looked for {', '.join(('wav', 'flac', 'ogg', 'mp3'))}, ...)")
    return Dataset("unlabelled", tuple(files), (), None, True)


def guess_layout(source: str | Path) -> str:
    """The labelled layout of ``source``: a ``.jsonl`` file is a manifest, a ``.csv`` file a CSV, a folder has class sub-folders."""
    source = Path(source)
    if source.is_dir():
        return "classes"
    if source.suffix.lower() in (".jsonl", ".csv"):
        return "manifest" if source.suffix.lower() == ".jsonl" else "csv"
    raise DatasetError(
        f"{source}: cannot tell the layout; give a .jsonl manifest, a .csv annotation file or a folder of class "
        "sub-folders, or say which with --layout"
    )


def _from_classes(root: Path) -> Dataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"{root}: the classes layout needs at least 2 class sub-folders, found {len(classes)}")
    files, labels = [], []
    for i, c in enumerate(classes):
        found, _ = scan([root / c])
        files += found
        labels += [i] * len(found)
    if not files:
        raise DatasetError(f"{root}: no audio files in the class sub-folders")
    targets = np.eye(len(classes), dtype=np.float32)[labels]
    return Dataset("classes", tuple(files), tuple(classes), targets, False)


def _from_csv(path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"{path}: no such annotation file; give a CSV with a path column and 0/1 tag columns")
    with open(path, newline="", encoding="utf-8") as f:
        sample = f.read(4096)
        f.seek(0)
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;")
        rows = list(csv.reader(f, dialect))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DatasetError(f"{path}: needs a header row (path, tag1, tag2, ...) and at least one clip row")
    header, body = rows[0], rows[1:]
    names = tuple(h.strip() for h in header[1:])
    files, targets = [], []
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}:{n}: {len(row)} columns, the header has {len(header)}")
        try:
            t = [float(v) for v in row[1:]]
        except ValueError:
            raise DatasetError(f"{path}:{n}: tag columns must be 0 or 1") from None
        clip = (path.parent / row[0].strip()).resolve()
        if not clip.is_file():
            raise DatasetError(f"{path}:{n}: {clip} does not exist; paths are relative to the CSV's folder")
        files.append(clip)
        targets.append(t)
    return Dataset("csv", tuple(files), names, np.asarray(targets, dtype=np.float32), True)


def _from_manifest(path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"{path}: no such manifest; give a JSON Lines file with one {{\"path\": ..., \"labels\": {{...}}}} object per line")
    files, label_sets = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not a JSON object ({e.msg}); each line describes one file") from None
        if not (isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("labels"), dict)):
            raise DatasetError(f'{path}:{n}: needs "path" (a string) and "labels" (an object such as {{"genre": "jazz"}})')
        clip = (path.parent / row["path"]).resolve()
        if not clip.is_file():
            raise DatasetError(f"{path}:{n}: {clip} does not exist; paths are relative to the manifest's folder")
        files.append(clip)
        label_sets.append({f"{k}={v}" for k, vs in row["labels"].items() for v in (vs if isinstance(vs, list) else [vs])})
    if not files:
        raise DatasetError(f"{path}: the manifest lists no files")
    names = tuple(sorted(set().union(*label_sets)))
    column = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(files), len(names)), dtype=np.float32)
    for i, labels in enumerate(label_sets):
        targets[i, [column[x] for x in labels]] = 1.0
    return Dataset("manifest", tuple(files), names, targets, True)
