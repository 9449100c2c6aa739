"""Labelled data for ``musichash train-tagger``: the datasets' own layouts, splits and mel windows.

Layouts (besides ``classes``, ``csv`` and ``manifest`` of ``train.data``):

- ``mtt``: MagnaTagATune as distributed: a folder with ``annotations_final.csv``
  (tab-separated: ``clip_id``, 188 tag columns, ``mp3_path``) and the mp3
  folders ``0`` .. ``f``. The usual 50 most frequent tags, and the usual split
  (folders ``0``-``b`` train, ``c`` validation, ``d``-``f`` test; Dieleman &
  Schrauwen 2014, Pons et al. 2018).
- ``gtzan``: a folder of genre sub-folders (``classes``), with ``--split`` to use
  a published split instead of a random one: the artist- or fault-filtered
  splits matter because GTZAN repeats artists and clips (Sturm 2013).
- ``fma``: the Free Music Archive: a folder holding ``tracks.csv`` (or
  ``fma_metadata/tracks.csv``) and one audio folder ``fma_small`` (or
  ``fma_medium`` / ``fma_large`` / ``fma_full``); the label is ``genre_top``, the
  split the metadata's own ``set/split`` column, and only tracks of the audio
  folder's subset are used.

A split file (``--split``) has one ``PATH SPLIT`` pair a line (``SPLIT`` is
``train``, ``valid`` or ``test``; paths relative to the data folder), or it is
a folder of ``train*.txt`` / ``valid*.txt`` / ``test*.txt`` lists of paths (the
format of the published GTZAN splits). Files it does not name are left out.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musichash.features.audio import AudioError, iter_audio_blocks, iter_mel_blocks
from musichash.models.backbones import WINDOW_FRAMES
from musichash.train.data import DatasetError, load_dataset

TAGGER_LAYOUTS = ("mtt", "gtzan", "fma", "classes", "csv", "manifest")
SPLITS = ("train", "valid", "test")
MTT_TOP = 50
_MTT_SPLIT = {**{c: "train" for c in "0123456789ab"}, "c": "valid", **{c: "test" for c in "def"}}
_FMA_SUBSETS = ("small", "medium", "large", "full")


@dataclass(frozen=True)
class LabelledSet:
    """files: [n]; targets: float32 [n, n_out] (multi-hot, or one-hot when not ``multilabel``);
    split: one of ``SPLITS`` per file, or None where the data has no split of its own."""

    layout: str
    root: Path
    files: tuple[Path, ...]
    names: tuple[str, ...]
    targets: np.ndarray
    multilabel: bool
    split: tuple[str, ...] | None

    def subset(self, which: str) -> np.ndarray:
        """Indices of the files in split ``which``."""
        assert self.split is not None
        return np.array([i for i, s in enumerate(self.split) if s == which], dtype=np.int64)


def guess_tagger_layout(source: Path) -> str:
    if source.is_dir():
        if (source / "annotations_final.csv").is_file():
            return "mtt"
        if (source / "tracks.csv").is_file() or (source / "fma_metadata" / "tracks.csv").is_file():
            return "fma"
        return "gtzan"
    suffix = source.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        return "csv" if suffix == ".csv" else "manifest"
    raise DatasetError(f"{source}: cannot tell the layout; give a dataset folder, a .csv or a .jsonl, or say which with --layout")


def load_labelled(source: str | Path, layout: str = "auto", split_file: str | Path | None = None,
                  seed: int = 0) -> LabelledSet:
    """The files, labels and split of a dataset. Data without a split of its own (and no ``split_file``)
    is split at random, seeded: 70 % train, 10 % valid, 20 % test."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    if layout == "auto":
        layout = guess_tagger_layout(source)
    if layout not in TAGGER_LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of: {', '.join(TAGGER_LAYOUTS)}")
    if layout == "mtt":
        data = _mtt(source)
    elif layout == "fma":
        data = _fma(source)
    else:
        d = load_dataset(source, "classes" if layout == "gtzan" else layout)
        root = source if source.is_dir() else source.parent
        data = LabelledSet(layout, root, d.files, d.names, d.targets, d.multilabel, None)
    if split_file is not None:
        data = _apply_split(data, Path(split_file))
    if data.split is None:
        order = np.random.default_rng(seed).permutation(len(data.files))
        split = np.empty(len(data.files), dtype=object)
        n_test, n_valid = max(1, round(0.2 * len(order))), max(1, round(0.1 * len(order)))
        split[order[:n_test]], split[order[n_test:n_test + n_valid]], split[order[n_test + n_valid:]] = "test", "valid", "train"
        data = LabelledSet(data.layout, data.root, data.files, data.names, data.targets, data.multilabel, tuple(split))
    return data


def _mtt(root: Path) -> LabelledSet:
    path = root / "annotations_final.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if len(rows) < 2 or rows[0][0] != "clip_id" or rows[0][-1] != "mp3_path":
        raise DatasetError(f"{path}: not MagnaTagATune's annotations (tab-separated clip_id, tags..., mp3_path)")
    header, body = rows[0], [r for r in rows[1:] if r]
    tags = header[1:-1]
    try:
        y = np.asarray([[int(v) for v in r[1:-1]] for r in body], dtype=np.float32)
    except ValueError:
        raise DatasetError(f"{path}: tag columns must be 0 or 1") from None
    top = np.argsort(-y.sum(axis=0), kind="stable")[:MTT_TOP]
    files, split = [], []
    for r in body:
        clip = root / r[-1]
        if not clip.is_file() and (root / "mp3" / r[-1]).is_file():
            clip = root / "mp3" / r[-1]
        files.append(clip)
        split.append(_MTT_SPLIT.get(r[-1][:1].lower(), "train"))
    _check_exist(files, path, "the mp3 folders 0 .. f must sit next to annotations_final.csv")
    return LabelledSet("mtt", root, tuple(files), tuple(tags[i] for i in top), y[:, top], True, tuple(split))


def _fma(root: Path) -> LabelledSet:
    meta = root / "tracks.csv" if (root / "tracks.csv").is_file() else root / "fma_metadata" / "tracks.csv"
    audio = next(((root / f"fma_{s}", s) for s in _FMA_SUBSETS if (root / f"fma_{s}").is_dir()), None)
    if audio is None:
        raise DatasetError(f"{root}: no fma_small (or fma_medium, fma_large, fma_full) audio folder next to {meta.name}")
    folder, subset = audio
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 4:
        raise DatasetError(f"{meta}: not FMA's tracks.csv (three header rows, then one row per track)")
    cols = {(a, b): i for i, (a, b) in enumerate(zip(rows[0], rows[1]))}
    need = [("set", "split"), ("set", "subset"), ("track", "genre_top")]
    missing = [f"{a}/{b}" for a, b in need if (a, b) not in cols]
    if missing:
        raise DatasetError(f"{meta}: missing columns {', '.join(missing)}; is it FMA's tracks.csv?")
    keep = _FMA_SUBSETS[: _FMA_SUBSETS.index(subset) + 1]  # fma_medium holds the small subset too, and so on
    files, genres, split = [], [], []
    for r in rows[3:]:
        genre, sub, sp = r[cols[("track", "genre_top")]], r[cols[("set", "subset")]], r[cols[("set", "split")]]
        if not genre or sub not in keep:
            continue
        tid = f"{int(r[0]):06d}"
        files.append(folder / tid[:3] / f"{tid}.mp3")
        genres.append(genre)
        split.append({"training": "train", "validation": "valid"}.get(sp, sp))
    if not files:
        raise DatasetError(f"{meta}: no tracks of the {subset} subset with a genre_top")
    _check_exist(files, meta, f"the audio of the {subset} subset must be in {folder}")
    names = tuple(sorted(set(genres)))
    targets = np.eye(len(names), dtype=np.float32)[[names.index(g) for g in genres]]
    return LabelledSet("fma", root, tuple(files), names, targets, False, tuple(split))


def _check_exist(files: list[Path], source: Path, fix: str) -> None:
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DatasetError(f"{source}: {len(missing)} of {len(files)} audio files are missing, e.g. {missing[0]}; {fix}")


def _apply_split(data: LabelledSet, split_file: Path) -> LabelledSet:
    assigned: dict[Path, str] = {}
    if split_file.is_dir():
        for which in SPLITS:
            for lst in sorted(split_file.glob(f"{which}*.txt")):
                for line in lst.read_text(encoding="utf-8").split("\n"):
                    if line.strip():
                        assigned[(data.root / line.strip()).resolve()] = which
    elif split_file.is_file():
        for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = re.split(r"[\t,]|\s+(?=\S+$)", line.strip())
            if len(parts) != 2 or parts[1].strip() not in SPLITS:
                raise DatasetError(f"{split_file}:{n}: expected 'PATH SPLIT' with SPLIT one of {', '.join(SPLITS)}")
            assigned[(data.root / parts[0].strip()).resolve()] = parts[1].strip()
    else:
        raise DatasetError(f"{split_file}: no such split file or folder")
    keep = [i for i, f in enumerate(data.files) if Path(f).resolve() in assigned]
    if not keep:
        raise DatasetError(f"{split_file}: names none of the {len(data.files)} files; paths are relative to {data.root}")
    for which in ("train", "test"):
        if not any(assigned[Path(data.files[i]).resolve()] == which for i in keep):
            raise DatasetError(f"{split_file}: no {which} files among those it names")
    return LabelledSet(data.layout, data.root, tuple(data.files[i] for i in keep), data.names, data.targets[keep],
                       data.multilabel, tuple(assigned[Path(data.files[i]).resolve()] for i in keep))


@dataclass(frozen=True)
class Windows:
    """Model log-mel windows of a set of files. mels: float16 [n, 187, 96]; file: int64 [n] (index into the set's files)."""

    mels: np.ndarray
    file: np.ndarray
    failed: tuple[str, ...]


def mel_windows(files: tuple[Path, ...], max_windows: int = 8, device: str = "cpu",
                progress: Callable[[int, int], None] | None = None) -> Windows:
    """Up to ``max_windows`` non-overlapping 3 s windows of each file, evenly spread over it (a file shorter
    than a window gives one, zero-padded). Files that cannot be decoded are skipped and named in ``failed``."""
    mels, owner, failed = [], [], []
    for i, path in enumerate(files):
        try:
            mel = np.concatenate(list(iter_mel_blocks(iter_audio_blocks(path), device=device)))
        except (AudioError, OSError) as e:
            failed.append(f"{path}: {e}")
            continue
        if len(mel) < WINDOW_FRAMES:
            mel = np.pad(mel, ((0, WINDOW_FRAMES - len(mel)), (0, 0)))
        n = min(max_windows, len(mel) // WINDOW_FRAMES)
        starts = np.linspace(0, len(mel) - WINDOW_FRAMES, n).round().astype(int) if n > 1 else [0]
        for s in starts:
            mels.append(mel[s : s + WINDOW_FRAMES].astype(np.float16))
            owner.append(i)
        if progress is not None:
            progress(i + 1, len(files))
    if not mels:
        raise DatasetError(f"none of the {len(files)} files could be decoded, e.g. {failed[0] if failed else '?'}")
    return Windows(np.stack(mels), np.asarray(owner, dtype=np.int64), tuple(failed))
