"""The FAISS files under ``index/``: a cache derived from codes.h5, rebuilt when stale.

``index/`` holds ``segments.faiss`` (segment codes, ids = row of the segment
table), ``segment_codes.npy`` (the same codes by row, memory-mapped, for re-ranking
a query's neighbours), ``segments.npz`` (each row's track id and start time, and the stamp
they were built from), ``tracks.faiss`` (track codes, ids = track ids) and
``config.json`` (the index kind and its parameters, set by ``reindex``). A library of N > 1
shards has ``segments.NNN.faiss`` instead of ``segments.faiss``, one a shard (``search.shards``). The
store's ``stamp()`` changes whenever its valid codes do; a cache built from
another stamp is rebuilt on the next search. A reader that cannot write the
folder (``records.folder_writable``) builds the index in memory.

``segments.npz``, written last, also records the size and CRC-32 of the other three
files, and the tracks left out because their codes were damaged. Every load checks
them (CRC-32: 2.4 GB/s here, a few ms for a 5k-track library), and a cache that fails,
or any file of which cannot be read, is rebuilt from codes.h5 as a stale one is:
a flipped bit in ``segment_codes.npy`` would otherwise change scores silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from musichash.indexer import records
from musichash.indexer.store import LibraryStore
from musichash.search.faiss_index import BinaryIndex, IndexConfig, SearchError
from musichash.search.shards import ShardedIndex, build_segments, combined_kind, shard_config, shard_count

INDEX_DIR = "index"
_SEGMENTS, _TABLE, _TRACKS, _CONFIG = "segments.faiss", "segments.npz", "tracks.faiss", "config.json"
_CODES = "segment_codes.npy"


@dataclass
class SearchIndex:
    """Everything a query needs, for one stamp of the library.

    seg_track: int64 [N], seg_time: float32 [N], seg_codes: uint8 [N, bits/8] -- row i of
    the segment index (seg_codes may be memory-mapped).
    """

    segments: BinaryIndex | ShardedIndex
    seg_track: np.ndarray
    seg_time: np.ndarray
    seg_codes: np.ndarray
    tracks: BinaryIndex
    stamp: str
    rebuilt: bool = False
    #: tracks left out because their stored codes are damaged (``LibraryStore.damaged``)
    left_out: frozenset[int] = frozenset()
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

    def without(self, track_ids: Iterable[int]) -> SearchIndex:
        """This index less the segments and codes of ``track_ids`` (found damaged), rebuilt in memory."""
        drop = self.left_out | {int(t) for t in track_ids}
        rows = np.flatnonzero(~np.isin(self.seg_track, np.fromiter(drop, np.int64)))
        seg_codes = np.ascontiguousarray(self.seg_codes[rows])
        segments = build_segments(seg_codes, self.seg_track[rows], self.segments.config, self.segments.device,
                                  shard_count(self.segments))
        keep = ~np.isin(self.track_ids, np.fromiter(drop, np.int64))
        tracks = BinaryIndex.build(self.track_xb[keep], self.track_ids[keep], self.tracks.config, self.tracks.device)
        return SearchIndex(segments, self.seg_track[rows], self.seg_time[rows], seg_codes, tracks, self.stamp,
                           rebuilt=True, left_out=frozenset(drop))


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
    """The library's search index: from ``index/`` when it matches the store and its checksums, else
    rebuilt from the verified codes (tracks whose codes are damaged left out), and saved if possible."""
    folder = Path(store.folder)
    stamp = store.stamp()
    if not force:
        try:
            return _read(folder / INDEX_DIR, stamp, device, store.shards)
        except CacheProblem:
            pass  # missing, stale, or damaged: rebuild
    table, ids, codes = store.code_tables()
    seg_config = choose_config(folder, store.bits, len(table.codes))
    segments = build_segments(table.codes, table.track_ids, seg_config, device, store.shards)
    tracks = BinaryIndex.build(codes, ids, track_config(folder, store.bits, len(codes)), device)
    index = SearchIndex(segments, table.track_ids, table.times, table.codes, tracks, stamp, rebuilt=True,
                        left_out=frozenset(store.damaged))
    if records.folder_writable(folder):
        try:
            _save(folder / INDEX_DIR, index)
        except OSError:
            pass  # a cache: the next search tries again
    return index


class CacheState(NamedTuple):
    """What ``inspect`` found: ``state`` 'ok', 'missing', 'stale' (both rebuilt on the next search) or
    'damaged' (rebuilt too, but worth saying), and ``where`` and ``what`` when not 'ok'."""

    state: str
    where: str = ""
    what: str = ""


class CacheProblem(Exception):
    """Why the files under ``index/`` cannot be used."""

    def __init__(self, state: str, where: Path, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.found = CacheState(state, str(where), what)


def inspect(store: LibraryStore) -> CacheState:
    """Check the files under ``index/`` against the store and their checksums, without rebuilding them."""
    try:
        _read(Path(store.folder) / INDEX_DIR, store.stamp(), "cpu", store.shards)
    except CacheProblem as e:
        return e.found
    return CacheState("ok")


_MIN_IVF_SEGMENTS = 10_000


def _segment_files(n_shards: int) -> list[str]:
    return [_SEGMENTS] if n_shards == 1 else [f"segments.{j:03d}.faiss" for j in range(n_shards)]


def _read(d: Path, stamp: str, device: str, n_shards: int = 1) -> SearchIndex:
    """The cache in ``d`` if it is there, of ``stamp`` and intact; else CacheProblem."""
    table = d / _TABLE
    if not table.is_file():
        raise CacheProblem("missing", d, "not built yet")
    try:
        with np.load(table) as z:
            if "files" not in z:
                raise CacheProblem("stale", table, "written by an older musichash")
            if str(z["stamp"]) != stamp:
                raise CacheProblem("stale", table, "built from other codes")
            files = json.loads(str(z["files"]))
            seg_track, seg_time = z["track_ids"], z["times"]
            left_out = frozenset(int(t) for t in z["left_out"])
    except CacheProblem:
        raise
    except Exception as e:  # noqa: BLE001 -- BadZipFile, EOFError, ValueError...: whatever a garbled file raises
        raise CacheProblem("damaged", table, f"unreadable ({_first_line(e)})") from None
    seg_files = _segment_files(n_shards)
    if sorted(files) != sorted([*seg_files, _CODES, _TRACKS]):
        raise CacheProblem("stale", table, "built for another number of shards")
    for name in files:
        try:
            found = _size_crc(d / name)
        except OSError as e:
            raise CacheProblem("damaged", d / name, f"unreadable ({e.strerror or e})") from None
        if list(found) != files.get(name):
            raise CacheProblem("damaged", d / name, "fails its checksum")
    try:
        seg_codes = np.load(d / _CODES, mmap_mode="r")
        segments = (BinaryIndex.load(d / _SEGMENTS, device) if n_shards == 1
                    else ShardedIndex.load([d / f for f in seg_files], device))
        tracks = BinaryIndex.load(d / _TRACKS, device)
    except (OSError, ValueError, SearchError) as e:
        raise CacheProblem("damaged", d, f"unreadable ({_first_line(e)})") from None
    n = len(seg_track)
    if segments.ntotal != n or seg_codes.shape != (n, segments.bits // 8):
        raise CacheProblem("damaged", d, "its files do not fit together")
    if segments.kind != _built_kind(choose_config(d.parent, segments.bits, n), segments) or tracks.kind != track_config(d.parent, tracks.bits, tracks.ntotal).kind:
        raise CacheProblem("stale", d, "built with other settings")
    return SearchIndex(segments, seg_track, seg_time, seg_codes, tracks, stamp, left_out=left_out)


def _built_kind(config: IndexConfig, segments: BinaryIndex | ShardedIndex) -> str:
    """The kind ``config`` builds ``segments`` as: a shard too small for IVF is flat (``shard_config``)."""
    if isinstance(segments, ShardedIndex):
        return combined_kind([shard_config(config, s.ntotal).kind for s in segments.shards])
    return config.kind


def _size_crc(path: Path) -> tuple[int, int]:
    size, crc = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            size, crc = size + len(chunk), zlib.crc32(chunk, crc)
    return size, crc


def _save(d: Path, index: SearchIndex) -> None:
    d.mkdir(exist_ok=True)
    seg_files = _segment_files(shard_count(index.segments))
    index.segments.save(d / seg_files[0] if len(seg_files) == 1 else [d / f for f in seg_files])
    index.tracks.save(d / _TRACKS)
    codes = d / f".{_CODES}.{os.getpid()}.tmp.npy"
    try:
        np.save(codes, np.ascontiguousarray(index.seg_codes))
        os.replace(codes, d / _CODES)
    finally:
        codes.unlink(missing_ok=True)
    files = {name: list(_size_crc(d / name)) for name in (*seg_files, _CODES, _TRACKS)}
    tmp = d / f".{_TABLE}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, track_ids=index.seg_track, times=index.seg_time, stamp=np.array(index.stamp),
                 files=np.array(json.dumps(files)), left_out=np.array(sorted(index.left_out), dtype=np.int64))
        os.replace(tmp, d / _TABLE)  # last: the stamp and checksums vouch for the files before it
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
