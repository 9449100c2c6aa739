"""The FAISS files under ``index/``: a cache derived from codes.h5, rebuilt when stale.

``index/`` holds ``segments.faiss`` (segment codes, ids = row of the segment
table), ``segment_codes.npy`` (the same codes by row, memory-mapped, for re-ranking
a query's neighbours), ``segments.npz`` (each row's track id and start time, and the stamp
they were built from), ``tracks.faiss`` (track codes, ids = track ids) and
``config.json`` (the index kind and its parameters, set by ``reindex``). The
store's ``stamp()`` changes whenever its valid codes do; a cache built from
another stamp is rebuilt on the next search. A reader that cannot write the
folder builds the index in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musichash.indexer.store import LibraryStore
from musichash.search.faiss_index import BinaryIndex, IndexConfig, SearchError

INDEX_DIR = "index"
_SEGMENTS, _TABLE, _TRACKS, _CONFIG = "segments.faiss", "segments.npz", "tracks.faiss", "config.json"
_CODES = "segment_codes.npy"


@dataclass
class SearchIndex:
    """Everything a query needs, for one stamp of the library.

    seg_track: int64 [N], seg_time: float32 [N], seg_codes: uint8 [N, bits/8] -- row i of
    the segment index (seg_codes may be memory-mapped).
    """

    segments: BinaryIndex
    seg_track: np.ndarray
    seg_time: np.ndarray
    seg_codes: np.ndarray
    tracks: BinaryIndex
    stamp: str
    rebuilt: bool = False
    #: track codes in track id order (for scoring candidates exactly)
    track_ids: np.ndarray = dataclasses.field(init=False, repr=False)
    track_xb: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        xb, ids = self.tracks._codes_and_ids()
        order = np.argsort(ids, kind="stable")
        self.track_ids, self.track_xb = ids[order], xb[order]

    def track_code(self, track_id: int) -> np.ndarray | None:
        """``uint8 [bits/8]`` code of a track, None if it is not indexed."""
        i = int(np.searchsorted(self.track_ids, track_id))
        if i < len(self.track_ids) and self.track_ids[i] == track_id:
            return self.track_xb[i]
        return None


#: below this many segments (about 5k tracks of 4 min) an exact flat scan answers a
#: 10 s query in under ~30 ms; above it IVF does (benchmarks/HISTORY.md, search at scale)
AUTO_IVF_SEGMENTS = 1_000_000


def read_config(folder: Path, bits: int) -> IndexConfig | None:
    """The index settings chosen with ``reindex --index-type``, or None (automatic)."""
    path = folder / INDEX_DIR / _CONFIG
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return IndexConfig(**{**raw, "bits": bits})
    except (ValueError, TypeError) as e:
        raise SearchError(f"{path}: unreadable index settings ({e}); fix it with `musichash reindex --index-type flat`") from None


def choose_config(folder: Path, bits: int, n_segments: int) -> IndexConfig:
    """The segment index to build: the saved choice, else flat up to AUTO_IVF_SEGMENTS and IVF above.

    IVF needs codes to train on, so a chosen IVF falls back to flat below 10 000 segments.
    """
    config = read_config(folder, bits)
    if config is None:
        return IndexConfig("ivf" if n_segments >= AUTO_IVF_SEGMENTS else "flat", bits=bits)
    if config.kind == "ivf" and n_segments < _MIN_IVF_SEGMENTS:
        return IndexConfig("flat", bits=bits)
    return config


#: from this many tracks the track codes (``similar``, ``recommend``) go to IVF too, unless the
#: library chose flat: a flat scan of 1M track codes takes 1-2.3 ms on this 2-core machine (it reads
#: 8 MB), IVF with ``TRACK_NPROBE`` of its 1024 lists 0.25 ms at a tie-aware recall@10 of 0.995 on
#: bench_scale's synthetic codes (nprobe 64: 0.14 ms, 0.981); BENCHMARKS.md, search core
AUTO_IVF_TRACKS = 500_000
TRACK_NPROBE = 128


def track_config(folder: Path, bits: int, n_tracks: int) -> IndexConfig:
    """The track index to build: flat, or IVF from AUTO_IVF_TRACKS tracks when the library did not choose flat."""
    config = read_config(folder, bits)
    if n_tracks >= max(AUTO_IVF_TRACKS, _MIN_IVF_SEGMENTS) and (config is None or config.kind != "flat"):
        return IndexConfig("ivf", bits=bits, nprobe=TRACK_NPROBE)
    return IndexConfig("flat", bits=bits)


def write_config(folder: Path, config: IndexConfig) -> None:
    raw = {k: v for k, v in dataclasses.asdict(config).items() if k != "bits"}
    _atomic_write(folder / INDEX_DIR / _CONFIG, json.dumps(raw, indent=1).encode())


def load_or_build(store: LibraryStore, device: str = "auto", *, force: bool = False) -> SearchIndex:
    """The library's search index: from ``index/`` when it matches the store, else rebuilt (and saved if possible)."""
    folder = Path(store.folder)
    stamp = store.stamp()
    if not force:
        cached = _load(folder / INDEX_DIR, stamp, device)
        if cached is not None:
            return cached
    table = store.iter_segment_codes()
    seg_config = choose_config(folder, store.bits, len(table.codes))
    segments = BinaryIndex.build(table.codes, np.arange(len(table.codes), dtype=np.int64), seg_config, device)
    ids, codes = store.track_codes()
    tracks = BinaryIndex.build(codes, ids, track_config(folder, store.bits, len(codes)), device)
    index = SearchIndex(segments, table.track_ids, table.times, table.codes, tracks, stamp, rebuilt=True)
    if os.access(folder, os.W_OK):
        _save(folder / INDEX_DIR, index)
    return index


_MIN_IVF_SEGMENTS = 10_000


def _load(d: Path, stamp: str, device: str) -> SearchIndex | None:
    try:
        with np.load(d / _TABLE) as z:
            if str(z["stamp"]) != stamp:
                return None
            seg_track, seg_time = z["track_ids"], z["times"]
        seg_codes = np.load(d / _CODES, mmap_mode="r")
        segments = BinaryIndex.load(d / _SEGMENTS, device)
        tracks = BinaryIndex.load(d / _TRACKS, device)
    except (OSError, KeyError, ValueError, SearchError):
        return None  # missing, half-written by a concurrent builder, or stale: rebuild
    n = len(seg_track)
    if segments.ntotal != n or seg_codes.shape != (n, segments.bits // 8):
        return None  # half-written, or written by a musichash without segment_codes.npy
    if segments.kind != choose_config(d.parent, segments.bits, n).kind or tracks.kind != track_config(d.parent, tracks.bits, tracks.ntotal).kind:
        return None  # the settings changed
    return SearchIndex(segments, seg_track, seg_time, seg_codes, tracks, stamp)


def _save(d: Path, index: SearchIndex) -> None:
    d.mkdir(exist_ok=True)
    index.segments.save(d / _SEGMENTS)
    index.tracks.save(d / _TRACKS)
    codes = d / f".{_CODES}.{os.getpid()}.tmp.npy"
    try:
        np.save(codes, np.ascontiguousarray(index.seg_codes))
        os.replace(codes, d / _CODES)
    finally:
        codes.unlink(missing_ok=True)
    tmp = d / f".{_TABLE}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, track_ids=index.seg_track, times=index.seg_time, stamp=np.array(index.stamp))
        os.replace(tmp, d / _TABLE)  # last: the stamp vouches for the files before it
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
